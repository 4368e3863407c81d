"""UnityEyes cropping on tiny folders made in each test: landmark parsing, crop position, bad inputs, reuse."""
import json
import multiprocessing
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data import unityeyes
from data.unityeyes import (BAD_CROP, BAD_JSON, BAD_LANDMARKS, CROP_SUFFIX, NO_IMAGE, NO_JSON, NO_LANDMARKS,
                            NOT_A_CROP, OUTSIDE, UNREADABLE, natural_key, parse_vector, prepare_crops)
from utils import OutputError

WIDTH, HEIGHT = 640, 480
CROP_W, CROP_H = 140, 84


# ---------------------------------------------------------------- fixtures

def textured_frame(seed=0):
    """A 640x480 RGB frame of coarse colour noise (4x4 blocks): any offset of a crop shows in its pixels."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (HEIGHT // 4, WIDTH // 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)


def unity_landmarks(points):
    """Image (column, row) points as Unity "(x, y, z)" strings: Unity's y counts up from the bottom."""
    return [f'({col:.4f}, {HEIGHT - row:.4f}, 9.8765)' for col, row in points]


def eye_points(col, row, half_w=30, half_h=12):
    """16 eyelid points whose bounding box is centred exactly on (col, row)."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)  # includes 0, pi/2, pi, 3pi/2: exact extremes
    return [(col + half_w * np.cos(a), row + half_h * np.sin(a)) for a in angles]


def write_json(directory, stem, info):
    with open(os.path.join(directory, f'{stem}.json'), 'w') as f:
        json.dump(info, f)


def write_frame(directory, stem, centre=(320, 240), points=None, frame=None, seed=0, quality=95):
    """{stem}.jpg (textured frame) and {stem}.json (eye landmarks around centre, image coordinates)."""
    pixels = textured_frame(seed) if frame is None else frame
    Image.fromarray(pixels).save(os.path.join(directory, f'{stem}.jpg'), quality=quality)
    landmarks = unity_landmarks(points if points is not None else eye_points(*centre))
    write_json(directory, stem, {'interior_margin_2d': landmarks,
                                 'eye_details': {'look_vec': '(0.1, -0.2, -0.97, 0)'}})


def decoded_gray(path):
    """The frame as the test reads it: Pillow's own gray conversion of the decoded JPEG."""
    with Image.open(path) as image:
        return np.asarray(image.convert('L'), dtype=np.int16)


def read_crop(path):
    with Image.open(path) as image:
        assert image.format == 'PNG'
        assert image.mode == 'L'
        assert image.size == (CROP_W, CROP_H)
        return np.asarray(image, dtype=np.int16)


def assert_close(crop, expected):
    # libjpeg's luma (draft mode) and Pillow's RGB->L differ by rounding only; a 1-pixel shift of the
    # 4x4-block texture changes a quarter of the pixels by ~85 on average, far above this.
    assert crop.shape == expected.shape
    assert np.abs(crop - expected).mean() < 1.5, np.abs(crop - expected).mean()


def names(paths):
    return [os.path.basename(p) for p in paths]


def hidden(folder):
    """Hidden files in folder other than the crop index: temporary files someone left behind."""
    return [n for n in os.listdir(folder) if n.startswith('.') and n != unityeyes.INDEX_NAME]


# ---------------------------------------------------------------- parse_vector, natural_key

@pytest.mark.parametrize('text, expected', [
    ('(1.5, -2, 3e2)', [1.5, -2.0, 300.0]),
    ('(0.1, -0.2, -0.97, 0)', [0.1, -0.2, -0.97, 0.0]),
    ('  ( 1 ,2,  +.5 )  ', [1.0, 2.0, 0.5]),
    ('(7)', [7.0]),
    ('(-1.E-3, 4.)', [-0.001, 4.0]),
    ([1.5, -2, 300], [1.5, -2.0, 300.0]),
    ([0], [0.0]),
])
def test_parse_vector_accepts_unity_and_json_vectors(text, expected):
    values = parse_vector(text)
    assert values == pytest.approx(expected)
    assert all(type(v) is float for v in values)


EVIL = [
    "__import__('os').system('touch PWNED')",
    "(1, 2, __import__('os').system('touch PWNED'))",
    "(1, 2, __import__('os').getpid())",
    "(1, 2, open('PWNED', 'w').close())",
    "[__import__('os').system('touch PWNED')]",
    "(1, 2, 3); __import__('os').system('touch PWNED')",
    "(1, 2, 3)\n__import__('os').system('touch PWNED')",
    "exec(\"open('PWNED','w')\")",
    "(1, 2, 3 if open('PWNED', 'w') else 0)",
    "(1, 2, (lambda: __import__('os').system('touch PWNED'))())",
]


@pytest.mark.parametrize('text', EVIL)
def test_parse_vector_rejects_code_and_runs_nothing(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # eval() of any of these, as the original did with landmarks, would create the marker (or call getpid).
    with pytest.raises(ValueError):
        parse_vector(text)
    assert not (tmp_path / 'PWNED').exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('text', [
    '(nan, 1, 2)', '(1, inf, 2)', '(-inf)', '(1e400, 0, 0)', '(1, -1e999)', '(NaN)', '(Infinity, 0)',
    [float('nan'), 1.0], [1.0, float('inf')], [10 ** 400, 0],
])
def test_parse_vector_rejects_non_finite(text):
    with pytest.raises(ValueError):
        parse_vector(text)


@pytest.mark.parametrize('text', [
    '', '()', '( )', '   ', [], '(1, 2', '1, 2, 3', '(1,, 2)', '(1 2 3)', '((1, 2))', '(1, 2),', '(0x10, 1)',
    '(1_000, 2)', '(١, ٢)', '(1, 2)(3, 4)', '(1, two)', '{"x": 1}',
    '(' + ', '.join(['1.0'] * 100) + ')',   # valid syntax but far too long to be a landmark
    '(' + '1' * 300 + ')',
    True, False, [True, False, True], [1, True], None, 1.5, 3, {'x': 1}, [[1, 2]], ['1', '2'], b'(1, 2)',
    (1.0, 2.0),
])
def test_parse_vector_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_vector(text)


def test_natural_key_orders_numbers_by_value():
    shuffled = ['10.jpg', '2.jpg', '1.jpg', '100.jpg', '9.jpg', 'a10', 'a9']
    assert sorted(shuffled, key=natural_key) == ['1.jpg', '2.jpg', '9.jpg', '10.jpg', '100.jpg', 'a9', 'a10']


@pytest.mark.parametrize('stems', [['10', '2', '007', '7', '1', '0', '100', '07'], ['10', '2', 'a1', '1'], ['²', '1'],
                                   ['', '3', '1']])
def test_the_quick_sort_of_digit_stems_is_the_natural_order(stems):
    assert unityeyes._natural_sorted(set(stems)) == sorted(set(stems), key=natural_key)


# ---------------------------------------------------------------- crop content and position

def test_crop_is_cut_around_the_landmark_box_centre_with_y_flipped(tmp_path):
    # Eye centre at image (column 200, row 150), i.e. Unity y = 330: an unflipped y would cut rows ~288..372.
    write_frame(tmp_path, '1', centre=(200, 150))
    report = prepare_crops(tmp_path, workers=1)
    assert names(report.paths) == ['1' + CROP_SUFFIX]
    assert report.skipped == {} and report.padded == [] and report.remade == []
    crop = read_crop(report.paths[0])
    frame = decoded_gray(tmp_path / '1.jpg')
    assert_close(crop, frame[150 - 42:150 + 42, 200 - 70:200 + 70])
    # The same comparison one pixel off, or with y unflipped, fails: the test can catch a regression.
    assert np.abs(crop - frame[150 - 41:150 + 43, 200 - 70:200 + 70]).mean() > 10
    assert np.abs(crop - frame[150 - 42:150 + 42, 200 - 69:200 + 71]).mean() > 10
    assert np.abs(crop - frame[330 - 42:330 + 42, 200 - 70:200 + 70]).mean() > 10


def test_crop_centre_is_the_bounding_box_centre_not_the_mean(tmp_path):
    # Most points crowd the left end: the mean is at column ~110, the box centre at (100 + 220) / 2 = 160.
    points = [(100, 250), (101, 250), (102, 251), (103, 249), (104, 250), (220, 270), (150, 230)]
    write_frame(tmp_path, '5', points=points)
    report = prepare_crops(tmp_path, workers=1)
    frame = decoded_gray(tmp_path / '5.jpg')
    assert_close(read_crop(report.paths[0]), frame[250 - 42:250 + 42, 160 - 70:160 + 70])


def test_fractional_centre_is_floored(tmp_path):
    write_frame(tmp_path, '3', points=[(300.2, 200.9), (341.4, 221.8)])  # centre (320.8, 211.35)
    report = prepare_crops(tmp_path, workers=1)
    frame = decoded_gray(tmp_path / '3.jpg')
    assert_close(read_crop(report.paths[0]), frame[211 - 42:211 + 42, 320 - 70:320 + 70])


def test_landmarks_may_be_json_lists_and_extra_coordinates_are_ignored(tmp_path):
    write_frame(tmp_path, '1')
    points = [[col, HEIGHT - row, 5.0, 1.0] for col, row in eye_points(400, 300)]
    write_json(tmp_path, '1', {'interior_margin_2d': points})
    report = prepare_crops(tmp_path, workers=1)
    frame = decoded_gray(tmp_path / '1.jpg')
    assert_close(read_crop(report.paths[0]), frame[300 - 42:300 + 42, 400 - 70:400 + 70])


@pytest.mark.parametrize('centre, rows, cols, pad', [
    ((20, 470), (428, 480), (0, 90), ((0, 32), (50, 0))),         # bottom-left corner
    ((630, 10), (0, 52), (560, 640), ((32, 0), (0, 60))),          # top-right corner
    ((320, 2), (0, 44), (250, 390), ((40, 0), (0, 0))),            # top edge only
    ((639, 240), (198, 282), (569, 640), ((0, 0), (0, 69))),       # right edge only
])
def test_eye_at_the_frame_edge_is_edge_padded_and_reported(tmp_path, centre, rows, cols, pad):
    write_frame(tmp_path, '7', centre=centre)
    write_frame(tmp_path, '8', centre=(320, 240))
    report = prepare_crops(tmp_path, workers=1)
    assert names(report.paths) == ['7' + CROP_SUFFIX, '8' + CROP_SUFFIX]
    assert report.padded == ['7.jpg']
    assert report.skipped == {}
    frame = decoded_gray(tmp_path / '7.jpg')
    expected = np.pad(frame[rows[0]:rows[1], cols[0]:cols[1]], pad, mode='edge')
    assert_close(read_crop(report.paths[0]), expected)


def test_eye_box_partly_outside_is_padded_not_skipped(tmp_path):
    write_frame(tmp_path, '1', points=[(-10, 100), (30, 120)])  # centre column 10: 60 columns of padding
    report = prepare_crops(tmp_path, workers=1)
    assert names(report.paths) == ['1' + CROP_SUFFIX] and report.padded == ['1.jpg']
    frame = decoded_gray(tmp_path / '1.jpg')
    assert_close(read_crop(report.paths[0]), np.pad(frame[110 - 42:110 + 42, 0:80], ((0, 0), (60, 0)), mode='edge'))


def test_grayscale_frames_are_read(tmp_path):
    gray = textured_frame(3)[..., 0]
    write_frame(tmp_path, '1', frame=gray, centre=(100, 100))
    report = prepare_crops(tmp_path, workers=1)
    frame = decoded_gray(tmp_path / '1.jpg')
    assert_close(read_crop(report.paths[0]), frame[58:142, 30:170])


# ---------------------------------------------------------------- reuse, remake, order, max_num

def test_crops_are_made_once_and_reused(tmp_path):
    for stem in ('1', '2'):
        write_frame(tmp_path, stem, centre=(300, 200))
    first = prepare_crops(tmp_path, workers=1)
    assert first.found == {'.jpg': 2, '.json': 2, 'crops': 0, 'other .png': 0}
    crop_path = tmp_path / ('1' + CROP_SUFFIX)
    # A sentinel crop of the right size: a second run that remade it would overwrite the constant 7s.
    Image.fromarray(np.full((CROP_H, CROP_W), 7, np.uint8)).save(crop_path)
    os.utime(crop_path, (1_000_000, 1_000_000))
    other_mtime = os.stat(tmp_path / ('2' + CROP_SUFFIX)).st_mtime_ns
    second = prepare_crops(tmp_path, workers=1)
    assert names(second.paths) == names(first.paths)
    assert second.found['crops'] == 2
    assert second.remade == [] and second.padded == [] and second.skipped == {}
    assert (read_crop(crop_path) == 7).all()
    assert os.stat(crop_path).st_mtime == 1_000_000
    assert os.stat(tmp_path / ('2' + CROP_SUFFIX)).st_mtime_ns == other_mtime


def test_a_valid_crop_is_used_even_without_its_frame(tmp_path):
    write_frame(tmp_path, '4')
    prepare_crops(tmp_path, workers=1)
    os.remove(tmp_path / '4.jpg')
    os.remove(tmp_path / '4.json')
    report = prepare_crops(tmp_path, workers=1)
    assert names(report.paths) == ['4' + CROP_SUFFIX] and report.skipped == {}


@pytest.mark.parametrize('bad', ['small', 'big', 'garbage', 'empty', 'truncated'])
def test_a_damaged_crop_is_remade_from_its_frame(tmp_path, bad):
    write_frame(tmp_path, '1', centre=(250, 200))
    write_frame(tmp_path, '2', centre=(250, 200))
    crop_path = tmp_path / ('1' + CROP_SUFFIX)
    if bad == 'small':
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(crop_path)
    elif bad == 'big':
        Image.fromarray(np.zeros((CROP_W, CROP_H), np.uint8)).save(crop_path)  # transposed: 84 x 140
    elif bad == 'garbage':
        crop_path.write_bytes(b'not a png at all')
    elif bad == 'empty':
        crop_path.write_bytes(b'')
    else:
        Image.fromarray(np.full((CROP_H, CROP_W), 9, np.uint8)).save(crop_path)
        crop_path.write_bytes(crop_path.read_bytes()[:40])
    report = prepare_crops(tmp_path, workers=1)
    assert names(report.paths) == ['1' + CROP_SUFFIX, '2' + CROP_SUFFIX]
    assert report.remade == ['1' + CROP_SUFFIX]
    assert report.skipped == {}
    frame = decoded_gray(tmp_path / '1.jpg')
    assert_close(read_crop(crop_path), frame[200 - 42:200 + 42, 250 - 70:250 + 70])


def test_a_damaged_crop_without_a_frame_is_skipped(tmp_path):
    write_frame(tmp_path, '1')
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / ('2' + CROP_SUFFIX))
    (tmp_path / ('3' + CROP_SUFFIX)).write_bytes(b'\x89PNG junk')
    write_json(tmp_path, '3', {'interior_margin_2d': unity_landmarks(eye_points(300, 200))})  # json, no jpg
    report = prepare_crops(tmp_path, workers=1)
    assert names(report.paths) == ['1' + CROP_SUFFIX]
    assert report.skipped == {BAD_CROP: ['2' + CROP_SUFFIX, '3' + CROP_SUFFIX]}
    assert report.remade == []


def test_paths_are_in_natural_order(tmp_path):
    frame = textured_frame()
    for stem in ('10', '2', '1', '21', '100', '3'):
        write_frame(tmp_path, stem, frame=frame)
    report = prepare_crops(tmp_path, workers=1)
    assert names(report.paths) == [f'{s}{CROP_SUFFIX}' for s in ('1', '2', '3', '10', '21', '100')]
    assert all(os.path.dirname(p) == str(tmp_path) for p in report.paths)


@pytest.mark.parametrize('max_num, expected', [(3, ['1', '2', '3']), (1, ['1']), (-1, ['1', '2', '3', '10', '11']),
                                               (50, ['1', '2', '3', '10', '11'])])
def test_max_num_takes_the_first_usable_crops(tmp_path, max_num, expected):
    frame = textured_frame()
    for stem in ('11', '10', '3', '2', '1'):
        write_frame(tmp_path, stem, frame=frame)
    report = prepare_crops(tmp_path, max_num=max_num, workers=1)
    assert names(report.paths) == [s + CROP_SUFFIX for s in expected]


def test_max_num_counts_usable_crops_not_files(tmp_path):
    frame = textured_frame()
    for stem in ('1', '3', '4'):
        write_frame(tmp_path, stem, frame=frame)
    (tmp_path / '2.jpg').write_bytes(b'')  # skipped, does not count towards max_num
    write_json(tmp_path, '2', {'interior_margin_2d': unity_landmarks(eye_points(300, 200))})
    report = prepare_crops(tmp_path, max_num=2, workers=1)
    assert names(report.paths) == ['1' + CROP_SUFFIX, '3' + CROP_SUFFIX]
    assert report.skipped == {UNREADABLE: ['2.jpg']}
    assert not (tmp_path / ('4' + CROP_SUFFIX)).exists()  # the sequential path stops early


def test_empty_folder(tmp_path):
    report = prepare_crops(tmp_path, workers=1)
    assert report.paths == [] and report.skipped == {}
    assert report.found == {'.jpg': 0, '.json': 0, 'crops': 0, 'other .png': 0}


def test_accepts_str_and_pathlike(tmp_path):
    write_frame(tmp_path, '1')
    assert names(prepare_crops(str(tmp_path), workers=1).paths) == names(prepare_crops(tmp_path, workers=1).paths)


# ---------------------------------------------------------------- the crop index: later starts open nothing

def spy_checks(monkeypatch):
    """(stems process_item is asked about, crops _crop_is_valid opens) from now on; workers=1 keeps them here."""
    asked, opened = [], []
    real_process_item, real_crop_is_valid = unityeyes.process_item, unityeyes._crop_is_valid

    def process_item(task):
        asked.append(task[1])
        return real_process_item(task)

    def crop_is_valid(path, jpg_path):
        opened.append(os.path.basename(path))
        return real_crop_is_valid(path, jpg_path)
    monkeypatch.setattr(unityeyes, 'process_item', process_item)
    monkeypatch.setattr(unityeyes, '_crop_is_valid', crop_is_valid)
    return asked, opened


def test_a_second_start_on_an_unchanged_folder_opens_no_crop(tmp_path, monkeypatch):
    for stem in ('1', '2', '10'):
        write_frame(tmp_path, stem, centre=(300, 200))
    first = prepare_crops(tmp_path, workers=1)
    index = tmp_path / unityeyes.INDEX_NAME
    written = index.stat().st_mtime_ns
    asked, opened = spy_checks(monkeypatch)
    second = prepare_crops(tmp_path, workers=1)
    assert asked == [] and opened == []
    assert second.paths == first.paths and second.found['crops'] == 3
    assert second.skipped == {} and second.padded == second.remade == []
    assert index.stat().st_mtime_ns == written  # nothing changed: not written again
    assert not hidden(tmp_path)


def test_a_crop_changed_after_the_first_start_is_checked_and_remade(tmp_path, monkeypatch):
    for stem in ('1', '2', '3'):
        write_frame(tmp_path, stem, centre=(300, 200))
    prepare_crops(tmp_path, workers=1)
    good = read_crop(tmp_path / ('2' + CROP_SUFFIX))
    (tmp_path / ('2' + CROP_SUFFIX)).write_bytes(b'garbage')
    asked, _ = spy_checks(monkeypatch)
    report = prepare_crops(tmp_path, workers=1)
    assert asked == ['2'] and report.remade == ['2' + CROP_SUFFIX]
    assert names(report.paths) == [f'{i}{CROP_SUFFIX}' for i in (1, 2, 3)]
    assert (read_crop(tmp_path / ('2' + CROP_SUFFIX)) == good).all()
    asked.clear()
    prepare_crops(tmp_path, workers=1)
    assert asked == []  # the remade crop went into the index


def test_a_new_frame_is_cropped_and_takes_its_place_in_the_order(tmp_path, monkeypatch):
    for stem in ('1', '2', '20'):
        write_frame(tmp_path, stem, centre=(300, 200))
    prepare_crops(tmp_path, workers=1)
    write_frame(tmp_path, '10', centre=(300, 200))
    asked, _ = spy_checks(monkeypatch)
    report = prepare_crops(tmp_path, workers=1)
    assert asked == ['10']
    assert names(report.paths) == [f'{i}{CROP_SUFFIX}' for i in (1, 2, 10, 20)]


def test_a_crop_whose_frame_was_deleted_is_still_used_and_then_indexed(tmp_path, monkeypatch):
    for stem in ('1', '4'):
        write_frame(tmp_path, stem)
    prepare_crops(tmp_path, workers=1)
    os.remove(tmp_path / '4.jpg')
    os.remove(tmp_path / '4.json')
    asked, _ = spy_checks(monkeypatch)
    second = prepare_crops(tmp_path, workers=1)
    third = prepare_crops(tmp_path, workers=1)
    assert asked == ['4']  # checked once, the frame being gone; vouched for on the third start
    for report in (second, third):
        assert names(report.paths) == ['1' + CROP_SUFFIX, '4' + CROP_SUFFIX] and report.skipped == {}


def test_stopping_at_max_num_indexes_what_it_saw(tmp_path, monkeypatch):
    for stem in ('1', '2', '3', '4'):
        write_frame(tmp_path, stem, centre=(300, 200))
    assert len(prepare_crops(tmp_path, max_num=2, workers=1).paths) == 2
    asked, _ = spy_checks(monkeypatch)
    assert names(prepare_crops(tmp_path, max_num=3, workers=1).paths) == [f'{i}{CROP_SUFFIX}' for i in (1, 2, 3)]
    assert names(prepare_crops(tmp_path, workers=1).paths) == [f'{i}{CROP_SUFFIX}' for i in (1, 2, 3, 4)]
    assert asked == ['3', '4']


def damage_index(index, damage, monkeypatch):
    if damage == 'garbage':
        index.write_bytes(os.urandom(300))
    elif damage == 'truncated':
        index.write_bytes(index.read_bytes()[:150])
    elif damage == 'empty':
        index.write_bytes(b'')
    elif damage == 'pickled':  # object arrays load only through pickle, which may run code: refused
        np.savez(index, version=unityeyes.BOX_VERSION, stems=np.array(['1'], object), files=np.zeros((1, 4), int))
    elif damage == 'wrong shape':
        np.savez(index, version=unityeyes.BOX_VERSION, stems=np.frombuffer(b'1\0', np.uint8),
                 files=np.zeros((3, 4), np.int64))
    elif damage == 'other crop rule':
        monkeypatch.setattr(unityeyes, 'BOX_VERSION', unityeyes.BOX_VERSION + 1)


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty', 'pickled', 'wrong shape', 'other crop rule'])
def test_a_damaged_or_stale_index_is_one_warning_and_made_again(tmp_path, monkeypatch, capsys, damage):
    for stem in ('1', '2', '3'):
        write_frame(tmp_path, stem, centre=(300, 200))
    prepare_crops(tmp_path, workers=1)
    index = tmp_path / unityeyes.INDEX_NAME
    damage_index(index, damage, monkeypatch)
    asked, _ = spy_checks(monkeypatch)
    capsys.readouterr()
    report = prepare_crops(tmp_path, workers=1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'[!] Ignoring the crop index {index} ('), lines
    assert asked == ['1', '2', '3'] and len(report.paths) == 3 and report.remade == []
    asked.clear()
    assert len(prepare_crops(tmp_path, workers=1).paths) == 3
    assert asked == [] and capsys.readouterr().out == ''  # made again, and good


def test_an_index_that_cannot_be_written_is_one_warning(tmp_path, monkeypatch, capsys):
    for stem in ('1', '2'):
        write_frame(tmp_path, stem, centre=(300, 200))
    prepare_crops(tmp_path, workers=1)
    (tmp_path / unityeyes.INDEX_NAME).unlink()  # as if the folder had turned read-only before one was written
    os.chmod(tmp_path, 0o555)
    if os.geteuid() == 0:  # root writes anyway: fail as on a read-only file system
        def read_only(path, write):
            raise OutputError(f'cannot write in {tmp_path}: Read-only file system')
        monkeypatch.setattr(unityeyes, 'atomic_write', read_only)
    try:
        capsys.readouterr()
        report = prepare_crops(tmp_path, workers=1)
    finally:
        os.chmod(tmp_path, 0o755)
    assert names(report.paths) == ['1' + CROP_SUFFIX, '2' + CROP_SUFFIX] and report.skipped == {}
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith('[!] Cannot write the crop index'), lines
    assert not (tmp_path / unityeyes.INDEX_NAME).exists() and not hidden(tmp_path)


def test_the_index_holds_arrays_not_objects(tmp_path):
    for stem in ('1', '2', '10'):
        write_frame(tmp_path, stem, centre=(300, 200))
    prepare_crops(tmp_path, workers=1)
    with np.load(tmp_path / unityeyes.INDEX_NAME) as index:  # allow_pickle=False: no object array in it
        assert index['stems'].tobytes() == b'1\x002\x0010\x00'
        assert index['files'].dtype == np.int64 and index['files'].shape == (3, 4)
        crop, jpg = os.stat(tmp_path / ('10' + CROP_SUFFIX)), os.stat(tmp_path / '10.jpg')
        assert list(index['files'][2]) == [crop.st_size, crop.st_mtime_ns, jpg.st_size, jpg.st_mtime_ns]


# ---------------------------------------------------------------- bad inputs

def make_bad_folder(directory, good_stems=('1', '5', '20')):
    """Valid frames good_stems plus one bad item of every kind; returns the expected skip report."""
    frame = textured_frame()
    for stem in good_stems:
        write_frame(directory, stem, frame=frame, centre=(250 + int(stem), 200))
    landmarks = unity_landmarks(eye_points(300, 200))

    def good_json(stem):
        write_json(directory, stem, {'interior_margin_2d': landmarks})

    def good_jpg(stem):
        Image.fromarray(frame).save(os.path.join(directory, f'{stem}.jpg'), quality=95)

    (directory / '2.jpg').write_bytes(b'')  # zero-byte jpg
    good_json('2')
    good_jpg('3')  # truncated jpg: header intact, scan data cut
    (directory / '3.jpg').write_bytes((directory / '3.jpg').read_bytes()[:3000])
    good_json('3')
    (directory / '4.jpg').write_text('this is a text file named .jpg')
    good_json('4')
    good_jpg('6')  # .jpg without .json
    good_json('7')  # .json without .jpg
    good_jpg('8')
    (directory / '8.json').write_text('{"interior_margin_2d": ["(1, 2, 3)",')  # invalid JSON
    good_jpg('9')
    (directory / '9.json').write_bytes(b'{"interior_margin_2d": ["(1\xff, 2)"]}')  # not UTF-8
    good_jpg('10')
    write_json(directory, '10', {'eye_details': {'look_vec': '(0, 0, -1, 0)'}})  # no interior_margin_2d
    good_jpg('11')
    write_json(directory, '11', {'interior_margin_2d': ['(1, 2, 3)', '(a, b, c)']})  # non-numeric
    good_jpg('12')
    write_json(directory, '12', {'interior_margin_2d': landmarks[:-1] + ["__import__('os').system('touch PWNED')"]})
    good_jpg('13')
    write_json(directory, '13', {'interior_margin_2d': []})
    good_jpg('14')
    write_json(directory, '14', {'interior_margin_2d': '(1, 2, 3)'})  # a string, not a list
    good_jpg('15')
    write_json(directory, '15', {'interior_margin_2d': ['(1)', '(2)']})  # one coordinate each
    good_jpg('16')
    write_json(directory, '16', {'interior_margin_2d': unity_landmarks(eye_points(900, 200))})  # right of frame
    good_jpg('17')
    write_json(directory, '17', {'interior_margin_2d': unity_landmarks([(-40, 100), (-5, 120)])})  # left
    good_jpg('18')
    write_json(directory, '18', {'interior_margin_2d': unity_landmarks(eye_points(300, -200))})  # above
    good_jpg('19')
    write_json(directory, '19', [{'interior_margin_2d': landmarks}])  # a list, not an object
    good_jpg('21')
    write_json(directory, '21', {'interior_margin_2d': ['(1e308, 1, 0)', '(1.7e308, 1, 0)']})
    good_jpg('22')
    write_json(directory, '22', {'interior_margin_2d': ['(nan, 1, 0)', '(2, 1, 0)']})
    good_jpg('23')
    write_json(directory, '23', {'interior_margin_2d': None})
    good_jpg('24')
    (directory / '24.json').write_text('')  # empty JSON file
    good_jpg('26')
    write_json(directory, '26', {'interior_margin_2d': ['(-10, 100, 0)', '(1.7e308, 120, 0)']})  # centre far out
    Image.fromarray(frame[:84, :140, 0]).save(directory / 'stray.png')  # a .png not named *_cropped.png
    Image.fromarray(frame[:84, :140, 0]).save(directory / '25_crop.png')
    (directory / 'notes.txt').write_text('not an image')
    (directory / 'imgs.zip').write_bytes(b'PK\x03\x04')
    (directory / '.hidden.jpg').write_bytes(b'')  # hidden files are ignored, like our temporary crops
    (directory / 'sub').mkdir()  # folders are ignored
    (directory / 'sub' / '99.jpg').write_bytes(b'')
    return {
        UNREADABLE: ['2.jpg', '3.jpg', '4.jpg'],
        NO_JSON: ['6.jpg'],
        NO_IMAGE: ['7.json'],
        BAD_JSON: ['8.json', '9.json', '24.json'],
        NO_LANDMARKS: ['10.json', '19.json', '23.json'],
        BAD_LANDMARKS: ['11.json', '12.json', '13.json', '14.json', '15.json', '22.json'],
        OUTSIDE: ['16.jpg', '17.jpg', '18.jpg', '21.jpg', '26.jpg'],
        NOT_A_CROP: ['25_crop.png', 'stray.png'],
    }


def test_every_bad_input_is_skipped_under_its_reason_and_every_good_one_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = make_bad_folder(tmp_path)
    report = prepare_crops(tmp_path, workers=1)
    assert names(report.paths) == ['1' + CROP_SUFFIX, '5' + CROP_SUFFIX, '20' + CROP_SUFFIX]
    assert {reason: sorted(files, key=natural_key) for reason, files in report.skipped.items()} == expected
    assert report.padded == [] and report.remade == []
    assert report.found == {'.jpg': 24, '.json': 24, 'crops': 0, 'other .png': 2}
    assert not (tmp_path / 'PWNED').exists()
    # No crop for any bad frame, no hidden temporary file left behind.
    made = sorted(n for n in os.listdir(tmp_path) if n.endswith(CROP_SUFFIX))
    assert made == ['1' + CROP_SUFFIX, '20' + CROP_SUFFIX, '5' + CROP_SUFFIX]
    assert hidden(tmp_path) == ['.hidden.jpg']  # the fixture's own
    for path in report.paths:
        read_crop(path)


def test_bad_inputs_are_skipped_again_on_the_next_run(tmp_path):
    expected = make_bad_folder(tmp_path)
    prepare_crops(tmp_path, workers=1)
    report = prepare_crops(tmp_path, workers=1)
    assert {reason: sorted(files, key=natural_key) for reason, files in report.skipped.items()} == expected
    assert len(report.paths) == 3


def test_an_unexpected_error_skips_one_frame_only(tmp_path, monkeypatch):
    write_frame(tmp_path, '1')
    write_frame(tmp_path, '2')
    real_save, real_save_image, writing = Image.Image.save, unityeyes.save_image, []

    def save_image(crop, path, **kwargs):
        writing[:] = [os.path.basename(path)]
        return real_save_image(crop, path, **kwargs)

    def failing_save(self, fp, *args, **kwargs):
        if writing == ['2' + CROP_SUFFIX]:  # fails while the hidden temporary file of crop 2 is open
            raise PermissionError('disk says no')
        return real_save(self, fp, *args, **kwargs)
    monkeypatch.setattr(unityeyes, 'save_image', save_image)
    monkeypatch.setattr(Image.Image, 'save', failing_save)
    report = prepare_crops(tmp_path, workers=1)
    assert report.paths == [str(tmp_path / ('1' + CROP_SUFFIX))]
    # utils.atomic_write turns the OSError into an OutputError after removing its temporary file.
    assert report.skipped == {f'{unityeyes.UNEXPECTED} (OutputError)': ['2.jpg']}
    assert not hidden(tmp_path)


# ---------------------------------------------------------------- parallel path

def strip(report):
    """A report with folder-independent names, to compare two runs."""
    return (names(report.paths), {k: sorted(v) for k, v in report.skipped.items()}, report.padded, report.remade,
            report.found)


def test_parallel_path_gives_the_same_report_and_crops_as_sequential(tmp_path, monkeypatch):
    sequential, parallel = tmp_path / 'seq', tmp_path / 'par'
    sequential.mkdir()
    make_bad_folder(sequential)
    frame = textured_frame(1)
    rng = np.random.default_rng(5)
    for i in range(30, 30 + unityeyes._PARALLEL_MIN):
        centre = (rng.integers(0, WIDTH), rng.integers(0, HEIGHT))
        write_frame(sequential, str(i), frame=frame, centre=centre)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(sequential / ('31' + CROP_SUFFIX))  # remade
    shutil.copytree(sequential, parallel)
    contexts = []
    real_get_context = multiprocessing.get_context

    def spy(method=None):
        contexts.append(method)
        return real_get_context(method)
    monkeypatch.setattr(multiprocessing, 'get_context', spy)

    one = prepare_crops(sequential, workers=1)
    assert contexts == []  # workers=1: no pool
    two = prepare_crops(parallel, workers=2)
    assert len(contexts) == 1  # workers=2 and enough items: a pool
    assert strip(one) == strip(two)
    assert len(one.paths) == 3 + unityeyes._PARALLEL_MIN
    assert one.padded and one.remade == ['31' + CROP_SUFFIX]
    for name in names(one.paths):
        assert (read_crop(sequential / name) == read_crop(parallel / name)).all()
    assert multiprocessing.active_children() == []


def test_parallel_path_respects_max_num_and_cleans_up(tmp_path):
    count = unityeyes._PARALLEL_MIN + 10
    source = tmp_path / 'source'
    source.mkdir()
    write_frame(source, '0', centre=(300, 200))
    for i in range(1, count):
        shutil.copy(source / '0.jpg', source / f'{i}.jpg')
        shutil.copy(source / '0.json', source / f'{i}.json')
    # Stopping early terminates workers that may be writing a crop; none may leave its temporary file.
    # (Before workers turned SIGTERM into SystemExit, about half of such runs left one behind.)
    for attempt in range(3):
        folder = shutil.copytree(source, tmp_path / f'run{attempt}')
        report = prepare_crops(folder, max_num=5, workers=2)
        assert names(report.paths) == [f'{i}{CROP_SUFFIX}' for i in range(5)]
        assert multiprocessing.active_children() == []
        assert not hidden(folder)
    full = prepare_crops(folder, workers=2)
    assert names(full.paths) == [f'{i}{CROP_SUFFIX}' for i in range(count)]
    assert not hidden(folder)
    for path in full.paths:
        read_crop(path)


def test_small_folders_stay_in_process_even_with_many_workers(tmp_path, monkeypatch):
    for stem in ('1', '2'):
        write_frame(tmp_path, stem)
    monkeypatch.setattr(multiprocessing, 'get_context',
                        lambda *a: pytest.fail('a pool for two frames'))
    assert len(prepare_crops(tmp_path, workers=8).paths) == 2

