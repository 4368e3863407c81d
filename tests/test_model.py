"""Network shapes and the losses on hand-computed tensors."""
import math

import numpy as np
import pytest
import tensorflow as tf

from model import (build_discriminator, build_refiner, discriminator_losses, patch_cross_entropy,
                   refiner_losses, self_regularization)


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
