"""The opt-in ways past the paper's realism cap: each changes what it claims, and none is on by default."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from config import ConfigError, check_config, get_config
from layers import AffineCorrection, CoordinateChannels, NoiseChannels
from model import (REFINER_OPTIONS, build_discriminator, build_refiner, refiner_losses, refiner_options,
                   refiner_outputs, self_regularization)
from trainer import Trainer
from test_trainer_steps import NO_DATA, images

EYE = (35, 55, 1)
OPTION_LAYERS = (AffineCorrection, CoordinateChannels, NoiseChannels)


def set_affine(refiner, contrast_log2=0.0, shift=0.0, row_rise=0.0, col_rise=0.0):
    """The affine head's output fixed for every image: kernel 0, bias the atanh of each number."""
    layer = refiner.get_layer("affine_correction")
    layer.kernel.assign(tf.zeros_like(layer.kernel))
    layer.bias.assign([math.atanh(value) for value in (contrast_log2, shift, row_rise, col_rise)])


def test_the_defaults_build_the_papers_networks(tiny_config):
    assert refiner_options(vars(tiny_config)) == REFINER_OPTIONS
    assert tiny_config.final_reg_scale is None
    for model in (build_refiner(EYE, **refiner_options(vars(tiny_config))), build_discriminator(EYE)):
        assert not [layer for layer in model.layers if isinstance(layer, OPTION_LAYERS)]
    assert build_refiner(EYE).get_layer("conv_in").kernel.shape == (3, 3, 1, 64)


def test_by_default_the_refiner_step_minimizes_the_faithful_loss_bit_for_bit(tiny_config, tiny_paths):
    trainer = Trainer(tiny_config, tiny_paths, NO_DATA)
    batch = images(3)

    @tf.function  # a graph as the step's, so both get the same kernel fusions on any CPU
    def faithful_losses(synthetic):
        refined = trainer.refiner(synthetic, training=True)
        return refiner_losses(trainer.discriminator(refined, training=False), refined, synthetic, 0.5, 4)

    expected = faithful_losses(batch)
    losses, _ = trainer.refiner_step(batch)
    for name, value in expected.items():
        assert np.array_equal(losses[name].numpy(), value.numpy()), name


def test_the_affine_head_starts_as_the_identity():
    refiner = build_refiner(EYE, affine_correction=True)
    regularized, refined = refiner_outputs(refiner)(images(1), training=False)
    np.testing.assert_allclose(refined.numpy(), regularized.numpy(), atol=1e-6)


def test_the_affine_head_moves_the_mean_grey_level_at_no_self_regularization_cost():
    refiner = build_refiner(EYE, affine_correction=True)
    outputs, synthetic = refiner_outputs(refiner), images(2)
    before_regularized, before = outputs(synthetic, training=False)
    set_affine(refiner, shift=-0.3)
    regularized, refined = outputs(synthetic, training=False)
    np.testing.assert_array_equal(regularized.numpy(), before_regularized.numpy())
    np.testing.assert_array_equal(self_regularization(regularized, synthetic, 0.5).numpy(),
                                  self_regularization(before_regularized, synthetic, 0.5).numpy())
    expected = np.clip(before.numpy() - 0.3, -1, 1)  # darker by 0.3 (38 grey levels) where not clipped
    np.testing.assert_allclose(refined.numpy(), expected, atol=1e-5)
    assert float(tf.reduce_mean(refined)) < float(tf.reduce_mean(before)) - 0.2


def test_the_affine_head_scales_the_contrast_around_the_image_mean():
    refiner = build_refiner(EYE, affine_correction=True)
    outputs = refiner_outputs(refiner)
    set_affine(refiner, contrast_log2=-1.0 + 1e-7)  # the lowest contrast it can give: half
    regularized, refined = outputs(images(3), training=False)
    mean = regularized.numpy().mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(refined.numpy(), mean + 0.5 * (regularized.numpy() - mean), atol=1e-5)


def test_the_affine_head_adds_a_brightness_ramp_across_the_image():
    refiner = build_refiner(EYE, affine_correction=True)
    set_affine(refiner, row_rise=0.4)  # 0.2 darker at the top row, 0.2 brighter at the bottom
    regularized, refined = refiner_outputs(refiner)(images(8), training=False)
    unclipped = np.abs(regularized.numpy()) < 0.7
    change = (refined - regularized).numpy()
    np.testing.assert_allclose(change[:, 0][unclipped[:, 0]], -0.2, atol=1e-5)
    np.testing.assert_allclose(change[:, -1][unclipped[:, -1]], 0.2, atol=1e-5)
    np.testing.assert_allclose(change[:, 17][unclipped[:, 17]], 0.0, atol=1e-5)  # the middle row


def test_the_refiner_step_regularizes_what_comes_before_the_affine_head(tiny_config, tiny_paths):
    tiny_config.affine_correction = True
    trainer = Trainer(tiny_config, tiny_paths, NO_DATA)
    set_affine(trainer.refiner, shift=0.5)
    batch = images(4)
    regularized, _ = trainer.refiner_outputs(batch, training=True)
    losses, refined = trainer.refiner_step(batch)
    expected = float(tf.reduce_mean(self_regularization(regularized, batch, 0.5)))
    assert float(losses["regularization_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(tf.reduce_mean(refined)) > float(tf.reduce_mean(regularized)) + 0.3  # the step's output: shifted


def test_the_warm_up_leaves_the_affine_head_alone_in_micro_batches_too(tiny_config, tiny_paths):
    tiny_config.affine_correction = True
    trainer = Trainer(tiny_config, tiny_paths, NO_DATA)
    trainer.micro_batches = 2  # read when the steps are traced
    head = trainer.refiner.get_layer("affine_correction")
    losses, _ = trainer.warm_up_refiner_step(images(9))  # no gradient reaches it: it must not be asked for one
    assert np.isfinite(float(losses["loss"])) and not np.any(head.kernel.numpy())
    trainer.refiner_step(images(9))  # the realism loss does reach it
    assert np.any(head.kernel.numpy())


def test_the_derivatives_psi_frees_slow_changes_and_anchors_the_mean():
    synthetic = tf.zeros((1, *EYE))
    rows = np.linspace(-0.2, 0.2, 35, dtype=np.float32)[None, :, None, None] * np.ones((1, *EYE), np.float32)
    uniform, ramp = tf.fill((1, *EYE), 0.1), tf.constant(rows)
    checkerboard = tf.constant(0.1 * (-1.0) ** np.add.outer(np.arange(35), np.arange(55))[None, :, :, None],
                               tf.float32)

    def cost(refined, psi):
        return float(self_regularization(refined, synthetic, 1.0, psi)[0])

    assert cost(uniform, "derivatives") == pytest.approx(cost(uniform, "identity"), rel=1e-5)  # the anchor
    assert cost(ramp, "derivatives") < 0.15 * cost(ramp, "identity")  # lighting across the image: nearly free
    assert cost(checkerboard, "derivatives") > 3 * cost(checkerboard, "identity")  # pixels alone: dear
    assert cost(synthetic, "derivatives") == 0.0


def test_noise_channels_make_each_call_differ_and_reach_the_first_convolution():
    refiner = build_refiner(EYE, noise_channels=2)
    assert refiner.get_layer("conv_in").kernel.shape == (3, 3, 1 + 2, 64)
    synthetic = images(5)
    assert not np.array_equal(refiner(synthetic).numpy(), refiner(synthetic).numpy())
    plain = build_refiner(EYE)
    np.testing.assert_array_equal(plain(synthetic).numpy(), plain(synthetic).numpy())


def test_noise_channels_are_standard_normal():
    noise = NoiseChannels(3)(tf.zeros((8, 35, 55, 1))).numpy()[..., 1:]
    assert noise.shape == (8, 35, 55, 3)
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02


def test_coordinate_channels_run_from_minus_one_to_one():
    planes = CoordinateChannels()(tf.zeros((2, 5, 3, 1))).numpy()
    np.testing.assert_allclose(planes[0, :, 0, 1], [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(planes[1, 0, :, 2], [-1, 0, 1])


def interior(image):
    """The pixels the padding cannot reach: the eye refiner sees 9 pixels to each side (19x19)."""
    return image[:, 10:-10, 10:-10]


def test_coordinate_channels_let_both_networks_tell_where_a_pixel_is():
    flat = tf.fill((1, *EYE), 0.2)
    plain = interior(build_refiner(EYE)(flat).numpy())
    assert np.ptp(plain) < 1e-6  # without them, the same input gives the same output anywhere inside
    placed = interior(build_refiner(EYE, coordinate_channels=True)(flat).numpy())
    assert np.ptp(placed) > 1e-3
    assert build_refiner(EYE, coordinate_channels=True).get_layer("conv_in").kernel.shape == (3, 3, 3, 64)
    for data_set, shape in (("gaze", EYE), ("hand", (64, 64, 1))):
        discriminator = build_discriminator(shape, data_set, coordinate_channels=True)
        assert discriminator.get_layer("conv1").kernel.shape[2] == 3, data_set


def test_final_reg_scale_moves_the_weight_along_the_adversarial_iterations(tiny_config, tiny_paths):
    tiny_config.final_reg_scale, tiny_config.max_step = 0.0, 5
    trainer = Trainer(tiny_config, tiny_paths, NO_DATA)
    weights = []
    for iteration in range(5):
        trainer._schedule_reg_scale(iteration)
        weights.append(float(trainer.reg_scale.numpy()))
    np.testing.assert_allclose(weights, [0.5, 0.375, 0.25, 0.125, 0.0])
    losses, _ = trainer.refiner_step(images(6))  # the compiled step reads the weight set last: 0
    assert float(losses["regularization_loss"]) == 0.0
    trainer._schedule_reg_scale(0)
    losses, _ = trainer.refiner_step(images(6))
    assert float(losses["regularization_loss"]) > 0
    assert trainer.compiled_steps["refiner"].experimental_get_tracing_count() == 1


@pytest.mark.parametrize("flag", ["--noise_channels=-1", "--final_reg_scale=-0.1"])
def test_negative_option_values_are_one_line_errors(flag):
    with pytest.raises(ConfigError, match=flag.split("=")[0]):
        check_config(get_config([flag]))


def test_an_exported_refiner_with_every_option_loads_and_refines_alike(tmp_path):
    from export import RefinerExporter, load_any_refiner
    refiner = build_refiner(EYE, coordinate_channels=True, affine_correction=True)
    set_affine(refiner, contrast_log2=0.2, shift=-0.2)
    RefinerExporter(refiner, str(tmp_path))()
    synthetic = images(7)
    for export in ("refiner.keras", "refiner_saved_model"):
        refine, _ = load_any_refiner(str(tmp_path / export), "logs", EYE, "load_path")
        np.testing.assert_allclose(np.asarray(refine(synthetic)), refiner(synthetic).numpy(), atol=1e-5)
    keras.models.load_model(tmp_path / "refiner.keras", compile=False)  # plain Keras, once layers is imported


def test_a_run_with_every_option_trains_resumes_and_refines(tmp_path):
    from conftest import folder_flags, main_in_process
    from data.gaze_sample import write_sample
    from test_end_to_end import SCHEDULE
    write_sample(tmp_path / "data" / "gaze", num_synthetic=24, num_real=20, seed=9)
    folders = folder_flags(tmp_path / "data", tmp_path)
    options = ["--affine_correction=True", "--noise_channels=1", "--coordinate_channels=True", "--final_reg_scale=0.1"]
    result = main_in_process(*folders, *SCHEDULE, *options, "--max_step=2", "--load_path=options")
    assert result.returncode == 0, result.stderr[-3000:]
    # Resumed without them: the networks are built as the run's checkpoint holds them, and it says so.
    result = main_in_process(*folders, *SCHEDULE, "--max_step=3", "--load_path=options")
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("Resuming with the run's own --noise_channels=1 --coordinate_channels=True --affine_correction=True"
            in result.stdout) and "Restored" in result.stdout
    result = main_in_process(*folders, "--is_train=False", "--load_path=options")  # only the run's name
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "outputs").rglob("*.png"))) == 24
