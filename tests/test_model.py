"""Network shapes and the losses on hand-computed tensors."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import (build_discriminator, build_estimator, build_refiner, discriminator_losses, patch_cross_entropy,
                   refiner_losses, self_regularization)

EYE = (35, 55, 1)  # the paper's gaze input: 35x55 grayscale


def layer_table(model):
    """[(name, output shape without the batch, parameters)] of every layer but the input, in order."""
    return [(layer.name, tuple(layer.output.shape[1:]), layer.count_params())
            for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def test_refiner_keeps_the_image_shape_and_range():
    refiner = build_refiner((35, 55, 1))
    refined = refiner(tf.random.uniform((3, 35, 55, 1), -1, 1))
    assert refined.shape == (3, 35, 55, 1)
    assert float(tf.reduce_max(tf.abs(refined))) <= 1.0
    # 3x3 conv to 64, four blocks of two 3x3 64->64 convs, 1x1 conv to 1.
    assert len([layer for layer in refiner.layers if "conv" in layer.name]) == 10


def test_discriminator_gives_a_7x12_patch_map():
    discriminator = build_discriminator((35, 55, 1))
    assert discriminator(tf.zeros((2, 35, 55, 1))).shape == (2, 7, 12, 2)


def test_hidden_convolutions_have_relu():
    activations = {layer.name: layer.activation.__name__
                   for model in (build_refiner((35, 55, 1)), build_discriminator((35, 55, 1)))
                   for layer in model.layers if hasattr(layer, "activation")}
    for name in ("conv_in", "block0_conv1", "block3_conv1", "conv1", "conv2", "conv3", "conv4"):
        assert activations[name] == "relu", name
    # The block's second conv is linear: the ReLU comes after the skip connection.
    assert activations["block0_conv2"] == "linear"
    assert activations["conv_out"] == "tanh" and activations["logits"] == "linear"


def test_patch_cross_entropy_sums_over_patches():
    # Every patch has logits (0, 0): CE = log 2 per patch, 2x3 patches.
    logits = tf.zeros((1, 2, 3, 2))
    assert float(patch_cross_entropy(logits, 1)[0]) == pytest.approx(6 * math.log(2), rel=1e-6)
    # Confident and right vs confident and wrong.
    right = tf.constant([[[[0.0, 10.0]]]])
    assert float(patch_cross_entropy(right, 1)[0]) == pytest.approx(math.log(1 + math.exp(-10)), abs=1e-6)
    assert float(patch_cross_entropy(right, 0)[0]) == pytest.approx(10 + math.log(1 + math.exp(-10)), abs=1e-5)


def test_self_regularization_is_scaled_l1_sum():
    synthetic = tf.zeros((2, 2, 2, 1))
    refined = tf.constant([[[[0.5], [-0.5]], [[0.0], [1.0]]], [[[0.0], [0.0]], [[0.0], [0.0]]]])
    np.testing.assert_allclose(self_regularization(refined, synthetic, 0.5).numpy(), [1.0, 0.0])


def test_refiner_losses_are_batch_means():
    logits = tf.zeros((2, 1, 1, 2))  # CE log 2 per image
    refined = tf.ones((2, 1, 1, 1))
    losses = refiner_losses(logits, refined, tf.zeros_like(refined), reg_scale=2.0, global_batch_size=2)
    assert float(losses["realism_loss"]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(losses["regularization_loss"]) == pytest.approx(2.0)
    assert float(losses["loss"]) == pytest.approx(2.0 + math.log(2), rel=1e-6)


def test_discriminator_losses_label_fake_0_and_real_1():
    # Two fake images: a fresh one the discriminator calls fake with confidence, a history one it is unsure of.
    fake_logits = tf.constant([[[[10.0, 0.0]]], [[[0.0, 0.0]]]])
    real_logits = tf.constant([[[[0.0, 0.0]]], [[[0.0, 10.0]]]])
    losses = discriminator_losses(fake_logits, real_logits, tf.constant([False, True]), global_batch_size=2)
    sure, unsure = math.log(1 + math.exp(-10)), math.log(2)
    # As the original, the history half alone: not the mean over fresh and history.
    assert float(losses["refiner_d_loss_with_history"]) == pytest.approx(unsure, rel=1e-6)
    assert float(losses["synthetic_d_loss"]) == pytest.approx((unsure + sure) / 2, rel=1e-6)
    assert float(losses["discrim_loss_with_history"]) == pytest.approx(
        ((sure + unsure) + (unsure + sure)) / 2, rel=1e-4)


def test_the_hand_networks_follow_the_papers_appendix():
    refiner = build_refiner((224, 224, 1), "hand")
    assert refiner.output.shape[1:] == (224, 224, 1)
    assert refiner.get_layer("conv_in").kernel_size == (7, 7) and refiner.get_layer("block9_conv2").kernel_size == (7, 7)
    # 7x7x1x64 + 64, then 20 convolutions 7x7x64x64 + 64, then 1x1x64x1 + 1.
    assert refiner.count_params() == 3200 + 20 * 200768 + 65 == 4018625
    discriminator = build_discriminator((224, 224, 1), "hand")
    assert discriminator.output.shape[1:] == (7, 7, 2)  # the local patch map
    assert [discriminator.get_layer(name).output.shape[1:3] for name in ("conv1", "conv2", "pool", "conv3")] == \
        [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert discriminator.count_params() == 4800 + 153664 + 18464 + 1056 + 66 == 178050


def test_the_hand_refiners_blocks_start_as_identities_and_the_eye_refiners_do_not():
    hand = build_refiner((32, 32, 1), "hand")
    assert all(not np.any(hand.get_layer(f"block{i}_conv2").get_weights()[0]) for i in range(10))
    gaze = build_refiner((35, 55, 1))  # the original's Xavier everywhere
    assert all(np.any(gaze.get_layer(f"block{i}_conv2").get_weights()[0]) for i in range(4))


# ---- the gaze networks, layer by layer, from the paper's appendix (Shrivastava et al. 2017) on 35x55x1.
# Parameters of a convolution: kernel height * width * input maps * output maps + one bias per output map.
# 'SAME' convolutions (SPEC) keep H x W at stride 1 and make ceil(H / 2) x ceil(W / 2) at stride 2.


def test_the_gaze_refiner_follows_the_paper_layer_by_layer():
    # 3x3 conv to 64, 4 ResNet blocks (two 3x3 convs of 64 each, the block's input added), 1x1 conv to 1, tanh.
    conv_in = 3 * 3 * 1 * 64 + 64             # 640
    block_conv = 3 * 3 * 64 * 64 + 64         # 36928
    conv_out = 1 * 1 * 64 * 1 + 1             # 65
    expected = [("conv_in", (35, 55, 64), conv_in)]
    for index in range(4):
        expected += [(f"block{index}_conv1", (35, 55, 64), block_conv), (f"block{index}_conv2", (35, 55, 64), block_conv),
                     (f"block{index}_add", (35, 55, 64), 0), (f"block{index}_relu", (35, 55, 64), 0)]
    expected.append(("conv_out", (35, 55, 1), conv_out))
    refiner = build_refiner(EYE)
    assert layer_table(refiner) == expected
    assert refiner.count_params() == conv_in + 4 * 2 * block_conv + conv_out == 296129
    assert [layer.kernel_size for layer in refiner.layers if isinstance(layer, keras.layers.Conv2D)] == \
        [(3, 3)] * 9 + [(1, 1)]
    assert all(layer.strides == (1, 1) for layer in refiner.layers if isinstance(layer, keras.layers.Conv2D))
    assert refiner.get_layer("conv_out").activation.__name__ == "tanh"
    # The skip: block0_add adds the block's input (conv_in's output) and its second convolution.
    assert [node.name for node in refiner.get_layer("block0_add").input] == [
        refiner.get_layer("conv_in").output.name, refiner.get_layer("block0_conv2").output.name]


def test_the_gaze_discriminator_follows_the_paper_layer_by_layer():
    # conv 3x3/2 to 96, conv 3x3/2 to 64, max-pool 3x3/1, conv 3x3 to 32, conv 1x1 to 32, conv 1x1 to 2, softmax.
    # 35x55 -> ceil(35/2) x ceil(55/2) = 18x28 -> 9x14 -> unpadded 3x3 pool at stride 1: (9-2) x (14-2) = 7x12.
    expected = [("conv1", (18, 28, 96), 3 * 3 * 1 * 96 + 96),     # 960
                ("conv2", (9, 14, 64), 3 * 3 * 96 * 64 + 64),     # 55360
                ("pool", (7, 12, 64), 0),
                ("conv3", (7, 12, 32), 3 * 3 * 64 * 32 + 32),     # 18464
                ("conv4", (7, 12, 32), 1 * 1 * 32 * 32 + 32),     # 1056
                ("logits", (7, 12, 2), 1 * 1 * 32 * 2 + 2)]       # 66
    discriminator = build_discriminator(EYE)
    assert layer_table(discriminator) == expected
    assert discriminator.count_params() == 960 + 55360 + 18464 + 1056 + 66 == 75906
    pool = discriminator.get_layer("pool")
    assert pool.pool_size == (3, 3) and pool.strides == (1, 1)
    assert [discriminator.get_layer(name).strides for name in ("conv1", "conv2", "conv3", "conv4", "logits")] == \
        [(2, 2), (2, 2), (1, 1), (1, 1), (1, 1)]
    # The paper's softmax is in the loss: the two logits of a patch are softmaxed there (see the tests above).


def test_the_gaze_estimator_follows_the_paper_layer_by_layer():
    # conv 3x3 to 32, 32, 64, max-pool 3x3/2, conv 3x3 to 80, 192, max-pool 2x2/2, FC 9600, FC 1000, FC 3.
    # Unpadded: a 3x3 conv takes 2 off H and W, a 3x3/2 pool makes floor((n - 3) / 2) + 1, a 2x2/2 pool n // 2;
    # the paper's "9600" is the flattened last map, 5 * 10 * 192 (see build_estimator).
    expected = [("conv1", (33, 53, 32), 3 * 3 * 1 * 32 + 32),          # 320
                ("conv2", (31, 51, 32), 3 * 3 * 32 * 32 + 32),         # 9248
                ("conv3", (29, 49, 64), 3 * 3 * 32 * 64 + 64),         # 18496
                ("pool1", ((29 - 3) // 2 + 1, (49 - 3) // 2 + 1, 64), 0),  # 14x24
                ("conv4", (12, 22, 80), 3 * 3 * 64 * 80 + 80),         # 46160
                ("conv5", (10, 20, 192), 3 * 3 * 80 * 192 + 192),      # 138432
                ("pool2", (5, 10, 192), 0),
                ("flatten", (5 * 10 * 192,), 0),                       # 9600
                ("fc", (1000,), 9600 * 1000 + 1000),                   # 9601000
                ("gaze", (3,), 1000 * 3 + 3)]                          # 3003
    estimator = build_estimator(EYE)
    assert layer_table(estimator) == expected
    assert estimator.count_params() == 320 + 9248 + 18496 + 46160 + 138432 + 9601000 + 3003 == 9816659
    assert [estimator.get_layer(name).pool_size for name in ("pool1", "pool2")] == [(3, 3), (2, 2)]
    assert [estimator.get_layer(name).strides for name in ("pool1", "pool2")] == [(2, 2), (2, 2)]


def test_each_self_regularization_charges_what_it_claims():
    """A cast over the whole image is free but for the identity; a colour change of a part costs with the
    identity and colour_cast, not with channel_mean; on grey images the three are one."""
    from model import self_regularization
    rng = np.random.default_rng(0)
    synthetic = rng.uniform(-0.5, 0.5, (2, 8, 8, 3)).astype(np.float32)
    warm = synthetic + np.array([0.1, 0.0, -0.1], np.float32)  # a white balance: the grey level kept
    part = synthetic.copy()
    part[:, :4, :4] += np.array([0.2, -0.1, -0.1], np.float32)  # a part recoloured, its grey level kept

    def cost(refined, psi):
        return self_regularization(refined, synthetic, 1.0, psi).numpy()

    assert np.all(cost(warm, "identity") > 1) and np.allclose(cost(warm, "channel_mean"), 0, atol=1e-4)
    assert np.allclose(cost(warm, "colour_cast"), 0, atol=1e-4)
    assert np.allclose(cost(part, "channel_mean"), 0, atol=1e-4) and np.all(cost(part, "colour_cast") > 1)
    grey = synthetic[..., :1]
    costs = [self_regularization(grey * 0.5, grey, 1.0, psi).numpy() for psi in
             ("identity", "channel_mean", "colour_cast")]
    assert np.allclose(costs[0], costs[1]) and np.allclose(costs[0], costs[2])
