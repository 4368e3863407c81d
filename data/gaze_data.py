"""Gaze data: UnityEyes crops (synthetic) and MPIIGaze eyes (real), as tf.data pipelines.

`load_gaze_data` finds the data, makes what is missing once (crops, the
MPIIGaze download and its `gaze.npz` cache, 100 real sample PNGs) and returns
a `GazeData`. `synthetic_dataset` and `real_dataset` turn it into batches in
[-1, 1]. Bad files are skipped with one summary line per kind of problem;
only when nothing usable is left is it a `DataError`.
"""
import http.client
import json
import os
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data import mpiigaze, unityeyes
from data.sample_data import write_sample
from layers import normalize
from utils import OutputError, save_image

MPIIGAZE_URL = "http://datasets.d2.mpi-inf.mpg.de/MPIIGaze/MPIIGaze.tar.gz"
DOWNLOAD_TIMEOUT_SECS = 60
NUM_REAL_SAMPLES = 100
SAMPLE_GAZE_DIR = Path(__file__).resolve().parent / "sample" / "gaze"  # the bundled sample, apart from real data
DEFAULT_FOLDERS = {"data_dir": "data", "synthetic_image_dir": "UnityEyes", "real_image_dir": "MPIIGaze"}
_SHOWN_NAMES = 3  # files named in a summary line; the rest are counted


class DataError(RuntimeError):
    """Data that cannot be used (missing folder, nothing valid, failed download); str(e) is one line."""


@dataclass
class GazeData:
    """Where the data is and what of it is used; real_* are empty when real images are not needed."""
    synthetic_paths: list        # `{i}_cropped.png`, natural order
    synthetic_dir: str
    real_images: np.ndarray      # (N, 36, 60) uint8
    real_gaze: np.ndarray        # (N, 3) float32, MPIIGaze's camera frame
    gaze_dir: str
    is_sample: bool              # the bundled sample, never mixed with real data


def load_gaze_data(config, load_real=True, download=True):
    """Find (or make) the synthetic crops and, if load_real, the real images; print what was left out."""
    gaze_dir = os.path.join(config.data_dir, "gaze")
    synthetic_dir = _find_synthetic_dir(config, gaze_dir)
    is_sample = synthetic_dir is None
    if is_sample:
        gaze_dir = str(SAMPLE_GAZE_DIR)
        synthetic_dir = _prepare_sample(gaze_dir, config)
    synthetic_paths = _load_synthetic(synthetic_dir, config.max_synthetic_num)
    real_images = np.zeros((0, *mpiigaze.IMAGE_SHAPE), np.uint8)
    real_gaze = np.zeros((0, 3), np.float32)
    if load_real:
        real_dir = os.path.join(gaze_dir, "MPIIGaze" if is_sample else config.real_image_dir)
        real_images, real_gaze = _load_real(gaze_dir, real_dir, download and not is_sample)
        _write_real_samples(real_images, os.path.join(gaze_dir, config.sample_dir), config.random_seed)
    return GazeData(synthetic_paths, synthetic_dir, real_images, real_gaze, gaze_dir, is_sample)


# ---- finding the data ----

def _uses_default_folders(config):
    return all(getattr(config, flag) == value for flag, value in DEFAULT_FOLDERS.items())


def _has_frames(directory):
    """True if directory holds a UnityEyes frame or crop (stops at the first one)."""
    with os.scandir(directory) as entries:
        return any(entry.name.endswith((".jpg", unityeyes.CROP_SUFFIX)) for entry in entries)


def _find_synthetic_dir(config, gaze_dir):
    """The UnityEyes folder: as given, then under DATA_DIR/gaze; None means use the bundled sample."""
    tried = [config.synthetic_image_dir, os.path.join(gaze_dir, config.synthetic_image_dir)]
    for candidate in dict.fromkeys(tried):  # dict: ordered and without duplicates
        if os.path.isdir(candidate) and _has_frames(candidate):
            return candidate
    if _uses_default_folders(config):
        return None
    raise DataError(f"no UnityEyes frames (*.jpg + *.json) in --synthetic_image_dir: tried "
                    f"{', '.join(dict.fromkeys(tried))}")


def _prepare_sample(gaze_dir, config):
    """Generate the bundled sample once; returns its UnityEyes folder."""
    synthetic_dir = os.path.join(gaze_dir, "UnityEyes")
    if not os.path.isdir(synthetic_dir):
        print(f"[*] No UnityEyes data in {os.path.join(config.data_dir, 'gaze', 'UnityEyes')}: generating the "
              f"bundled sample in {gaze_dir} (once). For real data see README.md, 'Real data'.")
        try:
            write_sample(gaze_dir, seed=config.random_seed)
        except OSError as error:
            raise OutputError(f"cannot write the bundled sample in {gaze_dir}: {error.strerror}") from None
    print(f"[*] Training on the bundled sample data in {gaze_dir}, not on real UnityEyes/MPIIGaze images")
    return synthetic_dir


# ---- synthetic: UnityEyes crops ----

def _load_synthetic(directory, max_num):
    report = unityeyes.prepare_crops(directory, max_num=max_num)
    _report_skipped(report.skipped, directory)
    if report.padded:
        _summary(f"Padded the crop of {len(report.padded)} frames whose eye is at the frame edge", report.padded)
    if report.remade:
        _summary(f"Remade {len(report.remade)} crops of the wrong size", report.remade)
    if not report.paths:
        found = ", ".join(f"{count} {kind}" for kind, count in report.found.items())
        raise DataError(f"no usable UnityEyes frame in {directory} (found {found or 'nothing'})")
    return report.paths


def read_look_vec(crop_path):
    """The gaze label `eye_details.look_vec` (x, y, z) of a crop's frame, in Unity's camera frame."""
    json_path = crop_path[: -len(unityeyes.CROP_SUFFIX)] + ".json"
    with open(json_path, "rb") as handle:
        look_vec = json.load(handle)["eye_details"]["look_vec"]
    return np.float32(unityeyes.parse_vector(look_vec)[:3])


# ---- real: MPIIGaze ----

def _load_real(gaze_dir, real_dir, download):
    """(images, gaze) from the gaze.npz cache, else from the .mat files (downloaded if missing)."""
    cache = os.path.join(gaze_dir, "gaze.npz")
    if os.path.exists(cache):
        try:
            return mpiigaze.load_cache(cache)
        except ValueError as error:
            print(f"[!] Rebuilding {cache}: {error}")
    day_files = mpiigaze.find_day_files(real_dir)
    if not day_files and download:
        fetch_mpiigaze(gaze_dir, real_dir)
        day_files = mpiigaze.find_day_files(real_dir)
    if not day_files:
        raise DataError(f"no MPIIGaze files {os.path.join(real_dir, 'Data', 'Normalized', 'pXX', 'dayYY.mat')}")
    images, gaze, skipped = mpiigaze.read_days(day_files, root=real_dir)
    _report_skipped(skipped, real_dir)
    if not len(images):
        raise DataError(f"no usable MPIIGaze file in {real_dir} ({len(day_files)} .mat files, all skipped)")
    try:
        mpiigaze.save_cache(cache, images, gaze)
    except OSError as error:
        print(f"[!] Cannot cache the real images in {cache} ({error.strerror}); they will be read again next run")
    return images, gaze


def _write_real_samples(real_images, sample_dir, seed):
    """100 random real images as SAMPLE_DIR/real_{i}.png, once, to see what the refiner aims for."""
    if os.path.exists(os.path.join(sample_dir, "real_0.png")):
        return
    os.makedirs(sample_dir, exist_ok=True)
    chosen = np.random.default_rng(seed).choice(len(real_images), min(NUM_REAL_SAMPLES, len(real_images)),
                                                 replace=False)
    for i, index in reversed(list(enumerate(chosen))):  # real_0 last: it marks the set complete
        save_image(real_images[index], os.path.join(sample_dir, f"real_{i}.png"))


def fetch_mpiigaze(gaze_dir, real_dir, url=MPIIGAZE_URL):
    """Download MPIIGaze and unpack it into gaze_dir; DataError (with what to do by hand) if it fails."""
    archive = os.path.join(gaze_dir, os.path.basename(url))
    try:
        os.makedirs(gaze_dir, exist_ok=True)
        if not os.path.exists(archive):
            download(url, archive)
        safe_extract(archive, gaze_dir)
    except DataError as error:
        raise DataError(f"{error}. Download {url} by hand and unpack it so that "
                        f"{os.path.join(real_dir, 'Data', 'Normalized', 'p00', 'day01.mat')} exists") from None
    os.remove(archive)


def download(url, path, timeout=DOWNLOAD_TIMEOUT_SECS):
    """Fetch url to path with a progress bar; the bytes land in path.part, renamed only once complete."""
    partial = path + ".part"
    try:
        received, expected = _fetch(url, partial, timeout)
        if expected is not None and received != expected:
            raise DataError(f"download of {url} stopped at {received} of {expected} bytes")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        if os.path.exists(partial):
            os.remove(partial)
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise DataError(f"cannot download {url} ({reason})") from None
    except DataError:
        os.remove(partial)
        raise
    os.replace(partial, path)


def _fetch(url, path, timeout):
    """Stream url into path; returns (bytes received, Content-Length or None)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as handle:
        expected = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=expected, unit="B", unit_scale=True, desc=f"Download {os.path.basename(url)}") as bar:
            while chunk := response.read(1 << 20):
                handle.write(chunk)
                bar.update(len(chunk))
    return os.path.getsize(path), expected


def safe_extract(archive, target):
    """Unpack a tar into target, refusing absolute paths, `..`, links leading out, and device files."""
    root = os.path.realpath(target)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, root)
            tar.extractall(root, members=members, filter="data")  # a second guard, by the standard library
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"cannot unpack {archive}: {error}") from None


def _check_member(member, root):
    def inside(path):
        resolved = os.path.realpath(os.path.join(root, path))
        return resolved == root or resolved.startswith(root + os.sep)

    name = member.name
    if os.path.isabs(name) or ".." in Path(name).parts or not inside(name):
        raise DataError(f"refusing archive member {name!r}: it points outside {root}")
    if member.isdev() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise DataError(f"refusing archive member {name!r}: not a regular file, folder or link")
    if member.issym() and not inside(os.path.join(os.path.dirname(name), member.linkname)):
        raise DataError(f"refusing archive member {name!r}: a link to {member.linkname!r} outside {root}")
    if member.islnk() and not inside(member.linkname):
        raise DataError(f"refusing archive member {name!r}: a hard link to {member.linkname!r} outside {root}")


# ---- reporting ----

def _summary(message, names):
    shown = ", ".join(str(name) for name in names[:_SHOWN_NAMES])
    more = f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
    print(f"[!] {message}: {shown}{more}")


def _report_skipped(skipped, directory):
    for reason, names in skipped.items():
        _summary(f"Skipped {len(names)} files in {directory} ({reason})", names)


# ---- tf.data pipelines ----

def _decode_crop(path, input_shape):
    """A crop file -> (H, W, C) float32 in [-1, 1] at the network's input size."""
    height, width, channels = input_shape
    image = tf.io.decode_png(tf.io.read_file(path), channels=channels)
    image = tf.image.resize(image, (height, width), antialias=True)
    return normalize(image)


def synthetic_dataset(paths, input_shape, batch_size, seed, training=True):
    """Synthetic crops in [-1, 1].

    training: shuffled with the seed, repeated, fixed-size batches (one trace of each step).
    Otherwise: sorted order, once, the last partial batch included, as (images, paths).
    """
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
    if training:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat()
        dataset = dataset.map(lambda path: _decode_crop(path, input_shape),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    dataset = dataset.map(lambda path: (_decode_crop(path, input_shape), path),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def resize_real(real_images, input_shape, chunk=4096):
    """(N, 36, 60) uint8 -> (N, H, W, C) uint8 at the network's input size, once, in chunks."""
    height, width, channels = input_shape
    resized = np.empty((len(real_images), height, width, channels), np.uint8)
    for start in range(0, len(real_images), chunk):
        images = tf.image.resize(real_images[start:start + chunk, :, :, None], (height, width), antialias=True)
        images = tf.image.grayscale_to_rgb(images) if channels == 3 else images
        resized[start:start + chunk] = np.clip(np.rint(images.numpy()), 0, 255).astype(np.uint8)
    return resized


def real_dataset(real_images, input_shape, batch_size, seed):
    """Real images in [-1, 1]: without replacement, reshuffled each epoch, fixed-size batches."""
    images = tf.constant(resize_real(real_images, input_shape))
    indices = tf.data.Dataset.range(len(real_images))
    indices = indices.shuffle(len(real_images), seed=seed, reshuffle_each_iteration=True).repeat()
    batches = indices.batch(batch_size, drop_remainder=True)
    return batches.map(lambda index: normalize(tf.cast(tf.gather(images, index), tf.float32)),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
