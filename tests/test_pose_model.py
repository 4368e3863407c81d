"""The hand pose estimator: its shapes, heatmap targets, joint read-out, loss and measure."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from model import share_within
from pose_model import (MAX_WITHIN_PIXELS, build_hand_estimator, heatmap_joints, heatmap_loss, joint_distances,
                        joint_heatmaps)

TINY = dict(filters=8, depth=2)  # 32x32 inputs -> 8x8 heatmaps, 2x2 at the bottom of each hourglass


def test_two_stacks_of_heatmaps_at_a_quarter_of_224():
    estimator = build_hand_estimator((224, 224, 1))
    assert estimator.output.shape[1:] == (2, 56, 56, 14)  # (stacks, H/4, W/4, joints)
    # 5,256,028 parameters with the defaults (256 filters, depth 3, 2 stacks, 14 joints).
    assert estimator.count_params() == 5_256_028


def test_tiny_estimator_gives_every_stack_its_own_heatmaps():
    estimator = build_hand_estimator((32, 32, 1), **TINY)
    heatmaps = estimator(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)).numpy()
    assert heatmaps.shape == (2, 2, 8, 8, 14)
    assert not np.allclose(heatmaps[:, 0], heatmaps[:, 1])
    assert build_hand_estimator((32, 64, 1), num_joints=3, stacks=1, **TINY).output.shape[1:] == (1, 8, 16, 3)
    with pytest.raises(ValueError, match="multiples of 16"):
        build_hand_estimator((40, 32, 1), **TINY)


def test_heatmaps_stay_float32_under_mixed_precision():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        estimator = build_hand_estimator((32, 32, 1), stacks=2, **TINY)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert estimator.get_layer("stack0_res_conv3").compute_dtype == "bfloat16"
    assert estimator(np.zeros((1, 32, 32, 1), np.float32)).dtype == "float32"  # rounded peaks would tie


def test_targets_peak_at_the_joint():
    # Heatmap cell (row 5, column 3) covers input rows 20..23 and columns 12..15: its centre is (13.5, 21.5).
    joints = np.array([[[13.5, 21.5], [2.0, 30.0]]], np.float32)
    targets = joint_heatmaps(joints, (8, 8), (32, 32, 1), sigma=1.0).numpy()
    assert targets.shape == (1, 8, 8, 2)
    assert targets[0, 5, 3, 0] == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(targets[0, ..., 0]), (8, 8)) == (5, 3)
    assert targets[0, 5, 4, 0] == pytest.approx(np.exp(-0.5)) and targets[0, 6, 3, 0] == pytest.approx(np.exp(-0.5))
    assert np.unravel_index(np.argmax(targets[0, ..., 1]), (8, 8)) == (7, 0)  # v = 30: bottom row, u = 2: left
    assert targets.max() <= 1.0 and targets.min() >= 0.0


def test_joints_are_read_back_from_their_targets_within_a_pixel():
    rng = np.random.default_rng(1)
    joints = rng.uniform(4, 27, (6, 14, 2)).astype(np.float32)  # a heatmap cell or more from the border
    targets = joint_heatmaps(joints, (8, 8), (32, 32, 1), sigma=1.0)
    found = heatmap_joints(targets, (32, 32, 1)).numpy()
    assert found.shape == (6, 14, 2)
    assert joint_distances(found, joints).numpy().max() < 1.0
    # Of several stacks, the last one's heatmaps are read.
    stacks = tf.stack([tf.reverse(targets, axis=[1]), targets], axis=1)
    np.testing.assert_allclose(heatmap_joints(stacks, (32, 32, 1)).numpy(), found)
    # Argmax alone would be up to half a cell (2 px) off on each axis; a cell centre is found exactly.
    centres = np.array([[[13.5, 21.5]]], np.float32)
    np.testing.assert_allclose(heatmap_joints(joint_heatmaps(centres, (8, 8), (32, 32), 1.0), (32, 32)), centres,
                               atol=1e-4)


def test_share_within_d_pixels_on_known_distances():
    within = share_within(np.array([[0.0, 0.5, 5.0], [5.01, 20.0, 31.0]]), MAX_WITHIN_PIXELS).numpy()
    assert within.shape == (MAX_WITHIN_PIXELS + 1,)
    assert within[0] == pytest.approx(1 / 6) and within[1] == pytest.approx(2 / 6)
    assert within[5] == pytest.approx(3 / 6) and within[6] == pytest.approx(4 / 6)
    assert within[19] == pytest.approx(4 / 6) and within[20] == pytest.approx(5 / 6)  # 31 px is beyond the plot
    assert np.all(np.diff(within) >= 0)
    np.testing.assert_allclose(joint_distances([[[3.0, 0.0]]], [[[0.0, 4.0]]]), [[5.0]])


def test_the_loss_sums_stacks_and_its_replica_shares_sum_to_the_batch_mean():
    rng = np.random.default_rng(2)
    predicted = rng.normal(size=(4, 2, 8, 8, 14)).astype(np.float32)
    targets = rng.uniform(size=(4, 8, 8, 14)).astype(np.float32)
    expected = np.mean(np.sum(np.mean((predicted - targets[:, None]) ** 2, axis=(2, 3, 4)), axis=1))
    whole = float(heatmap_loss(predicted, targets, global_batch_size=4))
    assert whole == pytest.approx(expected, rel=1e-5)
    assert float(heatmap_loss([predicted[:, 0], predicted[:, 1]], targets, 4)) == pytest.approx(whole, rel=1e-6)
    # Two replicas, each with half the global batch: their losses sum to the loss of the whole batch.
    shares = [float(heatmap_loss(predicted[half], targets[half], global_batch_size=4))
              for half in (slice(0, 2), slice(2, 4))]
    assert sum(shares) == pytest.approx(whole, rel=1e-5)
    assert shares[0] == pytest.approx(float(heatmap_loss(predicted[:2], targets[:2], 2)) / 2, rel=1e-5)
