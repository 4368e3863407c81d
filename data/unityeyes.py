"""UnityEyes frames to eye crops: parse the landmarks, cut 140x84 around the eye, save a gray PNG.

Pure host code (numpy, Pillow, multiprocessing); no TensorFlow, so the worker
processes start light. `prepare_crops` is the entry point; it never raises for
a bad frame, it reports it in `CropReport.skipped` so the caller can print one
line per kind of problem.
"""
import json
import math
import os
import re
import signal
import sys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils import default_workers, process_context, save_image

CROP_WIDTH, CROP_HEIGHT = 140, 84
CROP_SUFFIX = '_cropped.png'
# The 140x84 box fits UnityEyes' default 640x480 frames. Unity's field of view is vertical, so the
# eye's size in pixels follows the frame's height: other frames get the box times height / 480.
REFERENCE_HEIGHT = 480
# PNG text of a crop cut from a frame of another height, so a crop cut there by the fixed box of
# earlier versions (no such text) is known to be stale and remade.
SCALED_BOX_KEY = 'unityeyes_box'

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
    parts = re.split(r'([0-9]+)', name)
    return [int(part) if i % 2 else part for i, part in enumerate(parts)]


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


def _scan(directory, report):
    """Tasks for every stem with a .jpg, .json or crop, in natural order; notes stray .png files."""
    jpgs, jsons, crops = set(), set(), set()
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith('.') or not entry.is_file():
                continue  # hidden files include our own temporary crops
            if name.endswith(CROP_SUFFIX):
                crops.add(name[:-len(CROP_SUFFIX)])
            elif name.endswith('.png'):
                report.skip(NOT_A_CROP, name)
            elif name.endswith('.jpg'):
                jpgs.add(name[:-4])
            elif name.endswith('.json'):
                jsons.add(name[:-5])
    report.found = {'.jpg': len(jpgs), '.json': len(jsons), 'crops': len(crops),
                    'other .png': len(report.skipped.get(NOT_A_CROP, []))}
    stems = sorted(jpgs | jsons | crops, key=natural_key)
    return [(directory, s, s in jpgs, s in jsons, s in crops) for s in stems]


def _exit_on_sigterm():
    """Pool initializer: Pool.terminate()'s SIGTERM becomes SystemExit, so a worker still removes its temporary crop."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))


def _results(tasks, workers, pool_holder):
    """process_item over tasks in order, in a process pool when it is worth it."""
    if workers <= 1 or len(tasks) < _PARALLEL_MIN:
        return map(process_item, tasks)
    pool = process_context().Pool(workers, initializer=_exit_on_sigterm)
    pool_holder.append(pool)
    chunk = max(1, min(256, len(tasks) // (workers * 8)))
    return pool.imap(process_item, tasks, chunksize=chunk)


def prepare_crops(directory, max_num=-1, workers=None):
    """Make the missing crops of a UnityEyes folder, check the existing ones; returns a CropReport."""
    directory = os.fspath(directory)
    report = CropReport()
    tasks = _scan(directory, report)
    pools = []
    try:
        results = _results(tasks, default_workers() if workers is None else workers, pools)
        for stem, reason, name, padded, remade in tqdm(
                results, total=len(tasks), desc='Prepare UnityEyes crops', unit='frame',
                disable=None if len(tasks) >= 1000 else True):
            if reason is not None:
                report.skip(reason, name)
                continue
            report.paths.append(os.path.join(directory, stem + CROP_SUFFIX))
            if padded:
                report.padded.append(stem + '.jpg')
            if remade:
                report.remade.append(stem + CROP_SUFFIX)
            if 0 < max_num <= len(report.paths):
                break  # stop early; tasks already handed out make crops no one waits for
    finally:
        for pool in pools:
            pool.terminate()
            pool.join()
    return report
