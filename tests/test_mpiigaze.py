"""MPIIGaze .mat reading and the gaze.npz cache, on tiny .mat files written in each test."""
import os
import zipfile

import numpy as np
import pytest
import scipy.io

from data import mpiigaze
from data.mpiigaze import (BAD_SHAPE, BAD_VALUES, IMAGE_SHAPE, MISSING_FIELDS, NO_DATA, UNREADABLE, BadMat,
                           find_day_files, load_cache, read_day, read_days, save_cache)
from utils import OutputError


# ---------------------------------------------------------------- fixtures

def eye(count, seed, image_dtype=np.uint8, order=('gaze', 'image', 'pose')):
    """One eye's struct: distinct images and unit gaze vectors, fields in the given order."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *IMAGE_SHAPE)).astype(image_dtype)
    gaze = rng.normal(size=(count, 3))
    gaze /= np.linalg.norm(gaze, axis=1, keepdims=True)
    fields = {'gaze': gaze, 'image': images, 'pose': rng.normal(size=(count, 3))}
    return {name: fields[name] for name in order}


def write_day(path, left, right, sides=('left', 'right'), filenames=True, extra=None):
    """A dayYY.mat in MPIIGaze's layout: struct data with left/right, plus a filenames cell."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    count = len(np.atleast_2d(left['gaze'])) if 'gaze' in left else 1
    data = {side: {'left': left, 'right': right}[side] for side in sides}
    content = {}
    if filenames:
        content['filenames'] = np.array([f'day01/{i:04d}.jpg' for i in range(count)], dtype=object)
    content['data'] = data
    content.update(extra or {})
    scipy.io.savemat(path, content)
    return path


def day_path(root, person, day):
    return os.path.join(root, 'Data', 'Normalized', person, f'{day}.mat')


# ---------------------------------------------------------------- read_day

def test_read_day_stacks_left_then_right(tmp_path):
    left, right = eye(3, seed=1), eye(3, seed=2)
    images, gaze, _ = read_day(write_day(tmp_path / 'day01.mat', left, right))
    assert images.dtype == np.uint8 and images.shape == (6, *IMAGE_SHAPE)
    assert gaze.dtype == np.float32 and gaze.shape == (6, 3)
    np.testing.assert_array_equal(images, np.concatenate([left['image'], right['image']]))
    np.testing.assert_allclose(gaze, np.concatenate([left['gaze'], right['gaze']]), rtol=1e-6)


def test_read_day_reads_fields_by_name_not_position(tmp_path):
    # pose first and image last in left, another order in right, and right stored before left in data.
    left = eye(4, seed=3, order=('pose', 'gaze', 'image'))
    right = eye(4, seed=4, order=('image', 'pose', 'gaze'))
    path = write_day(tmp_path / 'day02.mat', left, right, sides=('right', 'left'))
    raw = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    assert raw['data']._fieldnames == ['right', 'left']  # the fixture really is in another order
    assert raw['data'].left._fieldnames == ['pose', 'gaze', 'image']
    images, gaze, _ = read_day(path)
    np.testing.assert_array_equal(images, np.concatenate([left['image'], right['image']]))
    np.testing.assert_allclose(gaze, np.concatenate([left['gaze'], right['gaze']]), rtol=1e-6)


def test_a_day_with_one_sample_gives_one_per_eye(tmp_path):
    left, right = eye(1, seed=5), eye(1, seed=6)
    path = write_day(tmp_path / 'day03.mat', left, right)
    raw = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    assert raw['data'].left.image.shape == IMAGE_SHAPE  # squeeze_me drops N = 1: the case under test
    images, gaze, _ = read_day(path)
    assert images.shape == (2, *IMAGE_SHAPE) and gaze.shape == (2, 3)
    np.testing.assert_array_equal(images[0], left['image'][0])
    np.testing.assert_array_equal(images[1], right['image'][0])
    np.testing.assert_allclose(gaze[1], right['gaze'][0], rtol=1e-6)


def test_one_sample_left_and_several_right(tmp_path):
    left, right = eye(1, seed=7), eye(3, seed=8)
    images, gaze, _ = read_day(write_day(tmp_path / 'day04.mat', left, right))
    assert images.shape == (4, *IMAGE_SHAPE) and gaze.shape == (4, 3)
    np.testing.assert_array_equal(images[1:], right['image'])


def test_images_stored_as_doubles_are_accepted(tmp_path):
    left, right = eye(2, seed=9, image_dtype=np.float64), eye(2, seed=10, image_dtype=np.float64)
    left['image'][0, 0, :2] = [0.0, 255.0]  # both ends of the range
    images, _, _ = read_day(write_day(tmp_path / 'day05.mat', left, right))
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, np.concatenate([left['image'], right['image']]).astype(np.uint8))


def test_an_empty_day_gives_no_samples(tmp_path):
    empty = {'gaze': np.zeros((0, 3)), 'image': np.zeros((0, *IMAGE_SHAPE), np.uint8)}
    images, gaze, right_eye = read_day(write_day(tmp_path / 'day06.mat', empty, empty, filenames=False))
    assert images.shape == (0, *IMAGE_SHAPE) and gaze.shape == (0, 3) and right_eye.shape == (0,)


# ---------------------------------------------------------------- bad files

def truncated(path):
    write_day(path, eye(3, seed=11), eye(3, seed=12))
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content[:len(content) * 2 // 3])


def not_a_mat(path):
    with open(path, 'wb') as f:
        f.write(b'this is not a MATLAB file at all' * 10)


def empty_file(path):
    open(path, 'wb').close()


def no_data(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {'dataset': {'left': eye(2, 13), 'right': eye(2, 14)}})


def data_not_a_struct(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {'data': np.zeros((2, 3))})


def no_right(path):
    write_day(path, eye(2, 15), eye(2, 16), sides=('left',))


def no_gaze(path):
    left = eye(2, 17)
    del left['gaze']
    write_day(path, left, eye(2, 18))


def no_image(path):
    right = eye(2, 19)
    del right['image']
    write_day(path, eye(2, 20), right)


def with_fields(**changes):
    def write(path):
        left = eye(3, seed=21)
        left.update({k: v(left[k]) if callable(v) else v for k, v in changes.items()})
        write_day(path, left, eye(3, seed=22))
    return write


BAD_FILES = {
    'truncated': (truncated, UNREADABLE),
    'not_a_mat': (not_a_mat, UNREADABLE),
    'empty_file': (empty_file, UNREADABLE),
    'no_data': (no_data, NO_DATA),
    'data_not_a_struct': (data_not_a_struct, MISSING_FIELDS),
    'no_right': (no_right, MISSING_FIELDS),
    'no_gaze': (no_gaze, MISSING_FIELDS),
    'no_image': (no_image, MISSING_FIELDS),
    'image_too_narrow': (with_fields(image=lambda im: im[:, :, :59]), BAD_SHAPE),
    'image_transposed': (with_fields(image=lambda im: im.transpose(0, 2, 1)), BAD_SHAPE),
    'image_flat': (with_fields(image=lambda im: im.reshape(3, -1)), BAD_SHAPE),
    'image_text': (with_fields(image='not pixels'), BAD_SHAPE),
    'gaze_two_columns': (with_fields(gaze=lambda g: g[:, :2]), BAD_SHAPE),
    'gaze_too_few_rows': (with_fields(gaze=lambda g: g[:2]), BAD_SHAPE),
    'gaze_flat': (with_fields(gaze=lambda g: g.reshape(-1)), BAD_SHAPE),
    'gaze_text': (with_fields(gaze=np.array(['a', 'b', 'c'])), BAD_SHAPE),
    'gaze_nan': (with_fields(gaze=lambda g: np.where(np.arange(3)[:, None] == 1, np.nan, g)), BAD_VALUES),
    'gaze_inf': (with_fields(gaze=lambda g: np.where(np.arange(3)[:, None] == 2, np.inf, g)), BAD_VALUES),
    'image_over_255': (with_fields(image=lambda im: im.astype(np.float64) + 1.0), BAD_VALUES),
    'image_negative': (with_fields(image=lambda im: im.astype(np.float64) - 1.0), BAD_VALUES),
    'image_nan': (with_fields(image=lambda im: np.where(im == im.max(), np.nan, im.astype(np.float64))), BAD_VALUES),
}


@pytest.mark.parametrize('kind', sorted(BAD_FILES))
def test_read_day_raises_badmat_with_the_reason(tmp_path, kind):
    write, reason = BAD_FILES[kind]
    path = str(tmp_path / 'p00' / 'day01.mat')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write(path)
    with pytest.raises(BadMat) as error:
        read_day(path)
    assert str(error.value) == reason


def test_read_days_skips_each_bad_file_and_uses_every_good_one(tmp_path):
    good = {}
    for person, day, count in (('p00', 'day01', 2), ('p00', 'day02', 1), ('p01', 'day01', 3)):
        left, right = eye(count, seed=count), eye(count, seed=count + 100)
        good[(person, day)] = (left, right)
        write_day(day_path(tmp_path, person, day), left, right)
    expected = {}
    for i, kind in enumerate(sorted(BAD_FILES)):
        write, reason = BAD_FILES[kind]
        path = day_path(tmp_path, 'p02', f'day{i + 1:02d}')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write(path)
        expected.setdefault(reason, []).append(os.path.join('p02', f'day{i + 1:02d}.mat'))
    root = tmp_path / 'Data' / 'Normalized'
    images, gaze, _, skipped = read_days(find_day_files(tmp_path), root=root)
    assert skipped == expected
    want_images = np.concatenate([np.concatenate([left['image'], right['image']]) for left, right in good.values()])
    want_gaze = np.concatenate([np.concatenate([left['gaze'], right['gaze']]) for left, right in good.values()])
    assert images.shape == (2 * (2 + 1 + 3), *IMAGE_SHAPE) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_allclose(gaze, want_gaze, rtol=1e-6)
    # Without root, files are named by their base name.
    _, _, _, plain = read_days(find_day_files(tmp_path))
    assert plain[NO_DATA] == [os.path.basename(p) for p in expected[NO_DATA]]


def test_read_days_of_only_bad_files_gives_empty_arrays(tmp_path):
    not_a_mat(tmp_path / 'day01.mat')
    images, gaze, right_eye, skipped = read_days([tmp_path / 'day01.mat'])
    assert images.shape == (0, *IMAGE_SHAPE) and images.dtype == np.uint8
    assert gaze.shape == (0, 3) and gaze.dtype == np.float32
    assert right_eye.shape == (0,) and right_eye.dtype == bool
    assert skipped == {UNREADABLE: ['day01.mat']}
    assert read_days([])[3] == {}


# ---------------------------------------------------------------- find_day_files

def test_find_day_files_natural_order(tmp_path):
    made = []
    for person, day in (('p10', 'day1'), ('p2', 'day10'), ('p2', 'day2'), ('p1', 'day1'), ('p00', 'day01'),
                        ('p2', 'day9')):
        path = day_path(tmp_path, person, day)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, 'wb').close()
        made.append(path)
    # Not day files: other extensions, files directly under Normalized, deeper folders.
    (tmp_path / 'Data' / 'Normalized' / 'p2' / 'readme.txt').write_text('x')
    (tmp_path / 'Data' / 'Normalized' / 'top.mat').write_bytes(b'')
    (tmp_path / 'Data' / 'Normalized' / 'p2' / 'deeper').mkdir()
    (tmp_path / 'Data' / 'Normalized' / 'p2' / 'deeper' / 'day3.mat').write_bytes(b'')
    found = [os.path.relpath(p, tmp_path / 'Data' / 'Normalized') for p in find_day_files(tmp_path)]
    assert found == [os.path.join(*parts) for parts in (
        ('p00', 'day01.mat'), ('p1', 'day1.mat'), ('p2', 'day2.mat'), ('p2', 'day9.mat'), ('p2', 'day10.mat'),
        ('p10', 'day1.mat'))]


def test_find_day_files_of_a_missing_folder_is_empty(tmp_path):
    assert find_day_files(tmp_path / 'nowhere') == []
    assert find_day_files(str(tmp_path)) == []


# ---------------------------------------------------------------- cache

def sample_arrays(count=5):
    """(images, gaze, right_eye) of a cache: left eyes first, then right eyes."""
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8),
            rng.normal(size=(count, 3)).astype(np.float32),
            np.arange(count) >= count // 2)


def test_cache_roundtrip(tmp_path):
    images, gaze, right_eye = sample_arrays()
    path = tmp_path / 'gaze.npz'
    save_cache(path, images, gaze, right_eye)
    with np.load(path) as raw:
        assert sorted(raw.files) == ['gaze', 'real', 'right_eye']
    loaded_images, loaded_gaze, loaded_right = load_cache(path)
    assert loaded_images.dtype == np.uint8 and loaded_gaze.dtype == np.float32
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_gaze, gaze)
    np.testing.assert_array_equal(loaded_right, right_eye)
    assert os.listdir(tmp_path) == ['gaze.npz']  # no temporary file left
    assert load_cache(str(path))[0].shape == images.shape


def test_cache_float64_gaze_comes_back_float32(tmp_path):
    images, gaze, right_eye = sample_arrays()
    save_cache(tmp_path / 'gaze.npz', images, gaze.astype(np.float64), right_eye)
    assert load_cache(tmp_path / 'gaze.npz')[1].dtype == np.float32


def test_an_old_cache_holding_only_real_is_refused(tmp_path):
    images, _, _ = sample_arrays()
    np.savez(tmp_path / 'gaze.npz', real=images)
    with pytest.raises(ValueError, match='older cache'):
        load_cache(tmp_path / 'gaze.npz')


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'empty', 'npy', 'pickled', 'corrupt_member'])
def test_a_damaged_cache_raises_valueerror(tmp_path, damage):
    images, gaze, right_eye = sample_arrays(50)
    path = tmp_path / 'gaze.npz'
    save_cache(path, images, gaze, right_eye)
    content = path.read_bytes()
    if damage == 'truncated':
        path.write_bytes(content[:len(content) // 2])
    elif damage == 'garbage':
        path.write_bytes(b'\x00garbage' * 100)
    elif damage == 'empty':
        path.write_bytes(b'')
    elif damage == 'npy':
        np.save(open(path, 'wb'), images)
    elif damage == 'pickled':
        np.savez(path, real=np.array([{'a': 1}], dtype=object), gaze=gaze, right_eye=right_eye)
    else:  # a byte flipped inside the stored real array: the zip CRC catches it
        with zipfile.ZipFile(path) as archive:
            offset = archive.getinfo('real.npy').header_offset + 30 + len('real.npy') + 200
        corrupted = bytearray(content)
        corrupted[offset] ^= 0xFF
        path.write_bytes(bytes(corrupted))
    with pytest.raises(ValueError):
        load_cache(path)


@pytest.mark.parametrize('images, gaze', [
    (np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros((0, 3), np.float32)),   # empty
    (np.zeros((2, 35, 55), np.uint8), np.zeros((2, 3), np.float32)),          # resized images
    (np.zeros((2, *IMAGE_SHAPE), np.float32), np.zeros((2, 3), np.float32)),  # not uint8
    (np.zeros((2, *IMAGE_SHAPE), np.uint8), np.zeros((3, 3), np.float32)),    # counts differ
    (np.zeros((2, *IMAGE_SHAPE), np.uint8), np.zeros((2, 2), np.float32)),    # gaze not N x 3
])
def test_a_cache_of_unexpected_shapes_is_refused(tmp_path, images, gaze):
    np.savez(tmp_path / 'gaze.npz', real=images, gaze=gaze, right_eye=np.zeros(len(images), bool))
    with pytest.raises(ValueError, match='unexpected shapes'):
        load_cache(tmp_path / 'gaze.npz')


def test_a_missing_cache_raises_valueerror(tmp_path):
    with pytest.raises(ValueError):
        load_cache(tmp_path / 'nothing.npz')


def test_save_cache_replaces_an_existing_file_atomically(tmp_path):
    path = tmp_path / 'gaze.npz'
    path.write_bytes(b'an old, damaged cache')
    images, gaze, right_eye = sample_arrays(3)
    save_cache(path, images, gaze, right_eye)
    np.testing.assert_array_equal(load_cache(path)[0], images)
    assert os.listdir(tmp_path) == ['gaze.npz']
    save_cache(path, *sample_arrays(7))
    assert load_cache(path)[0].shape == (7, *IMAGE_SHAPE)
    assert os.listdir(tmp_path) == ['gaze.npz']


@pytest.mark.parametrize('failure, expected', [
    (KeyboardInterrupt, KeyboardInterrupt),  # interrupted after writing the temporary, before the rename
    (lambda: OSError(28, 'No space left on device'), OutputError),  # a full disk: one line, as every output
])
def test_a_failed_save_keeps_the_old_cache_and_leaves_no_temp(tmp_path, monkeypatch, failure, expected):
    path = tmp_path / 'gaze.npz'
    save_cache(path, *sample_arrays(3))
    before = path.read_bytes()
    real_savez = np.savez

    def failing_savez(file, **arrays):
        real_savez(file, **arrays)  # the temporary file is fully written...
        raise failure()  # ...and then the save fails before the rename
    monkeypatch.setattr(mpiigaze.np, 'savez', failing_savez)
    with pytest.raises(expected):
        save_cache(path, *sample_arrays(9))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['gaze.npz']


# ---------------------------------------------------------------- which eye (right_eye from read_day, in the cache)

def test_read_day_flags_right_eyes(tmp_path):
    left, right = eye(2, seed=30), eye(3, seed=31)
    images, gaze, right_eye = read_day(write_day(tmp_path / 'day01.mat', left, right))
    assert right_eye.dtype == bool and right_eye.tolist() == [False, False, True, True, True]
    np.testing.assert_array_equal(images[right_eye], right['image'])
    np.testing.assert_allclose(gaze[~right_eye], left['gaze'], rtol=1e-6)


def test_read_days_stacks_the_right_eye_flags_of_the_days_it_uses(tmp_path):
    write_day(day_path(tmp_path, 'p00', 'day01'), eye(1, seed=32), eye(1, seed=33))
    write_day(day_path(tmp_path, 'p00', 'day02'), eye(2, seed=34), eye(2, seed=35))
    no_data(day_path(tmp_path, 'p00', 'day03'))
    paths = find_day_files(tmp_path)
    images, gaze, right_eye, skipped = read_days(paths)
    days = [read_day(path) for path in paths[:2]]
    np.testing.assert_array_equal(images, np.concatenate([day[0] for day in days]))
    np.testing.assert_array_equal(gaze, np.concatenate([day[1] for day in days]))
    assert skipped == {NO_DATA: ['day03.mat']}
    assert right_eye.tolist() == [False, True, False, False, True, True]
    empty = read_days([])
    assert empty[2].shape == (0,) and empty[2].dtype == bool


def test_cache_with_right_eye_roundtrip(tmp_path):
    images, gaze, _ = sample_arrays(4)
    right_eye = np.array([False, False, True, True])
    path = tmp_path / 'gaze.npz'
    save_cache(path, images, gaze, right_eye)
    loaded_images, loaded_gaze, loaded_right = load_cache(path)
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_gaze, gaze)
    assert loaded_right.dtype == bool and loaded_right.tolist() == right_eye.tolist()
    assert os.listdir(tmp_path) == ['gaze.npz']


def test_load_cache_refuses_a_cache_without_right_eye(tmp_path):
    images, gaze, _ = sample_arrays(3)
    np.savez(tmp_path / 'gaze.npz', real=images, gaze=gaze)
    with pytest.raises(ValueError, match='older cache'):
        load_cache(tmp_path / 'gaze.npz')


@pytest.mark.parametrize('right_eye', [np.zeros(3, np.uint8), np.zeros(4, bool), np.zeros((3, 1), bool)])
def test_a_cache_with_a_bad_right_eye_is_refused(tmp_path, right_eye):
    images, gaze, _ = sample_arrays(3)
    np.savez(tmp_path / 'gaze.npz', real=images, gaze=gaze, right_eye=right_eye)
    with pytest.raises(ValueError, match='right_eye'):
        load_cache(tmp_path / 'gaze.npz')
