"""MPIIGaze normalized eye images: read the dayYY.mat files, both eyes, into a cache read by row.

The cache is `mpiigaze_images.npy` (N x 36 x 60 uint8, read a batch at a time, never whole) and
`mpiigaze_labels.npz` (gaze, and which image is a right eye, so evaluation can mirror them into left
eyes). Earlier versions kept everything in one `gaze.npz`, loaded whole; it is converted once.

Pure host code (numpy, SciPy). A bad .mat is never fatal here: `read_days`
reports it in its `skipped` dict so the caller can print one line per kind.
"""
import os
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
from tqdm import tqdm

from data.npy_file import npz_member_rows, read_rows, write_rows
from data.unityeyes import natural_key
from utils import atomic_write

IMAGE_SHAPE = (36, 60)  # height x width of MPIIGaze's normalized eye images
CACHE_IMAGES, CACHE_LABELS = 'mpiigaze_images.npy', 'mpiigaze_labels.npz'
OLD_CACHE = 'gaze.npz'

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


def iter_days(paths, skipped, root=None):
    """(images, gaze, right_eye) of each usable file in turn, with a progress bar; bad files go into skipped."""
    for path in tqdm(paths, desc='Read MPIIGaze .mat files', unit='file', disable=None if len(paths) >= 20 else True):
        try:
            yield read_day(path)
        except BadMat as e:
            name = os.path.relpath(path, root) if root else os.path.basename(path)
            skipped.setdefault(str(e), []).append(name)


def read_days(paths, root=None):
    """Stack every usable file in memory: (images, gaze, right_eye, skipped), skipped = {reason: [file, ...]}."""
    skipped = {}
    days = list(iter_days(paths, skipped, root))
    if not days:
        return np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros((0, 3), np.float32), np.zeros(0, bool), skipped
    images, gaze, right_eye = (np.concatenate(parts) for parts in zip(*days))
    return images, gaze, right_eye, skipped


# ---- the cache: the images as a .npy read by row, the labels beside them ----

def cache_files(folder):
    """(images .npy, labels .npz) of the cache in folder; the labels are written last and mark it complete."""
    return os.path.join(folder, CACHE_IMAGES), os.path.join(folder, CACHE_LABELS)


def write_cache(folder, paths, root=None):
    """Read the .mat files into the cache one day at a time; returns (images written, skipped).

    Only a day's images are in memory at once: 427,318 eyes are 0.9 GB. OutputError if it cannot be
    written; nothing is left under the cache's names then.
    """
    images_path, labels_path = cache_files(folder)
    skipped, gaze, right_eye = {}, [], []

    def day_images():
        for day_images, day_gaze, day_right_eye in iter_days(paths, skipped, root):
            gaze.append(day_gaze)
            right_eye.append(day_right_eye)
            yield day_images

    count = write_rows(images_path, IMAGE_SHAPE, np.uint8, day_images())
    if count:
        _write_labels(labels_path, np.concatenate(gaze), np.concatenate(right_eye))
    else:
        os.remove(images_path)
    return count, skipped


def _write_labels(path, gaze, right_eye):
    arrays = dict(gaze=np.asarray(gaze, np.float32), right_eye=np.asarray(right_eye, bool))
    atomic_write(os.fspath(path), lambda handle: np.savez(handle, **arrays))  # a handle: savez adds no .npz


def load_cache(folder):
    """(images as NpyRows, gaze, right_eye) of the cache in folder; ValueError with the reason if it is damaged."""
    images_path, labels_path = cache_files(folder)
    try:
        with np.load(labels_path, allow_pickle=False) as labels:
            gaze, right_eye = labels['gaze'], labels['right_eye']
    except KeyError as e:
        raise ValueError(f'{CACHE_LABELS} lacks {e}') from None
    except Exception as e:  # BadZipFile, EOFError, OSError, ValueError: a damaged file
        raise ValueError(f'{CACHE_LABELS} unreadable ({type(e).__name__})') from None
    images = read_rows(images_path)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE or not len(images):
        raise ValueError(f'{CACHE_IMAGES} holds {images.dtype} {images.shape}, not N x {IMAGE_SHAPE} uint8')
    if gaze.shape != (len(images), 3) or gaze.dtype.kind != 'f' or right_eye.shape != (len(images),):
        raise ValueError(f'labels of {gaze.shape} / {right_eye.shape} for {len(images)} images')
    return images, gaze.astype(np.float32), right_eye.astype(bool)


def convert_old_cache(old_path, folder):
    """Rewrite a gaze.npz of earlier versions as the cache in folder, a chunk of rows at a time; then remove it.

    ValueError if it is not a complete cache of that format (it is then left as it is).
    """
    try:
        with np.load(old_path, allow_pickle=False) as arrays:
            gaze, right_eye = arrays['gaze'], arrays['right_eye']  # small: only the images are streamed
    except (KeyError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f'not a complete cache ({type(e).__name__})') from None
    images_path, labels_path = cache_files(folder)
    try:
        shape, dtype, rows = npz_member_rows(old_path, 'real', 4096, 'Convert gaze.npz')
    except ValueError:
        # Images saved straight from loadmat's column-major arrays have no rows to stream: read whole, once.
        shape, dtype, rows = _whole_old_images(old_path)
    if dtype != np.uint8 or shape[1:] != IMAGE_SHAPE or gaze.shape != (shape[0], 3):
        raise ValueError(f'real {dtype} {shape}, gaze {gaze.shape}')
    write_rows(images_path, IMAGE_SHAPE, np.uint8, rows)
    _write_labels(labels_path, gaze, right_eye)
    os.remove(old_path)


def _whole_old_images(old_path):
    try:
        with np.load(old_path, allow_pickle=False) as arrays:
            images = arrays['real']
    except (KeyError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f'not a complete cache ({type(e).__name__})') from None
    return images.shape, images.dtype, [images]
