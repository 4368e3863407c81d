"""MPIIGaze normalized eye images: read the dayYY.mat files, stack both eyes, cache as gaze.npz.

The cache keeps which image is a right eye (`right_eye`), so evaluation can mirror them into left eyes.

Pure host code (numpy, SciPy). A bad .mat is never fatal here: `read_days`
reports it in its `skipped` dict so the caller can print one line per kind.
"""
import os
from pathlib import Path

import numpy as np
import scipy.io

from data.unityeyes import natural_key
from utils import atomic_write

IMAGE_SHAPE = (36, 60)  # height x width of MPIIGaze's normalized eye images

UNREADABLE = 'truncated or unreadable .mat'
NO_DATA = 'no struct named data'
MISSING_FIELDS = 'missing data.left/right.image/gaze'
BAD_SHAPE = f'images not N x {IMAGE_SHAPE[0]} x {IMAGE_SHAPE[1]} or gaze not N x 3 numbers'
BAD_VALUES = 'NaN or infinite gaze, or image values outside 0..255'


class BadMat(Exception):
    """One .mat file cannot be used; str(e) is the reason."""


def find_day_files(real_dir):
    """Every real_dir/Data/Normalized/pXX/dayYY.mat, in natural order."""
    root = Path(real_dir) / 'Data' / 'Normalized'
    return sorted(root.glob('*/*.mat'), key=lambda p: natural_key(str(p.relative_to(root))))


def _as_batch(array, sample_ndim, kinds):
    """array with a leading N axis: loadmat's squeeze_me drops it for a day with one sample."""
    array = np.asarray(array)
    if array.dtype.kind not in kinds:
        raise BadMat(BAD_SHAPE)
    return array[None] if array.ndim == sample_ndim else array


def _eye(data, side):
    """(images (N, 36, 60) uint8, gaze (N, 3) float32) of data.<side>, read by field name."""
    eye = getattr(data, side, None)
    image, gaze = getattr(eye, 'image', None), getattr(eye, 'gaze', None)
    if image is None or gaze is None:
        raise BadMat(MISSING_FIELDS)
    if np.size(image) == 0 and np.size(gaze) == 0:  # no samples; loadmat's squeeze_me makes both shape (0,)
        return np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros((0, 3), np.float32)
    image = _as_batch(image, 2, 'uif')
    gaze = _as_batch(gaze, 1, 'if').astype(np.float32)
    if image.ndim != 3 or image.shape[1:] != IMAGE_SHAPE or gaze.shape != (len(image), 3):
        raise BadMat(BAD_SHAPE)
    if image.dtype != np.uint8:
        # Images saved as doubles are still fine when they hold 0..255.
        if not (np.isfinite(image).all() and image.min(initial=0) >= 0 and image.max(initial=0) <= 255):
            raise BadMat(BAD_VALUES)
        image = np.round(image).astype(np.uint8)
    if not np.isfinite(gaze).all():
        raise BadMat(BAD_VALUES)
    return image, gaze


def read_day(path):
    """(images, gaze, right_eye) of both eyes of one dayYY.mat, left then right; right_eye (N,) bool."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # SciPy raises ValueError, TypeError, OSError, ... for damaged files
        raise BadMat(UNREADABLE) from e
    if 'data' not in mat:
        raise BadMat(NO_DATA)
    left_images, left_gaze = _eye(mat['data'], 'left')
    right_images, right_gaze = _eye(mat['data'], 'right')
    right_eye = np.concatenate([np.zeros(len(left_images), bool), np.ones(len(right_images), bool)])
    return np.concatenate([left_images, right_images]), np.concatenate([left_gaze, right_gaze]), right_eye


def read_days(paths, root=None):
    """Stack every usable file: (images, gaze, right_eye, skipped) with skipped = {reason: [file, ...]}."""
    images, gaze, right_eye, skipped = [], [], [], {}
    for path in paths:
        try:
            day_images, day_gaze, day_right_eye = read_day(path)
        except BadMat as e:
            name = os.path.relpath(path, root) if root else os.path.basename(path)
            skipped.setdefault(str(e), []).append(name)
            continue
        images.append(day_images)
        gaze.append(day_gaze)
        right_eye.append(day_right_eye)
    if not images:
        return np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros((0, 3), np.float32), np.zeros(0, bool), skipped
    return np.concatenate(images), np.concatenate(gaze), np.concatenate(right_eye), skipped


def load_cache(path):
    """(images, gaze, right_eye) from a gaze.npz cache; ValueError with the reason if it is old or damaged."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            files = sorted(cache.files)
            images = cache['real'] if 'real' in files else None
            gaze = cache['gaze'] if 'gaze' in files else None
            right_eye = cache['right_eye'] if 'right_eye' in files else None
    except Exception as e:  # BadZipFile, EOFError, OSError, ValueError: a damaged file
        raise ValueError(f'unreadable ({type(e).__name__})') from e
    if images is None or gaze is None or right_eye is None:
        raise ValueError(f'it holds {files}, not real, gaze and right_eye (an older cache)')
    if (images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE
            or not len(images) or gaze.shape != (len(images), 3) or gaze.dtype.kind != 'f'):
        raise ValueError(f'unexpected shapes real {images.shape}, gaze {gaze.shape}')
    if right_eye.dtype != bool or right_eye.shape != (len(images),):
        raise ValueError(f'unexpected right_eye {right_eye.dtype} {right_eye.shape}')
    return images, gaze.astype(np.float32), right_eye


def save_cache(path, images, gaze, right_eye):
    """Write gaze.npz atomically (keys real, gaze, right_eye) so an interrupted run never leaves half a cache."""
    arrays = dict(real=images, gaze=gaze, right_eye=np.asarray(right_eye, bool))
    atomic_write(os.fspath(path), lambda handle: np.savez(handle, **arrays))  # a handle: savez adds no .npz
