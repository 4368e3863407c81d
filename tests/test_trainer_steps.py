"""Each step function trains its own network only, and none retraces after the first call."""
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import Trainer


@pytest.fixture
def trainer(tiny_config, tmp_path):
    tiny_config.model_dir = str(tmp_path / "model")
    data = types.SimpleNamespace(synthetic_paths=[], real_images=None, synthetic_dir=tmp_path)
    return Trainer(tiny_config, data)


def weights(model):
    return [variable.numpy().copy() for variable in model.trainable_variables]


def changed(before, model):
    return any(not np.array_equal(old, new.numpy()) for old, new in zip(before, model.trainable_variables))


def images(seed, batch=4):
    return tf.random.stateless_uniform((batch, 35, 55, 1), (seed, 0), -1, 1)


@pytest.mark.parametrize("step_name", ["pretrain_refiner_step", "refiner_step"])
def test_refiner_steps_change_only_the_refiner(trainer, step_name):
    refiner, discriminator = weights(trainer.refiner), weights(trainer.discriminator)
    losses, refined = getattr(trainer, step_name)(images(1))
    assert refined.shape == (4, 35, 55, 1)
    assert changed(refiner, trainer.refiner)
    assert not changed(discriminator, trainer.discriminator)
    assert int(trainer.refiner_optimizer.iterations) == 1
    assert int(trainer.discriminator_optimizer.iterations) == 0
    assert all(np.isfinite(float(value)) for value in losses.values())


def test_pretraining_uses_self_regularization_only(tiny_config, tmp_path):
    # With reg_scale 0 the warm-up has nothing to minimise: zero loss, the refiner stays as it was.
    tiny_config.reg_scale = 0.0
    tiny_config.model_dir = str(tmp_path / "model")
    trainer = Trainer(tiny_config, types.SimpleNamespace(synthetic_paths=[], real_images=None))
    before = weights(trainer.refiner)
    losses, _ = trainer.pretrain_refiner_step(images(2))
    assert set(losses) == {"regularization_loss", "loss"}
    assert float(losses["loss"]) == 0.0
    assert not changed(before, trainer.refiner)


def test_discriminator_step_changes_only_the_discriminator(trainer):
    refiner, discriminator = weights(trainer.refiner), weights(trainer.discriminator)
    losses = trainer.discriminator_step(images(1), images(2, batch=2), images(3))
    assert set(losses) == {"synthetic_d_loss", "refiner_d_loss_with_history", "discrim_loss_with_history"}
    assert changed(discriminator, trainer.discriminator)
    assert not changed(refiner, trainer.refiner)
    assert int(trainer.refiner_optimizer.iterations) == 0
    assert int(trainer.discriminator_optimizer.iterations) == 1


def test_steps_do_not_retrace(trainer):
    for seed in range(3):
        trainer.pretrain_refiner_step(images(seed))
        _, refined = trainer.refiner_step(images(seed))
        trainer.history_buffer.push(refined)
        trainer.discriminator_step(images(seed), trainer.history_buffer.sample(), images(seed + 10))
    for step in (trainer.pretrain_refiner_step, trainer.refiner_step, trainer.discriminator_step,
                 trainer.history_buffer.push, trainer.history_buffer.sample):
        assert step.experimental_get_tracing_count() == 1


def test_refine_accepts_any_batch_size_with_one_trace(trainer):
    for batch in (4, 3, 1):
        assert trainer.refine(images(0, batch)).shape == (batch, 35, 55, 1)
    assert trainer.refine.experimental_get_tracing_count() == 1


def test_gradients_are_clipped_per_tensor(trainer):
    assert trainer.refiner_optimizer.clipnorm == trainer.config.max_grad_norm == 50
    assert trainer.refiner_optimizer.epsilon == 1e-8


@pytest.fixture
def policy():
    """Set a Keras dtype policy for one test; float32 again afterwards."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name,optimizer", [("mixed_bfloat16", "Adam"), ("mixed_float16", "LossScaleOptimizer")])
def test_mixed_precision_steps_keep_float32_weights_history_and_losses(tiny_config, tmp_path, policy, name, optimizer):
    policy(name)
    tiny_config.model_dir = str(tmp_path / "model")
    trainer = Trainer(tiny_config, types.SimpleNamespace(synthetic_paths=[], real_images=None))
    assert type(trainer.refiner_optimizer).__name__ == optimizer
    for seed in range(3):  # float16's first steps may be skipped while the loss scale settles
        losses, refined = trainer.refiner_step(images(seed))
        trainer.history_buffer.push(refined)
        discriminator_losses = trainer.discriminator_step(images(seed), trainer.history_buffer.sample(), images(9))
    assert refined.dtype == keras.mixed_precision.global_policy().compute_dtype
    assert all(value.dtype == tf.float32 and np.isfinite(float(value))
               for value in [*losses.values(), *discriminator_losses.values()])
    assert all(variable.dtype == tf.float32 for variable in trainer.refiner.trainable_variables)
    assert trainer.history_buffer.images.dtype == tf.float32


def test_jit_compile_flag_compiles_the_steps(tiny_config, tmp_path):
    tiny_config.jit_compile = True
    tiny_config.model_dir = str(tmp_path / "model")
    trainer = Trainer(tiny_config, types.SimpleNamespace(synthetic_paths=[], real_images=None))
    losses, _ = trainer.pretrain_refiner_step(images(1))
    assert np.isfinite(float(losses["loss"]))
    steps = (trainer.pretrain_refiner_step, trainer.refiner_step, trainer.discriminator_step)
    assert all(step._jit_compile for step in steps)  # noqa: SLF001 (tf.function has no public accessor)
