"""The hand loader on NYU's layout (the bundled sample's tiny version): crops, labels, cache, bad files."""
import os
import shutil

import numpy as np
import pytest

from config import get_config
from data import nyu
from data.hand_data import BACKGROUND, crop_hand, hand_box, load_hand_data, load_split
from data.hand_sample import write_hand_sample
from data.reports import DataError
from utils import normalize

NUM_TRAIN, NUM_TEST = 6, 4
SIZE = (32, 32)


@pytest.fixture(scope="module")
def hand_root(tmp_path_factory):
    """DATA_DIR with hand/{train,test} of the procedural sample, written once for the module."""
    root = tmp_path_factory.mktemp("hand")
    write_hand_sample(root / "hand", num_train=NUM_TRAIN, num_test=NUM_TEST, seed=2)
    return root


def copy_of(hand_root, tmp_path):
    """A copy of the sample's folders without any crop cache an earlier test left."""
    shutil.copytree(hand_root / "hand", tmp_path / "hand", ignore=shutil.ignore_patterns("*.npz"))
    return tmp_path


def hand_config(data_dir, *flags):
    return get_config(["--data_set=hand", f"--data_dir={data_dir}", "--input_height=32", "--input_width=32", *flags])


def test_every_frame_of_the_mat_is_cropped_with_its_joints_inside(hand_root, tmp_path):
    data = load_hand_data(hand_config(copy_of(hand_root, tmp_path)))
    assert len(data.synthetic) == len(data.real) == NUM_TRAIN and data.test is None  # the count of joint_data.mat
    assert data.synthetic.images.shape == (NUM_TRAIN, *SIZE) and data.synthetic.images.dtype == np.uint8
    assert list(data.synthetic.frames) == list(range(1, NUM_TRAIN + 1))
    joints = data.synthetic.joints
    assert joints.shape == (NUM_TRAIN, len(nyu.EVALUATION_JOINTS), 2)
    assert joints.min() > 0 and joints.max() < SIZE[0]  # the box holds every joint, with a margin
    assert data.is_sample  # the procedural sample's marker travels with it


def test_the_synthetic_background_and_the_far_wall_become_one_value(hand_root, tmp_path):
    synthetic, real = load_split(str(copy_of(hand_root, tmp_path) / "hand"), "train", SIZE)
    for images in (synthetic.images, real.images):
        assert (images == BACKGROUND).any() and (images < BACKGROUND).any()
        assert all(image[0, 0] == BACKGROUND for image in synthetic.images)  # a corner: outside the hand


def test_the_background_stays_off_the_refiners_tanh_asymptote():
    # At +1 the refiner's L1 pull toward the background never ends and saturates every output pixel.
    assert 0.9 < normalize(BACKGROUND) < 0.95


def test_a_crop_keeps_the_hand_depth_in_the_slab_and_maps_joints_onto_it():
    depth = np.zeros((480, 640), np.uint16)
    depth[195:285, 295:345] = 700  # a flat "hand" 700 mm away, a little larger than its joints' box
    depth[:, :100] = 2000          # a wall far behind
    uvd = np.zeros((36, 3), np.float32)
    uvd[:, 0] = np.linspace(300, 339, 36)
    uvd[:, 1] = np.linspace(200, 279, 36)
    uvd[:, 2] = 700
    centre_u, centre_v, side, centre_d = hand_box(uvd)
    assert (centre_u, centre_v, centre_d) == pytest.approx((319.5, 239.5, 700))
    crop, joints = crop_hand(depth, uvd, (64, 64))
    assert crop[32, 32] == round(0.5 * (BACKGROUND - 1))  # the hand at the slab's centre
    assert crop[0, 0] == BACKGROUND and (crop == BACKGROUND).sum() > 0
    # The joints' own pixels are the hand's.
    assert all(crop[round(v), round(u)] < BACKGROUND for u, v in joints)


def test_the_crops_are_cached_and_a_changed_mat_makes_them_again(hand_root, tmp_path, capsys):
    data_dir = copy_of(hand_root, tmp_path)
    load_hand_data(hand_config(data_dir))
    assert os.path.exists(data_dir / "hand" / "train_crops_32x32.npz")
    for png in (data_dir / "hand" / "train").glob("*.png"):
        png.unlink()  # the cache alone serves the next run
    assert len(load_hand_data(hand_config(data_dir)).synthetic) == NUM_TRAIN
    mat = data_dir / "hand" / "train" / nyu.JOINT_FILE
    os.utime(mat, ns=(1, 1))  # the labels changed: the cache is stale and the frames are read again
    with pytest.raises(DataError, match="no usable synthetic depth frame"):
        load_hand_data(hand_config(data_dir))


def test_missing_and_damaged_frames_are_skipped_and_counted(hand_root, tmp_path, capsys):
    data_dir = copy_of(hand_root, tmp_path)
    train = data_dir / "hand" / "train"
    (train / nyu.synthetic_depth_name(2)).unlink()
    (train / nyu.depth_name(3)).write_bytes(b"not a png")
    data = load_hand_data(hand_config(data_dir))
    assert list(data.synthetic.frames) == [1, 3, 4, 5, 6] and list(data.real.frames) == [1, 2, 4, 5, 6]
    printed = capsys.readouterr().out
    assert "Skipped 1 files" in printed and "synthetic: missing" in printed
    assert "real: unreadable or not an NYU depth PNG" in printed and nyu.depth_name(3) in printed


def test_a_missing_folder_is_one_error_naming_the_path(tmp_path):
    with pytest.raises(DataError) as error:
        load_hand_data(hand_config(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere" / "hand" / "train" / nyu.JOINT_FILE) in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_the_estimation_task_also_crops_the_real_test_frames(hand_root, tmp_path):
    data = load_hand_data(hand_config(copy_of(hand_root, tmp_path), "--task=estimation"))
    assert len(data.test) == NUM_TEST and data.test.images.shape[1:] == SIZE
