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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data import mpiigaze, unityeyes
from data.sample_data import write_sample
from layers import denormalize, normalize
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
    real_right_eye: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (N,) which are right eyes


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
    real_right_eye = np.zeros(0, bool)
    if load_real:
        real_dir = os.path.join(gaze_dir, "MPIIGaze" if is_sample else config.real_image_dir)
        real_images, real_gaze, real_right_eye = _load_real(gaze_dir, real_dir, download and not is_sample)
        _write_real_samples(real_images, os.path.join(gaze_dir, config.sample_dir), config.random_seed)
    return GazeData(synthetic_paths, synthetic_dir, real_images, real_gaze, gaze_dir, is_sample, real_right_eye)


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
        _summary(f"Padded the crop of {len(report.padded)} frames whose eye is at the frame edge",
                 report.padded, "[*]")
    if report.remade:
        _summary(f"Remade {len(report.remade)} crops of the wrong size", report.remade, "[*]")
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


# ---- gaze labels: one convention for both data sets ----

def look_vec_to_gaze(look_vec):
    """UnityEyes `look_vec` (..., 3 or 4) -> unit gaze vectors (..., 3) in MPIIGaze's normalised camera frame.

    The one label conversion of the project; every gaze vector it handles is in MPIIGaze's frame:
    x to the image right, y DOWN, z away from the camera (right-handed), the gaze pointing from the
    eye to the target, so looking into the camera is (0, 0, -1). UnityEyes writes `look_vec` in
    Unity's (left-handed) camera space: x to the image right, y UP, z away from the camera, looking
    into the camera (0, 0, -1) as well. Only y differs: (x, y, z) -> (x, -y, z). Both cameras look at
    the eye, so x needs no flip: a positive x moves the iris to the image right in both data sets
    (on the bundled sample the pupil's column follows look_vec x with r = 0.95 and MPIIGaze's gaze x
    with r = 0.99). UnityEyes' own visualize.py draws look_vec the same way (negating y only).
    """
    vectors = np.asarray(look_vec, np.float64)[..., :3] * np.array([1.0, -1.0, 1.0])
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise ValueError("look_vec must be finite and non-zero")
    return (vectors / norms).astype(np.float32)


def as_left_eyes(images, gaze, right_eye):
    """Mirror the right eyes into left eyes: images flipped left-right, gaze x negated; copies.

    MPIIGaze holds both eyes; UnityEyes renders one, laid out as a left eye (the inner corner on the
    image left). As Zhang et al. do for MPIIGaze, a right eye mirrored about the camera's vertical
    plane is a left eye whose gaze has the opposite x, so one estimator serves both eyes.
    """
    images, gaze, right_eye = np.array(images), np.array(gaze, np.float32), np.asarray(right_eye, bool)
    images[right_eye] = images[right_eye][:, :, ::-1]
    gaze[right_eye, 0] *= -1.0
    return images, gaze


def load_synthetic_gaze(paths):
    """(paths, gaze (N, 3) in MPIIGaze's frame) of the crops whose frame has a usable look_vec."""
    kept, gaze, skipped = [], [], []
    for path in paths:
        try:
            gaze.append(look_vec_to_gaze(read_look_vec(path)))
        except (OSError, ValueError, KeyError, TypeError):
            skipped.append(os.path.basename(path))
            continue
        kept.append(path)
    if skipped:
        _summary(f"Skipped {len(skipped)} crops without a usable eye_details.look_vec in their .json", skipped)
    if not kept:
        raise DataError(f"no UnityEyes crop with a gaze label (eye_details.look_vec) among {len(paths)}")
    return kept, np.stack(gaze)


def split_by_file(paths, validation_share, seed):
    """(training, validation) lists of paths: a seeded share of the files held out, at least one each."""
    order = np.random.default_rng(seed).permutation(len(paths))
    count = min(max(1, round(len(paths) * validation_share)), len(paths) - 1)
    held_out = set(order[:count].tolist())
    return ([path for i, path in enumerate(paths) if i not in held_out],
            [path for i, path in enumerate(paths) if i in held_out])


# ---- real: MPIIGaze ----

def _load_real(gaze_dir, real_dir, download):
    """(images, gaze, right_eye) from the gaze.npz cache, else from the .mat files (downloaded if missing)."""
    cache = os.path.join(gaze_dir, "gaze.npz")
    if os.path.exists(cache):
        try:
            return mpiigaze.load_cache_eyes(cache)
        except ValueError as error:
            print(f"[!] Rebuilding {cache}: {error}")
    day_files = mpiigaze.find_day_files(real_dir)
    if not day_files and download:
        fetch_mpiigaze(gaze_dir, real_dir)
        day_files = mpiigaze.find_day_files(real_dir)
    if not day_files:
        raise DataError(f"no MPIIGaze files {os.path.join(real_dir, 'Data', 'Normalized', 'pXX', 'dayYY.mat')}")
    images, gaze, right_eye, skipped = mpiigaze.read_days_eyes(day_files, root=real_dir)
    _report_skipped(skipped, real_dir)
    if not len(images):
        raise DataError(f"no usable MPIIGaze file in {real_dir} ({len(day_files)} .mat files, all skipped)")
    try:
        mpiigaze.save_cache(cache, images, gaze, right_eye)
    except OSError as error:
        print(f"[!] Cannot cache the real images in {cache} ({error.strerror}); they will be read again next run")
    return images, gaze, right_eye


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

def _summary(message, names, marker="[!]"):
    shown = ", ".join(str(name) for name in names[:_SHOWN_NAMES])
    more = f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
    print(f"{marker} {message}: {shown}{more}")


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


def load_crops(paths, input_shape, batch_size, refine=None, desc="Load synthetic images"):
    """Every crop once, in order, as uint8 (N, H, W, C) at the network's input size; refined first if refine.

    refine (a Keras model of [-1, 1] batches, the refiner) runs inside the tf.data pipeline, batch by
    batch. The result is quantised as test mode's PNGs are, so training on it equals training on
    refined images written to disk, without the disk.
    """
    dataset = synthetic_dataset(paths, input_shape, batch_size, 0, training=False)
    if refine is not None:
        def refine_batch(images, names):
            return refine(images, training=False), names
        dataset = dataset.map(refine_batch)
    loaded = np.empty((len(paths), *input_shape), np.uint8)
    start = 0
    for images, _ in tqdm(dataset, total=-(-len(paths) // batch_size), desc=desc):
        loaded[start:start + len(images)] = denormalize(images)
        start += len(images)
    return loaded


def labelled_dataset(images, gaze, batch_size, seed=None):
    """(images in [-1, 1], gaze) batches from uint8 images in memory.

    seed given: shuffled with it, reshuffled each epoch, repeated, fixed-size batches (one trace of
    the training step). seed None: in order, once, the last partial batch included.
    """
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(gaze, np.float32)))
    if seed is not None:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.batch(batch_size, drop_remainder=seed is not None)
    return dataset.map(lambda batch, labels: (normalize(tf.cast(batch, tf.float32)), labels),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
