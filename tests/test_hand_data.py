"""The hand loader on NYU's layout (the bundled sample's tiny version): crops, labels, cache, bad files."""
import os
import shutil
import tempfile

import numpy as np
import pytest

from config import get_config
from data import nyu
from data.hand_data import BACKGROUND, OLD_CACHE_VERSION, cache_files, crop_hand, hand_box, load_hand_data, load_split
from data.hand_sample import write_hand_sample
from data.npy_file import NpyRows
from data.reports import DataError
from utils import OutputError, atomic_write, normalize

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
    shutil.copytree(hand_root / "hand", tmp_path / "hand", ignore=shutil.ignore_patterns("*.npz", "*.npy"))
    return tmp_path


def every_row(images):
    """All rows of an NpyRows (or an array) as one array."""
    return np.asarray(images[np.arange(len(images))])


def direct_crops(hand_dir, split="train"):
    """{kind: (images, joints)} of every frame cropped here with crop_hand, without the loader or its cache."""
    _, uvd, _ = nyu.read_joint_data(hand_dir / split / nyu.JOINT_FILE)
    crops = {}
    for kind, name in (("synthetic", nyu.synthetic_depth_name), ("real", nyu.depth_name)):
        made = [crop_hand(nyu.read_depth(hand_dir / split / name(frame + 1)), uvd[frame], SIZE)
                for frame in range(len(uvd))]
        crops[kind] = np.stack([image for image, _ in made]), np.stack([joints for _, joints in made])
    return crops


def assert_crops_equal(crops, expected):
    images, joints = expected
    np.testing.assert_array_equal(every_row(crops.images), images)
    np.testing.assert_array_equal(crops.joints, joints)
    assert list(crops.frames) == list(range(1, len(images) + 1))


def refuse_writes(monkeypatch, folder=None):
    """Writes in folder (None: everywhere) fail as in a read-only folder, also for root, whom chmod does not stop."""
    def refusing(path, write, to_path=False):
        if folder is None or os.path.dirname(os.path.abspath(path)) == os.path.abspath(folder):
            raise OutputError(f"cannot write in {os.path.dirname(path)}: Read-only file system")
        return atomic_write(path, write, to_path)

    monkeypatch.setattr("data.npy_file.atomic_write", refusing)
    monkeypatch.setattr("data.hand_data.atomic_write", refusing)


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
    for kind, crops in (("synthetic", synthetic), ("real", real)):  # each kind once
        images = every_row(crops.images)
        assert (images < BACKGROUND).any(), kind  # the hand, in the slab
        assert images.max() == BACKGROUND, kind   # beyond the slab: one value, nothing above it
        # A corner, outside the hand: the synthetic frames' empty background, the real frames' far wall.
        assert (images[:, 0, 0] == BACKGROUND).all(), kind


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


def test_the_crops_are_cached_as_npy_files_read_from_disk_and_a_changed_mat_makes_them_again(hand_root, tmp_path):
    data_dir = copy_of(hand_root, tmp_path)
    first = load_hand_data(hand_config(data_dir))
    hand = data_dir / "hand"
    assert sorted(path.name for path in hand.iterdir() if path.is_file()) == [
        "train_crops_32x32_labels.npz", "train_crops_32x32_real.npy", "train_crops_32x32_synthetic.npy"]
    np.testing.assert_array_equal(np.load(hand / "train_crops_32x32_synthetic.npy"), every_row(first.synthetic.images))
    for png in (hand / "train").glob("*.png"):
        png.unlink()  # the cache alone serves the next run
    again = load_hand_data(hand_config(data_dir))
    assert isinstance(again.synthetic.images, NpyRows) and isinstance(again.real.images, NpyRows)
    for kind in ("synthetic", "real"):
        np.testing.assert_array_equal(every_row(getattr(again, kind).images), every_row(getattr(first, kind).images))
        np.testing.assert_array_equal(getattr(again, kind).joints, getattr(first, kind).joints)
    mat = hand / "train" / nyu.JOINT_FILE
    os.utime(mat, ns=(1, 1))  # the labels changed: the cache is stale and the frames are read again
    with pytest.raises(DataError, match="no usable synthetic depth frame"):
        load_hand_data(hand_config(data_dir))


def test_the_crops_written_are_the_crops_made_directly(hand_root, tmp_path, monkeypatch):
    monkeypatch.setattr("data.hand_data.CHUNK", 4)  # 6 frames: written in two chunks
    data_dir = copy_of(hand_root, tmp_path)
    synthetic, real = load_split(str(data_dir / "hand"), "train", SIZE)
    expected = direct_crops(data_dir / "hand")
    assert_crops_equal(synthetic, expected["synthetic"])
    assert_crops_equal(real, expected["real"])


def write_old_cache(hand_dir, crops):
    """The single .npz of CACHE_VERSION 2, as that version wrote it."""
    status = os.stat(hand_dir / "train" / nyu.JOINT_FILE)
    arrays = {"stamp": np.array([status.st_size, status.st_mtime_ns, OLD_CACHE_VERSION], np.int64)}
    for kind, (images, joints) in crops.items():
        arrays.update({f"{kind}_images": images, f"{kind}_joints": joints,
                       f"{kind}_frames": np.arange(1, len(images) + 1, dtype=np.int32)})
    np.savez(hand_dir / "train_crops_32x32.npz", **arrays)
    return hand_dir / "train_crops_32x32.npz"


def test_an_old_single_file_cache_is_converted_once(hand_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("data.hand_data.CHUNK", 4)
    data_dir = copy_of(hand_root, tmp_path)
    hand = data_dir / "hand"
    expected = direct_crops(hand)
    old = write_old_cache(hand, expected)
    for png in (hand / "train").glob("*.png"):
        png.unlink()  # the conversion reads the old cache, not the frames
    synthetic, real = load_split(str(hand), "train", SIZE)
    printed = capsys.readouterr().out
    assert printed.count("[*] Converting the hand crop cache") == 1 and str(old) in printed
    assert_crops_equal(synthetic, expected["synthetic"])
    assert_crops_equal(real, expected["real"])
    assert not old.exists() and (hand / "train_crops_32x32_labels.npz").exists()
    synthetic, _ = load_split(str(hand), "train", SIZE)
    assert "Converting" not in capsys.readouterr().out and isinstance(synthetic.images, NpyRows)
    assert_crops_equal(synthetic, expected["synthetic"])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "corrupted"])
def test_an_old_cache_that_does_not_read_is_replaced_by_new_crops(hand_root, tmp_path, capsys, damage):
    data_dir = copy_of(hand_root, tmp_path)
    hand = data_dir / "hand"
    expected = direct_crops(hand)
    old = write_old_cache(hand, expected)
    content = bytearray(old.read_bytes())
    content[content.index(expected["real"][0].tobytes()) + 100] ^= 0xFF  # a pixel: the member's CRC finds it
    old.write_bytes({"garbage": b"not a zip file", "truncated": content[:len(content) // 2],
                     "corrupted": bytes(content)}[damage])
    synthetic, real = load_split(str(hand), "train", SIZE)
    assert "[!] Cannot convert" in capsys.readouterr().out
    assert_crops_equal(synthetic, expected["synthetic"])
    assert_crops_equal(real, expected["real"])
    assert not old.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_damaged_cache_file_is_made_again_with_one_line(hand_root, tmp_path, capsys, damage):
    data_dir = copy_of(hand_root, tmp_path)
    hand = data_dir / "hand"
    load_split(str(hand), "train", SIZE)
    npy = hand / "train_crops_32x32_real.npy"
    if damage == "missing":
        npy.unlink()
    else:
        npy.write_bytes(b"garbage" * 10 if damage == "garbage" else npy.read_bytes()[:-100])
    capsys.readouterr()
    synthetic, real = load_split(str(hand), "train", SIZE)
    printed = capsys.readouterr().out
    assert "[!] Making the hand crops again" in printed and str(npy) in printed
    expected = direct_crops(hand)
    assert_crops_equal(real, expected["real"])
    assert_crops_equal(synthetic, expected["synthetic"])
    assert isinstance(load_split(str(hand), "train", SIZE)[1].images, NpyRows)  # and cached again


def test_a_read_only_hand_folder_still_loads_from_a_temporary_file(hand_root, tmp_path, monkeypatch, capsys):
    data_dir = copy_of(hand_root, tmp_path)
    hand = data_dir / "hand"
    temporary = tmp_path / "system_temp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    refuse_writes(monkeypatch, hand)
    data = load_hand_data(hand_config(data_dir))
    printed = capsys.readouterr().out
    assert "[!] Cannot write the hand crop cache" in printed and str(temporary) in printed
    expected = direct_crops(hand)
    assert isinstance(data.synthetic.images, NpyRows)
    assert_crops_equal(data.synthetic, expected["synthetic"])
    assert_crops_equal(data.real, expected["real"])
    assert not [path for path in hand.iterdir() if path.is_file()]  # nothing written beside the data
    assert not list(temporary.iterdir())  # the temporary files' names are gone: they live as long as the rows
    batch = next(iter(data.synthetic_batches((*SIZE, 1), 4, seed=1)))
    assert batch.shape == (4, *SIZE, 1)


def test_when_nothing_can_be_written_the_crops_stay_in_memory(hand_root, tmp_path, monkeypatch, capsys):
    data_dir = copy_of(hand_root, tmp_path)
    refuse_writes(monkeypatch)
    synthetic, real = load_split(str(data_dir / "hand"), "train", SIZE)
    printed = capsys.readouterr().out
    assert "[!] Cannot write the hand crop cache" in printed and "keeping the hand crops in memory" in printed
    assert isinstance(synthetic.images, np.ndarray)
    expected = direct_crops(data_dir / "hand")
    assert_crops_equal(synthetic, expected["synthetic"])
    assert_crops_equal(real, expected["real"])


def test_the_batches_read_their_shard_the_named_crops_and_the_first_crops(hand_root, tmp_path):
    data = load_hand_data(hand_config(copy_of(hand_root, tmp_path)))
    rows = every_row(data.synthetic.images)
    real = normalize(every_row(data.real.images).astype(np.float32))
    batch = next(iter(data.real_batches((*SIZE, 1), 3, seed=1, shard=(2, 1)))).numpy()[..., 0]
    assert {int(np.argmin(np.abs(real - image).sum(axis=(1, 2)))) for image in batch} == {1, 3, 5}  # the odd rows
    names = data.synthetic_names
    named = list(data.named_synthetic_batches([names[4], names[1]], (*SIZE, 1), 4))
    assert len(named) == 1 and [name.decode() for name in named[0][1].numpy()] == [names[1], names[4]]
    np.testing.assert_allclose(named[0][0].numpy()[..., 0], normalize(rows[[1, 4]].astype(np.float32)), atol=1e-6)
    first = data.test_images((*SIZE, 1), 3)
    np.testing.assert_allclose(first.numpy()[..., 0], normalize(rows[:3].astype(np.float32)), atol=1e-6)


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
    assert isinstance(data.test.images, NpyRows)
    assert os.path.exists(cache_files(str(data.folder), "test", SIZE)["labels"])
