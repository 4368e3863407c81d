"""UnityEyes frames to eye crops: parse the landmarks, cut 140x84 around the eye, save a gray PNG.

Pure host code (numpy, Pillow, multiprocessing); no TensorFlow, so the worker
processes start light. `prepare_crops` is the entry point; it never raises for
a bad frame, it reports it in `CropReport.skipped` so the caller can print one
line per kind of problem. An index beside the crops (INDEX_NAME) lets a later
start take the crops it vouches for without opening them.
"""
import json
import math
import os
import re
import signal
import sys
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, islice
from stat import S_ISREG

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils import atomic_write, save_image
from worker_processes import default_workers, worker_pool

CROP_WIDTH, CROP_HEIGHT = 140, 84
CROP_SUFFIX = '_cropped.png'
# The 140x84 box fits UnityEyes' default 640x480 frames. Unity's field of view is vertical, so the
# eye's size in pixels follows the frame's height: other frames get the box times height / 480.
REFERENCE_HEIGHT = 480
# PNG text of a crop cut from a frame of another height, so a crop cut there by the fixed box of
# earlier versions (no such text) is known to be stale and remade.
SCALED_BOX_KEY = 'unityeyes_box'
# The crops found valid or made, with the (size, mtime_ns) of each crop and of its frame then; a crop
# whose files still match is taken without opening anything. Hidden, so scans never take it for data.
INDEX_NAME = '.crops_index.npz'
BOX_VERSION = 1  # the crop rule's version: change it with the rule, and every crop is checked again

# Why a frame or crop was skipped; the caller prints one line per reason.
UNREADABLE = 'truncated or unreadable image'
NO_JSON = '.jpg without its .json'
NO_IMAGE = '.json without its .jpg'
BAD_JSON = 'invalid JSON'
NO_LANDMARKS = 'JSON without interior_margin_2d'
BAD_LANDMARKS = 'non-numeric or malformed interior_margin_2d'
OUTSIDE = 'eye box wholly outside the frame'
BAD_CROP = 'crop of the wrong size or unreadable, and no frame to remake it from'
NOT_A_CROP = '.png not named {i}_cropped.png'
UNEXPECTED = 'unexpected error'

_NUMBER = r'[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?'
# Unity writes vectors as "(x, y, z)"; the original passed them to Python's eval, which runs any code a JSON holds.
_VECTOR = re.compile(rf'\(\s*({_NUMBER}(?:\s*,\s*{_NUMBER})*)\s*\)')
_DIGITS = re.compile(r'([0-9]+)')
_PARALLEL_MIN = 64  # fewer items than this are not worth starting processes for


def parse_vector(text):
    """Numbers of a Unity vector string "(x, y, z)" (or a JSON list of numbers); ValueError otherwise."""
    try:
        if isinstance(text, list) and text and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in text):
            values = [float(v) for v in text]
        elif isinstance(text, str) and len(text) < 256 and (match := _VECTOR.fullmatch(text.strip())):
            values = [float(v) for v in match.group(1).split(',')]
        else:
            raise ValueError(f'not a vector of numbers: {str(text)[:60]!r}')
    except OverflowError as e:  # a JSON integer beyond float range
        raise ValueError('number out of range') from e
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f'not finite: {str(text)[:60]!r}')
    return values


def natural_key(name):
    """Sort key that puts '2' before '10'."""
    parts = _DIGITS.split(name)
    parts[1::2] = map(int, parts[1::2])
    return parts


def _natural_sorted(stems):
    """A set of stems sorted by natural_key; UnityEyes' all-digit stems by int, the same order 7 times faster."""
    joined = ''.join(stems)
    if joined.isascii() and joined.isdigit() and '' not in stems:
        return sorted(stems, key=int)
    return sorted(stems, key=natural_key)


@dataclass
class CropReport:
    """What `prepare_crops` found: the crops to use and every file it had to leave out."""
    paths: list = field(default_factory=list)      # usable crops, natural order
    skipped: dict = field(default_factory=dict)    # reason -> [file name, ...]
    padded: list = field(default_factory=list)     # frames whose eye box was padded
    remade: list = field(default_factory=list)     # crops made again: damaged, wrong size or stale box
    found: dict = field(default_factory=dict)      # '.jpg' / '.json' / 'crops' / '.png' -> count

    def skip(self, reason, name):
        self.skipped.setdefault(reason, []).append(name)


class _Skip(Exception):
    """One frame cannot be used; args = (reason, file name)."""


def _read_eye_box(json_path, frame_height):
    """(left, top, right, bottom) of the interior-margin landmarks' bounding box, in image coordinates."""
    name = os.path.basename(json_path)
    try:
        with open(json_path, 'rb') as f:
            info = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Skip(BAD_JSON, name) from e
    landmarks = info.get('interior_margin_2d') if isinstance(info, dict) else None
    if landmarks is None:
        raise _Skip(NO_LANDMARKS, name)
    try:
        if not isinstance(landmarks, list) or not landmarks:
            raise ValueError('not a list of landmarks')
        points = np.array([parse_vector(text)[:2] for text in landmarks])
        if points.shape[1] != 2:
            raise ValueError('landmark with one coordinate')
    except ValueError as e:
        raise _Skip(BAD_LANDMARKS, name) from e
    columns = points[:, 0]
    rows = frame_height - points[:, 1]  # Unity's y counts up from the bottom of the frame
    return columns.min(), rows.min(), columns.max(), rows.max()


def _crop_box(eye_box, size):
    """(left, top, right, bottom) of the crop around the eye box's centre; None if the eye is not in the frame.

    CROP_WIDTH x CROP_HEIGHT at 480 rows, scaled by the frame's height elsewhere (any aspect ratio).
    """
    width, height = size
    eye_left, eye_top, eye_right, eye_bottom = eye_box
    if eye_right < 0 or eye_bottom < 0 or eye_left > width or eye_top > height:
        return None  # a crop of padding and frame border, with no eye in it
    box_width = round(CROP_WIDTH * height / REFERENCE_HEIGHT)
    box_height = round(CROP_HEIGHT * height / REFERENCE_HEIGHT)
    # Halves first: (a + b) / 2 overflows to inf for coordinates near 1e308.
    left = math.floor(eye_left / 2 + eye_right / 2) - box_width // 2
    top = math.floor(eye_top / 2 + eye_bottom / 2) - box_height // 2
    right, bottom = left + box_width, top + box_height
    if right <= 0 or bottom <= 0 or left >= width or top >= height:
        return None  # a huge eye box can put its centre far outside
    return left, top, right, bottom


def _cut(frame, box):
    """The box of a gray frame (a PIL image), edge-padded where it leaves the frame; (crop image, padded)."""
    width, height = frame.size
    left, top, right, bottom = box
    # Only the crop goes through numpy: a copy of the whole frame costs as much as the PNG encoding.
    inside = frame.crop((max(left, 0), max(top, 0), min(right, width), min(bottom, height)))
    pad = ((max(-top, 0), max(bottom - height, 0)), (max(-left, 0), max(right - width, 0)))
    if not any(any(p) for p in pad):
        return inside, False
    # The original sliced without checking and crashed much later on a short crop.
    return Image.fromarray(np.pad(np.asarray(inside), pad, mode='edge')), True


def _frame_height(jpg_path):
    """The frame's height from its JPEG header (no decoding); None if it cannot be read."""
    try:
        with Image.open(jpg_path) as image:
            return image.size[1]
    except Exception:  # a missing or damaged frame: nothing to remake the crop from
        return None


def _crop_is_valid(path, jpg_path):
    """True if path is a readable PNG of the crop size, cut with the box its frame's height asks for.

    Checks the header and chunk CRCs only, no decoding; a crop without SCALED_BOX_KEY is valid when
    its frame is 480 rows high (or gone).
    """
    try:
        with Image.open(path) as image:
            size, scaled = image.size, SCALED_BOX_KEY in image.info
            image.verify()
    except Exception:  # Pillow raises many types for damaged files
        return False
    if size != (CROP_WIDTH, CROP_HEIGHT):
        return False
    return scaled or _frame_height(jpg_path) in (REFERENCE_HEIGHT, None)


def _make_crop(directory, stem):
    """Cut the eye of {stem}.jpg and save it atomically as {stem}_cropped.png; returns True if padded."""
    jpg_name = stem + '.jpg'
    try:
        image = Image.open(os.path.join(directory, jpg_name))
        frame_height = image.size[1]
    except Exception as e:
        raise _Skip(UNREADABLE, jpg_name) from e
    with image:
        eye_box = _read_eye_box(os.path.join(directory, stem + '.json'), frame_height)
        box = _crop_box(eye_box, image.size)
        if box is None:
            raise _Skip(OUTSIDE, jpg_name)
        try:
            image.draft('L', image.size)  # let libjpeg hand out luma directly: no RGB round trip
            image.load()  # decoding errors surface here, not in crop()
            crop, padded = _cut(image if image.mode == 'L' else image.convert('L'), box)
        except Exception as e:
            raise _Skip(UNREADABLE, jpg_name) from e
    text = None
    if crop.size != (CROP_WIDTH, CROP_HEIGHT):
        crop = crop.resize((CROP_WIDTH, CROP_HEIGHT), Image.BICUBIC)
        text = {SCALED_BOX_KEY: f'{",".join(map(str, box))} of a {image.size[0]}x{frame_height} frame'}
    # Written under a hidden temporary name and renamed: a crash never leaves half a crop.
    save_image(crop, os.path.join(directory, stem + CROP_SUFFIX), compress_level=1, text=text)
    return padded


def process_item(task):
    """Worker: make or check the crop of one stem; returns (stem, skip reason or None, file, padded, remade)."""
    directory, stem, has_jpg, has_json, has_crop = task
    crop_path, jpg_path = os.path.join(directory, stem + CROP_SUFFIX), os.path.join(directory, stem + '.jpg')
    if has_crop and _crop_is_valid(crop_path, jpg_path):
        return stem, None, None, False, False
    remade = has_crop
    if not (has_jpg and has_json):
        if has_crop:
            return stem, BAD_CROP, stem + CROP_SUFFIX, False, False
        return (stem, NO_JSON, stem + '.jpg', False, False) if has_jpg else (
            stem, NO_IMAGE, stem + '.json', False, False)
    try:
        padded = _make_crop(directory, stem)
    except _Skip as skip:
        return (stem, *skip.args, False, False)
    except Exception as e:  # one odd file must not stop a run over a million frames
        return stem, f'{UNEXPECTED} ({type(e).__name__})', stem + '.jpg', False, False
    return stem, None, None, padded, remade


class _Stats:
    """The stems of one kind of file the scan found, with each file's size and mtime_ns."""

    def __init__(self):
        self.stems, self.values = [], array('q')  # values: size, mtime_ns, size, ... (no object per file)

    def add(self, stem, entry):
        try:
            stat = entry.stat()
        except OSError:  # gone since the listing
            return
        if not S_ISREG(stat.st_mode):
            return  # a folder named like a frame, say
        self.stems.append(stem)
        self.values.extend((stat.st_size, stat.st_mtime_ns))

    def aligned(self, position):
        """(size, mtime_ns) rows in the order of position ({stem: row}); -1 where there is no such file."""
        rows = np.full((len(position), 2), -1, np.int64)
        if self.stems:
            rows[np.fromiter(map(position.__getitem__, self.stems), np.int64, len(self.stems))] = (
                np.frombuffer(self.values, np.int64).reshape(-1, 2))
        return rows


@dataclass
class _Listing:
    """A folder's stems in natural order and their files."""
    stems: list
    position: dict        # stem -> row
    files: np.ndarray     # (stems, 4) int64: crop size, crop mtime_ns, .jpg size, .jpg mtime_ns; -1: no such file
    has_json: np.ndarray  # (stems,) bool


def _list(directory, report):
    """The folder's crops and frames (with sizes and mtimes) and JSON stems; notes stray .png files."""
    crops, jpgs, jsons = _Stats(), _Stats(), []
    with os.scandir(directory) as entries, tqdm(desc='Scan UnityEyes folder', unit=' files', delay=2,
                                                disable=None) as progress:
        # In chunks: a progress step per file would cost as much as the listing itself.
        for chunk in iter(lambda: list(islice(entries, 10000)), []):
            progress.update(len(chunk))
            for entry in chunk:
                name = entry.name
                if name.startswith('.'):
                    continue  # hidden files include our own temporary crops and the index
                if name.endswith('.json'):
                    if entry.is_file():
                        jsons.append(name[:-5])
                elif name.endswith('.jpg'):
                    jpgs.add(name[:-4], entry)
                elif name.endswith(CROP_SUFFIX):
                    crops.add(name[:-len(CROP_SUFFIX)], entry)
                elif name.endswith('.png') and entry.is_file():
                    report.skip(NOT_A_CROP, name)
    return crops, jpgs, jsons


def _scan(directory, report):
    """Every stem with a .jpg, .json or crop, in natural order, with its files' sizes and mtimes."""
    crops, jpgs, jsons = _list(directory, report)
    report.found = {'.jpg': len(jpgs.stems), '.json': len(jsons), 'crops': len(crops.stems),
                    'other .png': len(report.skipped.get(NOT_A_CROP, []))}
    # Seconds for a million frames: a bar by steps, shown when it is that slow.
    with tqdm(total=3, desc='Order UnityEyes frames', unit='step', delay=2, disable=None) as progress:
        stems = _natural_sorted(set(jpgs.stems).union(crops.stems, jsons))
        progress.update()
        position = dict(zip(stems, range(len(stems))))
        has_json = np.zeros(len(stems), bool)
        has_json[list(map(position.__getitem__, jsons))] = True
        progress.update()
        files = np.concatenate([crops.aligned(position), jpgs.aligned(position)], axis=1)
        progress.update()
    return _Listing(stems, position, files, has_json)


def _read_index(directory, listing):
    """The index's files in the listing's rows (-2, which matches nothing, where it has none) and its length."""
    indexed = np.full(listing.files.shape, -2, np.int64)
    path = os.path.join(directory, INDEX_NAME)
    try:
        with np.load(path) as index:
            version, names, files = int(index['version']), index['stems'], index['files']
        if version != BOX_VERSION:
            raise ValueError(f'made for crop rule {version}, not {BOX_VERSION}')
        stems = names.tobytes().decode('utf-8', 'surrogateescape').split('\0')[:-1]
        if files.dtype != np.int64 or files.shape != (len(stems), 4):
            raise ValueError(f'{len(stems)} stems but files of {files.dtype} {files.shape}')
    except FileNotFoundError:
        return indexed, 0
    except Exception as error:  # a damaged file raises many types (zipfile, numpy, a refused pickle, ...)
        print(f'[!] Ignoring the crop index {path} ({type(error).__name__}: {error}): checking every crop '
              f'and writing it again')
        return indexed, 0
    if stems == listing.stems:  # the folder holds what it held: no look-up needed
        return files, len(stems)
    rows = np.fromiter((listing.position.get(stem, -1) for stem in stems), np.int64, len(stems))
    indexed[rows[rows >= 0]] = files[rows >= 0]
    return indexed, len(stems)


def _write_index(directory, listing, vouched, checked):
    """Index the crops vouched for or checked (those re-read from disk: they may be new); a failure is one line."""
    for row in np.flatnonzero(checked):
        try:
            stat = os.stat(os.path.join(directory, listing.stems[row] + CROP_SUFFIX))
            listing.files[row, :2] = stat.st_size, stat.st_mtime_ns
        except OSError:
            checked[row] = False  # gone already: left out, so the next start looks at it again
    rows = np.flatnonzero(vouched | checked)
    names = '\0'.join([*(listing.stems[row] for row in rows), ''])  # NUL-terminated: no file name holds NUL
    stems = np.frombuffer(names.encode('utf-8', 'surrogateescape'), np.uint8)
    path = os.path.join(directory, INDEX_NAME)
    try:
        atomic_write(path, lambda handle: np.savez(handle, version=np.int64(BOX_VERSION), stems=stems,
                                                   files=listing.files[rows]))
    except OSError as error:
        print(f'[!] Cannot write the crop index {path} ({error}): every crop is checked again next start')


def _exit_on_sigterm():
    """Pool initializer: Pool.terminate()'s SIGTERM becomes SystemExit, so a worker still removes its temporary crop."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))


def _tasks(directory, listing, rows):
    """process_item's tasks for these rows of the listing."""
    has_crop, has_jpg = (listing.files[:, 0] >= 0).tolist(), (listing.files[:, 2] >= 0).tolist()
    has_json = listing.has_json.tolist()
    return [(directory, listing.stems[row], has_jpg[row], has_json[row], has_crop[row]) for row in rows]


@contextmanager
def _results(tasks, workers):
    """process_item over tasks in order, in a process pool when it is worth it; leaving early stops the pool."""
    if workers <= 1 or len(tasks) < _PARALLEL_MIN:
        yield map(process_item, tasks)
        return
    with worker_pool(workers, initializer=_exit_on_sigterm) as pool:
        yield pool.imap(process_item, tasks, chunksize=max(1, min(256, len(tasks) // (workers * 8))))


def _take(report, prefix, stems, max_num):
    """Add the crops of stems the index vouches for, up to max_num crops in all; True when that many are in."""
    if max_num > 0:
        stems = stems[:max(0, max_num - len(report.paths))]
    report.paths.extend([prefix + stem + CROP_SUFFIX for stem in stems])
    return 0 < max_num <= len(report.paths)


def _add(report, prefix, result):
    """Note one result of process_item in the report; True if its crop is usable."""
    stem, reason, name, padded, remade = result
    if reason is not None:
        report.skip(reason, name)
        return False
    report.paths.append(prefix + stem + CROP_SUFFIX)
    if padded:
        report.padded.append(stem + '.jpg')
    if remade:
        report.remade.append(stem + CROP_SUFFIX)
    return True


def _collect(report, prefix, stems, task_rows, results, max_num):
    """Fill the report in natural order: the index's stems in bulk, the others from their task's result.

    Returns which rows' crops were checked or made now, and are usable. Stops at max_num crops.
    """
    checked = np.zeros(len(stems), bool)
    with tqdm(total=len(stems), desc='Prepare UnityEyes crops', unit='frame',
              disable=None if len(stems) >= 1000 else True) as bar:
        done = 0  # rows before this one are in the report
        # The last (row, result), (len(stems), None), takes the rows after the last task.
        for row, result in zip([*task_rows, len(stems)], chain(results, [None])):
            full = _take(report, prefix, stems[done:row], max_num)  # rows between tasks: the index's
            bar.update(row - done)
            if full or result is None:
                break
            checked[row] = _add(report, prefix, result)
            bar.update()
            done = row + 1
            if 0 < max_num <= len(report.paths):
                break  # stop early; tasks already handed out make crops no one waits for
    return checked


def prepare_crops(directory, max_num=-1, workers=None):
    """Make the missing crops of a UnityEyes folder, check the existing ones; returns a CropReport.

    A crop whose file and frame have the size and mtime the index noted is taken unopened.
    """
    directory = os.fspath(directory)
    report = CropReport()
    listing = _scan(directory, report)
    indexed, index_length = _read_index(directory, listing)
    vouched = (listing.files == indexed).all(axis=1) & (listing.files[:, 0] >= 0)
    task_rows = np.flatnonzero(~vouched).tolist()
    tasks = _tasks(directory, listing, task_rows)
    with _results(tasks, default_workers() if workers is None else workers) as results:
        checked = _collect(report, os.path.join(directory, ''), listing.stems, task_rows, results, max_num)
    if checked.any() or vouched.sum() != index_length:
        _write_index(directory, listing, vouched, checked)
    return report
