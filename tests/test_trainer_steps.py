"""Each step function trains its own network only, and none retraces after the first call."""
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from config import get_config
from trainer import MICRO_BATCH_PIXELS, Trainer, micro_batches
from training_loop import make_optimizer, minimize

NO_DATA = types.SimpleNamespace(synthetic_paths=[], real_images=None)  # the steps take their batches as arguments


@pytest.fixture
def trainer(tiny_config, tiny_paths):
    return Trainer(tiny_config, tiny_paths, NO_DATA)


def weights(model):
    return [variable.numpy().copy() for variable in model.trainable_variables]


def changed(before, model):
    return any(not np.array_equal(old, new.numpy()) for old, new in zip(before, model.trainable_variables))


def images(seed, batch=4):
    return tf.random.stateless_uniform((batch, 35, 55, 1), (seed, 0), -1, 1)


@pytest.mark.parametrize("step_name", ["warm_up_refiner_step", "refiner_step"])
def test_refiner_steps_change_only_the_refiner(trainer, step_name):
    refiner, discriminator = weights(trainer.refiner), weights(trainer.discriminator)
    losses, refined = getattr(trainer, step_name)(images(1))
    assert refined.shape == (4, 35, 55, 1)
    assert changed(refiner, trainer.refiner)
    assert not changed(discriminator, trainer.discriminator)
    assert int(trainer.refiner_optimizer.iterations) == 1
    assert int(trainer.discriminator_optimizer.iterations) == 0
    assert all(np.isfinite(float(value)) for value in losses.values())


def test_pretraining_uses_self_regularization_only(tiny_config, tiny_paths):
    # With reg_scale 0 the warm-up has nothing to minimise: zero loss, the refiner stays as it was.
    tiny_config.reg_scale = 0.0
    trainer = Trainer(tiny_config, tiny_paths, NO_DATA)
    before = weights(trainer.refiner)
    losses, _ = trainer.warm_up_refiner_step(images(2))
    assert set(losses) == {"regularization_loss", "loss"}
    assert float(losses["loss"]) == 0.0
    assert not changed(before, trainer.refiner)


def test_discriminator_step_changes_only_the_discriminator(trainer):
    refiner, discriminator = weights(trainer.refiner), weights(trainer.discriminator)
    losses = trainer.discriminator_step(images(1, batch=2), images(2, batch=2), images(3))
    assert set(losses) == {"synthetic_d_loss", "refiner_d_loss_with_history", "discrim_loss_with_history"}
    assert changed(discriminator, trainer.discriminator)
    assert not changed(refiner, trainer.refiner)
    assert int(trainer.refiner_optimizer.iterations) == 0
    assert int(trainer.discriminator_optimizer.iterations) == 1


def test_steps_do_not_retrace(trainer):
    for seed in range(3):
        trainer.warm_up_refiner_step(images(seed))
        _, refined = trainer.refiner_step(images(seed))
        trainer.history_buffer.push(refined)
        trainer.discriminator_step(images(seed, batch=2), trainer.history_buffer.sample(), images(seed + 10))
    for step in (*trainer.compiled_steps.values(), trainer.history_buffer.push, trainer.history_buffer.sample):
        assert step.experimental_get_tracing_count() == 1


def test_refine_accepts_any_batch_size_with_one_trace(trainer):
    for batch in (4, 3, 1):
        assert trainer.refine(images(0, batch)).shape == (batch, 35, 55, 1)
    assert trainer.refine.experimental_get_tracing_count() == 1


def train_on_gradients(optimizer, gradient_steps):
    """Zero variables updated through `minimize`, step after step, by losses with exactly these gradients."""
    variables = [tf.Variable(tf.zeros_like(gradient)) for gradient in gradient_steps[0]]
    for gradients in gradient_steps:
        with tf.GradientTape() as tape:  # d/dv sum(gradient * v) = gradient
            loss = tf.add_n([tf.reduce_sum(gradient * variable) for gradient, variable in zip(gradients, variables)])
        minimize(optimizer, tape, loss, variables)
    return [variable.numpy() for variable in variables]


def test_sgd_clips_each_gradient_tensor_to_max_grad_norm():
    optimizer = make_optimizer(get_config(["--optimizer=sgd", "--learning_rate=1", "--max_grad_norm=50"]))
    large, small = tf.constant([300.0, 400.0]), tf.constant([3.0, 4.0])  # norms 500 and 5
    after_large, after_small = train_on_gradients(optimizer, [[large, small]])
    np.testing.assert_allclose(after_large, [-30.0, -40.0], rtol=1e-6)  # applied as a gradient of norm 50
    np.testing.assert_allclose(after_small, [-3.0, -4.0], rtol=1e-6)  # per tensor: the small one is untouched


def test_adam_clips_each_gradient_tensor_to_max_grad_norm():
    # Adam's first step is lr * sign(g) whatever the scale: a second step shows the clipping in the moments.
    config = get_config(["--learning_rate=0.1", "--max_grad_norm=50"])
    steps = [[tf.constant([300.0, 400.0])], [tf.constant([3.0, 4.0])]]
    clipped_steps = [[tf.constant([30.0, 40.0])], steps[1]]
    reference = lambda: keras.optimizers.Adam(0.1, epsilon=1e-8)  # noqa: E731 (no clipping)
    (ours,) = train_on_gradients(make_optimizer(config), steps)
    np.testing.assert_allclose(ours, train_on_gradients(reference(), clipped_steps)[0], rtol=1e-5)
    assert not np.allclose(ours, train_on_gradients(reference(), steps)[0], rtol=1e-3)  # the cases differ
    assert make_optimizer(config).epsilon == 1e-8  # TF1's Adam epsilon, not Keras' 1e-7


@pytest.fixture
def policy():
    """Set a Keras dtype policy for one test; float32 again afterwards."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def test_bfloat16_steps_keep_float32_weights_history_and_losses(tiny_config, tiny_paths, policy):
    policy("mixed_bfloat16")
    trainer = Trainer(tiny_config, tiny_paths, NO_DATA)
    for seed in range(2):
        losses, refined = trainer.refiner_step(images(seed))
        trainer.history_buffer.push(refined)
        discriminator_losses = trainer.discriminator_step(images(seed, batch=2), trainer.history_buffer.sample(), images(9))
    assert refined.dtype == tf.float32  # computed in bfloat16, it leaves the replicas as float32
    assert all(value.dtype == tf.float32 and np.isfinite(float(value))
               for value in [*losses.values(), *discriminator_losses.values()])
    assert all(variable.dtype == tf.float32 for variable in trainer.refiner.trainable_variables)
    assert trainer.history_buffer.images.dtype == tf.float32


def test_float16_scales_the_loss_and_unscales_the_gradients(tiny_config, policy):
    # (float16 convolutions are emulated on CPUs, too slow for a test: a one-variable model instead)
    policy("mixed_float16")
    optimizer = make_optimizer(get_config(["--optimizer=sgd", "--learning_rate=0.1"]))
    assert isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    variable = tf.Variable(3.0)
    with tf.GradientTape() as tape:
        loss = variable * variable
    minimize(optimizer, tape, loss, [variable])
    assert float(variable) == pytest.approx(3.0 - 0.1 * 6.0)  # the gradient 6, not 6 x the loss scale


def test_jit_compile_flag_compiles_the_steps(tiny_config, tiny_paths):
    tiny_config.jit_compile = True
    trainer = Trainer(tiny_config, tiny_paths, NO_DATA)
    losses, _ = trainer.warm_up_refiner_step(images(1))
    assert np.isfinite(float(losses["loss"]))
    assert all(step._jit_compile for step in trainer.replica_steps.values())  # noqa: SLF001 (no public accessor)


@pytest.mark.parametrize("step_name", ["warm_up_refiner_step", "refiner_step", "discriminator_step"])
def test_micro_batches_give_the_update_of_the_whole_batch(tiny_config, tiny_paths, step_name):
    whole, split = Trainer(tiny_config, tiny_paths, NO_DATA), Trainer(tiny_config, tiny_paths, NO_DATA)
    for model in ("refiner", "discriminator"):
        getattr(split, model).set_weights(getattr(whole, model).get_weights())
    whole.micro_batches, split.micro_batches = 1, 2  # read when the step is traced
    network = "discriminator" if step_name == "discriminator_step" else "refiner"
    before = weights(getattr(whole, network))
    # A discriminator batch: 2 fresh, 2 history, 4 real; in 2 micro-batches one holds fresh images only.
    inputs = (images(5, 2), images(6, 2), images(7)) if network == "discriminator" else (images(5),)
    whole_out, split_out = (getattr(trainer, step_name)(*inputs) for trainer in (whole, split))
    if network == "refiner":
        (whole_losses, whole_refined), (split_losses, split_refined) = whole_out, split_out
        np.testing.assert_allclose(split_refined.numpy(), whole_refined.numpy(), atol=1e-6)
    else:
        whole_losses, split_losses = whole_out, split_out
    for name, value in whole_losses.items():
        np.testing.assert_allclose(float(split_losses[name]), float(value), rtol=1e-5)
    for after_whole, after_split in zip(getattr(whole, network).get_weights(), getattr(split, network).get_weights()):
        # Adam's first step is about lr * sign(gradient): a gradient near zero turns float noise in the
        # summation order into up to a tenth of a step (lr 1e-3) on a rare weight; the rest agree closely.
        np.testing.assert_allclose(after_split, after_whole, atol=1e-4)
        assert np.median(np.abs(after_split - after_whole)) < 1e-7
    assert changed(before, getattr(whole, network))


def test_micro_batches_are_equal_and_at_most_the_limit():
    most = MICRO_BATCH_PIXELS // (35 * 55)
    assert most == 32 and micro_batches(4) == 1 and micro_batches(most) == 1
    assert micro_batches(512) == 512 // most
    assert all(batch % micro_batches(batch) == 0 and batch // micro_batches(batch) <= most
               for batch in range(2, 600, 2))
    assert micro_batches(32, (224, 224, 1)) == 32  # a hand crop at a time
    assert micro_batches(4, (10, 10, 1)) == 1


def test_micro_batches_run_one_after_another(tiny_config, tiny_paths):
    """A while loop may run 10 iterations at once, each holding its micro-batch's activations: at the
    defaults that was 1.1 GB more at peak. The loops of the steps must run one iteration at a time."""
    trainer = Trainer(tiny_config, tiny_paths, NO_DATA)
    trainer.micro_batches = 2
    graphs = [trainer.replica_steps[name].get_concrete_function(*arguments).graph for name, arguments in (
        ("refiner", (images(1),)), ("discriminator", (images(2, 2), images(3, 2), images(4))))]
    loops = [op for graph in graphs for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert len(loops) == 2
    assert all(loop.get_attr("parallel_iterations") == 1 for loop in loops)
