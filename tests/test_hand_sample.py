"""NYU's format (data/nyu.py) and the bundled procedural hand sample written in it (data/hand_sample.py).

What the sample shares with the gaze sample (determinism, staging, arguments, the command line) is tested
in test_sample_staging.py.
"""
import json
import shutil
import time

import numpy as np
import pytest
import scipy.io
from PIL import Image

from data import hand_sample, nyu
from data.hand_sample import LAYOUT, is_complete_hand_sample, is_hand_sample, write_hand_sample

NUM_TRAIN, NUM_TEST, SEED = 3, 2, 11


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A tiny sample written once, in this process."""
    hand_dir = tmp_path_factory.mktemp("sample") / "hand"
    report = write_hand_sample(hand_dir, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=SEED, workers=1)
    return hand_dir, report


def frames(folder, count):
    """[(synthetic depth, real depth)] of frames 1..count, uint16 mm."""
    return [(nyu.read_depth(folder / nyu.synthetic_depth_name(i)), nyu.read_depth(folder / nyu.depth_name(i)))
            for i in range(1, count + 1)]


def one_line(error):
    return len(str(error.value).splitlines()) == 1


# ---- the format


def test_depth_encoding_round_trips_the_whole_uint16_range(tmp_path):
    depth = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    rgb = nyu.encode_depth(depth)
    assert rgb.dtype == np.uint8 and rgb.shape == (256, 256, 3)
    assert not rgb[..., 0].any()  # red is unused
    assert rgb[1, 2, 1] == 1 and rgb[1, 2, 2] == 2  # 258 mm = green 1 (high byte), blue 2 (low byte)
    np.testing.assert_array_equal(nyu.decode_depth(rgb), depth)
    nyu.write_depth(tmp_path / "depth.png", depth)
    with Image.open(tmp_path / "depth.png") as image:
        assert image.mode == "RGB" and image.size == (256, 256)
    np.testing.assert_array_equal(nyu.read_depth(tmp_path / "depth.png"), depth)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3))])
def test_a_damaged_rgb_array_is_a_one_line_value_error(bad):
    with pytest.raises(ValueError) as error:
        nyu.decode_depth(bad)
    assert one_line(error)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3)), np.full((2, 2), 70000), np.full((2, 2), -1),
                                 np.full((2, 2), np.nan)])
def test_a_depth_that_cannot_be_encoded_is_a_one_line_value_error(bad):
    with pytest.raises(ValueError) as error:
        nyu.encode_depth(bad)
    assert one_line(error)


def test_unreadable_and_non_rgb_depth_files_are_one_line_errors(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    Image.new("L", (8, 8)).save(tmp_path / "gray.png")
    nyu.write_depth(tmp_path / "cut.png", np.full((64, 64), 700))
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    for name in ("text.png", "cut.png", "missing.png"):
        with pytest.raises(OSError, match=name) as error:
            nyu.read_depth(tmp_path / name)
        assert one_line(error)
    with pytest.raises(ValueError, match="gray.png") as error:
        nyu.read_depth(tmp_path / "gray.png")
    assert one_line(error)


def test_joint_names_and_the_evaluation_joints():
    assert len(nyu.JOINT_NAMES) == 36 and len(set(nyu.JOINT_NAMES)) == 36
    assert nyu.JOINT_NAMES[:6] == ["F1_KNU3_A", "F1_KNU3_B", "F1_KNU2_A", "F1_KNU2_B", "F1_KNU1_A", "F1_KNU1_B"]
    assert nyu.JOINT_NAMES[24:] == ["TH_KNU3_A", "TH_KNU3_B", "TH_KNU2_A", "TH_KNU2_B", "TH_KNU1_A", "TH_KNU1_B",
                                    "PALM_1", "PALM_2", "PALM_3", "PALM_4", "PALM_5", "PALM_6"]
    evaluated = [nyu.JOINT_NAMES[i] for i in nyu.EVALUATION_JOINTS]
    assert evaluated == ["F1_KNU3_A", "F1_KNU2_B", "F2_KNU3_A", "F2_KNU2_B", "F3_KNU3_A", "F3_KNU2_B", "F4_KNU3_A",
                         "F4_KNU2_B", "TH_KNU3_A", "TH_KNU3_B", "TH_KNU2_B", "PALM_1", "PALM_2", "PALM_3"]
    assert nyu.depth_name(1) == "depth_1_0000001.png" and nyu.synthetic_depth_name(72757) == "synthdepth_1_0072757.png"


def test_the_camera_is_nyus_and_y_points_up():
    uvd = np.array([[100.0, 50.0, 800.0], [320.0, 240.0, 600.0], [633.5, 470.25, 1234.0]])
    xyz = nyu.uvd_to_xyz(uvd)
    # NYU's convert_uvd_to_xyz.m, written out.
    np.testing.assert_allclose(xyz[:, 0], (uvd[:, 0] / 640 - 0.5) * uvd[:, 2] * 1.08836710)
    np.testing.assert_allclose(xyz[:, 1], (0.5 - uvd[:, 1] / 480) * uvd[:, 2] * 0.817612648)
    assert xyz[0, 1] > 0  # a point above the centre row has y > 0
    np.testing.assert_allclose(nyu.xyz_to_uvd(xyz), uvd)
    assert abs(nyu.FX - 588.03) < 0.01 and abs(nyu.FY - 587.07) < 0.01


def test_joint_data_round_trip_and_camera_1_of_several(tmp_path):
    rng = np.random.default_rng(0)
    uvd, xyz = rng.uniform(0, 600, (4, 36, 3)), rng.uniform(-200, 900, (4, 36, 3))
    nyu.write_joint_data(tmp_path / "joint_data.mat", uvd, xyz)
    names, read_uvd, read_xyz = nyu.read_joint_data(tmp_path / "joint_data.mat")
    assert names == nyu.JOINT_NAMES and read_uvd.dtype == np.float32 and read_xyz.shape == (4, 36, 3)
    np.testing.assert_allclose(read_uvd, uvd, rtol=1e-6)
    np.testing.assert_allclose(read_xyz, xyz, rtol=1e-6)
    mat = scipy.io.loadmat(tmp_path / "joint_data.mat")
    assert mat["joint_names"].shape == (1, 36) and mat["joint_uvd"].shape == (1, 4, 36, 3)
    # Three Kinects, as the real files hold: camera 1 is read.
    three = {"joint_names": mat["joint_names"], "joint_uvd": np.stack([uvd, uvd + 1, uvd + 2]),
             "joint_xyz": np.stack([xyz, xyz + 1, xyz + 2])}
    scipy.io.savemat(tmp_path / "three.mat", three)
    _, read_uvd, _ = nyu.read_joint_data(tmp_path / "three.mat")
    np.testing.assert_allclose(read_uvd, uvd, rtol=1e-6)


def _bad_mats():
    names = np.empty((1, 36), object)
    names[0, :] = nyu.JOINT_NAMES
    good = np.zeros((1, 2, 36, 3))
    return {"joint_uvd": {"joint_names": names, "joint_xyz": good},
            "joint_names": {"joint_uvd": good, "joint_xyz": good},
            "(cameras, frames, 36, 3)": {"joint_names": names, "joint_uvd": np.zeros((1, 2, 21, 3)), "joint_xyz": good},
            "frames": {"joint_names": names, "joint_uvd": good, "joint_xyz": np.zeros((1, 3, 36, 3))},
            "35": {"joint_names": names[:, :35], "joint_uvd": good, "joint_xyz": good}}


@pytest.mark.parametrize("problem", list(_bad_mats()))
def test_a_bad_joint_data_mat_is_a_one_line_value_error_naming_the_file(tmp_path, problem):
    scipy.io.savemat(tmp_path / "joint_data.mat", _bad_mats()[problem])
    with pytest.raises(ValueError, match="joint_data.mat") as error:
        nyu.read_joint_data(tmp_path / "joint_data.mat")
    assert one_line(error) and problem in str(error.value)


def test_a_damaged_joint_data_mat_is_a_value_error(tmp_path):
    nyu.write_joint_data(tmp_path / "joint_data.mat", np.ones((2, 36, 3)), np.ones((2, 36, 3)))
    (tmp_path / "joint_data.mat").write_bytes((tmp_path / "joint_data.mat").read_bytes()[:300])
    with pytest.raises(ValueError, match="unreadable") as error:
        nyu.read_joint_data(tmp_path / "joint_data.mat")
    assert one_line(error)


# ---- the sample: layout, labels, pixels


def test_layout_on_disk(sample):
    hand_dir, report = sample
    assert sorted(p.name for p in hand_dir.iterdir()) == ["test", "train"]  # no staging folder left
    for folder, count in ((report.train_dir, NUM_TRAIN), (report.test_dir, NUM_TEST)):
        expected = {nyu.depth_name(i) for i in range(1, count + 1)} | {nyu.synthetic_depth_name(i)
                                                                      for i in range(1, count + 1)}
        assert {p.name for p in folder.iterdir()} == expected | {"joint_data.mat", LAYOUT.marker_name}
        assert is_hand_sample(folder)
        assert json.loads((folder / LAYOUT.marker_name).read_text())["seed"] == SEED
        for i in (1, count):
            with Image.open(folder / nyu.depth_name(i)) as image:
                assert image.mode == "RGB" and image.size == (640, 480)
    assert report.num_train == NUM_TRAIN and report.num_test == NUM_TEST and report.seconds > 0


def test_joint_data_holds_every_frame_and_uvd_is_xyz_projected(sample):
    hand_dir, _ = sample
    for name, count in (("train", NUM_TRAIN), ("test", NUM_TEST)):
        names, uvd, xyz = nyu.read_joint_data(hand_dir / name / "joint_data.mat")
        assert names == nyu.JOINT_NAMES and uvd.shape == xyz.shape == (count, 36, 3)
        np.testing.assert_allclose(uvd, nyu.xyz_to_uvd(xyz), atol=1e-2)
        assert np.all((xyz[..., 2] > 400) & (xyz[..., 2] < 1100))


def test_every_joint_is_in_the_frame_and_on_the_hand(sample):
    hand_dir, _ = sample
    _, uvd, _ = nyu.read_joint_data(hand_dir / "train" / "joint_data.mat")
    for (synthetic, _), joints in zip(frames(hand_dir / "train", NUM_TRAIN), uvd):
        u, v = np.rint(joints[:, 0]).astype(int), np.rint(joints[:, 1]).astype(int)
        assert np.all((u >= 0) & (u < 640) & (v >= 0) & (v < 480))
        for column, row, depth in zip(u, v, joints[:, 2]):
            near = synthetic[max(row - 3, 0):row + 4, max(column - 3, 0):column + 4]
            assert near.any()
            # A joint lies inside the hand: behind the surface it projects onto (further back when another
            # part of the hand hides it), never in front of it.
            assert depth >= near[near > 0].min() - 15


def test_synthetic_is_the_hand_alone_on_exact_zero(sample):
    hand_dir, _ = sample
    for synthetic, _ in frames(hand_dir / "test", NUM_TEST):
        hand = synthetic > 0
        assert 500 < hand.sum() < 0.3 * hand.size
        assert np.all((synthetic[hand] > 350) & (synthetic[hand] < 1100))  # nothing but the hand
        assert not (synthetic[0].any() or synthetic[-1].any() or synthetic[:, 0].any() or synthetic[:, -1].any())


def test_real_has_the_room_behind_with_holes(sample):
    hand_dir, _ = sample
    for synthetic, real in frames(hand_dir / "train", NUM_TRAIN):
        background = real[synthetic == 0]
        assert 0 < np.mean(background == 0) < 0.25  # holes, but mostly the body and the wall
        assert np.percentile(background[background > 0], 90) >= 1400  # the wall is there
        assert np.mean(real == 0) > 0.005


def test_real_hand_agrees_with_synthetic_within_tens_of_mm_but_is_not_clean(sample):
    hand_dir, _ = sample
    for synthetic, real in frames(hand_dir / "train", NUM_TRAIN):
        both = (synthetic > 0) & (real > 0)
        difference = real[both].astype(np.int32) - synthetic[both]
        assert both.sum() > 0.5 * (synthetic > 0).sum()
        assert np.median(np.abs(difference)) < 20
        assert np.mean(difference != 0) > 0.15  # quantised and noisy
        assert np.mean((synthetic > 0) & (real == 0)) > 0  # and broken at the hand's edges


def test_rendering_a_frame_is_fast():
    hand = hand_sample.make_hand(np.random.default_rng(0))
    best = float("inf")
    for attempt in range(3):  # the best of three, so a busy machine does not fail it
        started = time.perf_counter()
        hand_sample.synthetic_frame(hand)
        hand_sample.real_frame(hand, np.random.default_rng(attempt))
        best = min(best, time.perf_counter() - started)
    assert best < 0.5, best


# ---- a complete sample, and a half one written over


def test_a_half_sample_is_not_complete_and_is_written_over(sample, tmp_path):
    hand_dir, _ = sample
    assert is_complete_hand_sample(hand_dir)
    write_hand_sample(tmp_path, num_train=1, num_test=1, seed=1, workers=1)
    shutil.rmtree(tmp_path / "train")  # as if interrupted between the two renames
    assert not is_complete_hand_sample(tmp_path)
    write_hand_sample(tmp_path, num_train=1, num_test=1, seed=1, workers=1)
    assert is_complete_hand_sample(tmp_path)
