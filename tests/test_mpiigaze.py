"""MPIIGaze .mat reading and the real images' cache (and converting the old gaze.npz), on tiny .mat files."""
import os
import weakref

import numpy as np
import pytest
import scipy.io

from data import mpiigaze
from data.mpiigaze import (BAD_SHAPE, BAD_VALUES, CACHE_IMAGES, CACHE_LABELS, IMAGE_SHAPE, MISSING_FIELDS, NO_DATA,
                           OLD_CACHE, UNREADABLE, BadMat, cache_files, convert_old_cache, find_day_files, load_cache,
                           read_day, read_days, write_cache)
from data.npy_file import NpyRows
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

def write_days(root, counts=(2, 1, 3)):
    """dayNN.mat files of one person with counts samples of each eye; their paths and read_days' arrays."""
    for day, count in enumerate(counts, 1):
        write_day(day_path(root, 'p00', f'day{day:02d}'), eye(count, seed=day), eye(count, seed=day + 50))
    paths = find_day_files(root)
    return paths, read_days(paths)[:3]


def cache_names(folder):
    return sorted(os.listdir(folder))


def test_the_cache_holds_what_read_days_reads_and_is_read_by_row(tmp_path):
    paths, (images, gaze, right_eye) = write_days(tmp_path / 'mat')
    count, skipped = write_cache(tmp_path, paths)
    assert (count, skipped) == (len(images), {})
    assert cache_names(tmp_path) == ['mat', CACHE_IMAGES, CACHE_LABELS]  # no temporary file left
    loaded_images, loaded_gaze, loaded_right = load_cache(tmp_path)
    assert isinstance(loaded_images, NpyRows) and loaded_images.shape == images.shape  # on disk, not in memory
    np.testing.assert_array_equal(loaded_images[np.arange(len(images))], images)
    np.testing.assert_array_equal(loaded_images[np.array([5, 0, 5])], images[[5, 0, 5]])
    np.testing.assert_array_equal(np.load(tmp_path / CACHE_IMAGES), images)  # a plain .npy for any reader
    assert loaded_gaze.dtype == np.float32 and loaded_right.dtype == bool
    np.testing.assert_array_equal(loaded_gaze, gaze)
    assert loaded_right.tolist() == right_eye.tolist()


def test_write_cache_reads_one_day_at_a_time_and_skips_bad_files(tmp_path, monkeypatch):
    paths, (images, _, _) = write_days(tmp_path / 'mat')
    no_data(tmp_path / 'mat' / 'Data' / 'Normalized' / 'p00' / 'day09.mat')
    alive = []
    real_read_day = mpiigaze.read_day

    def counting_read_day(path):  # the days read so far that the writer still holds: at most the current one
        alive.append(len([day for day in gc_days if day() is not None]))
        day = real_read_day(path)
        gc_days.append(weakref.ref(day[0]))
        return day
    gc_days = []
    monkeypatch.setattr(mpiigaze, 'read_day', counting_read_day)
    count, skipped = write_cache(tmp_path, find_day_files(tmp_path / 'mat'))
    assert count == len(images) and skipped == {NO_DATA: ['day09.mat']}
    assert max(alive) <= 1


def test_a_cache_of_only_bad_files_is_not_written(tmp_path):
    not_a_mat(tmp_path / 'day01.mat')
    assert write_cache(tmp_path, [tmp_path / 'day01.mat']) == (0, {UNREADABLE: ['day01.mat']})
    assert cache_names(tmp_path) == ['day01.mat']


@pytest.mark.parametrize('damage', ['labels_garbage', 'labels_missing_key', 'images_truncated', 'images_garbage',
                                    'images_missing', 'images_resized', 'counts_differ'])
def test_a_damaged_cache_raises_valueerror(tmp_path, damage):
    paths, (images, gaze, right_eye) = write_days(tmp_path / 'mat')
    write_cache(tmp_path, paths)
    images_path, labels_path = cache_files(tmp_path)
    if damage == 'labels_garbage':
        open(labels_path, 'wb').write(b'\x00garbage' * 100)
    elif damage == 'labels_missing_key':
        np.savez(open(labels_path, 'wb'), gaze=gaze)
    elif damage == 'images_truncated':
        content = open(images_path, 'rb').read()
        open(images_path, 'wb').write(content[:len(content) - 10])
    elif damage == 'images_garbage':
        open(images_path, 'wb').write(b'garbage')
    elif damage == 'images_missing':
        os.remove(images_path)
    elif damage == 'images_resized':
        np.save(images_path, np.zeros((len(images), 35, 55), np.uint8))
    else:
        np.save(images_path, images[:-1])
    with pytest.raises(ValueError):
        load_cache(tmp_path)


def test_a_missing_cache_raises_valueerror(tmp_path):
    with pytest.raises(ValueError):
        load_cache(tmp_path)


@pytest.mark.parametrize('failure, expected', [
    (KeyboardInterrupt, KeyboardInterrupt),  # interrupted halfway
    (lambda: OSError(28, 'No space left on device'), OutputError),  # a full disk: one line, as every output
])
def test_a_failed_write_leaves_no_cache_and_no_temp(tmp_path, monkeypatch, failure, expected):
    paths, _ = write_days(tmp_path / 'mat')
    real_read_day = mpiigaze.read_day
    calls = []

    def failing_read_day(path):
        calls.append(path)
        if len(calls) == 2:
            raise failure()
        return real_read_day(path)
    monkeypatch.setattr(mpiigaze, 'read_day', failing_read_day)
    with pytest.raises(expected):
        write_cache(tmp_path, paths)
    assert cache_names(tmp_path) == ['mat']


def old_cache(path, images, gaze, right_eye=None):
    arrays = dict(real=images, gaze=gaze) if right_eye is None else dict(real=images, gaze=gaze, right_eye=right_eye)
    np.savez(path, **arrays)


@pytest.mark.parametrize('order', ['C', 'F'])
def test_an_old_gaze_npz_is_converted_a_chunk_at_a_time_and_removed(tmp_path, monkeypatch, order):
    paths, (images, gaze, right_eye) = write_days(tmp_path / 'mat', counts=(3, 4, 5))
    old_cache(tmp_path / OLD_CACHE, np.asarray(images, order=order), gaze, right_eye)
    chunks = []
    real_member_rows = mpiigaze.npz_member_rows
    monkeypatch.setattr(mpiigaze, 'npz_member_rows', lambda path, name, rows, desc: real_member_rows(path, name, 5, desc))
    real_write_rows = mpiigaze.write_rows
    monkeypatch.setattr(mpiigaze, 'write_rows', lambda path, shape, dtype, batches: real_write_rows(
        path, shape, dtype, (chunks.append(len(batch)) or batch for batch in batches)))
    convert_old_cache(tmp_path / OLD_CACHE, tmp_path)
    if order == 'C':  # column-major images (as loadmat gives them) have no rows to stream: read whole once
        assert chunks == [5, 5, 5, 5, 4]
    assert cache_names(tmp_path) == ['mat', CACHE_IMAGES, CACHE_LABELS]
    loaded_images, loaded_gaze, loaded_right = load_cache(tmp_path)
    np.testing.assert_array_equal(loaded_images[np.arange(len(images))], images)
    np.testing.assert_array_equal(loaded_gaze, gaze)
    assert loaded_right.tolist() == right_eye.tolist()


@pytest.mark.parametrize('damage', ['without_right_eye', 'truncated', 'garbage', 'resized'])
def test_an_old_cache_that_cannot_be_converted_raises_valueerror_and_stays(tmp_path, damage):
    images, gaze = eye(4, seed=1)['image'], eye(4, seed=1)['gaze'].astype(np.float32)
    path = tmp_path / OLD_CACHE
    if damage == 'without_right_eye':
        old_cache(path, images, gaze)
    elif damage == 'resized':
        old_cache(path, np.zeros((4, 35, 55), np.uint8), gaze, np.zeros(4, bool))
    else:
        old_cache(path, images, gaze, np.zeros(4, bool))
        content = path.read_bytes()
        path.write_bytes(content[:len(content) // 2] if damage == 'truncated' else b'garbage' * 10)
    with pytest.raises(ValueError):
        convert_old_cache(path, tmp_path)
    assert cache_names(tmp_path) == [OLD_CACHE]


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
