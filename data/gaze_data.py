"""Gaze data: find (or make) UnityEyes crops and MPIIGaze eyes, and assemble what each task trains on.

`load_gaze_data` finds the data, makes what is missing once (crops, the MPIIGaze download and its
real images' cache, the bundled sample) and returns a `GazeData`; for the estimation task it also reads
the labels and holds out the validation files, so the flags can be checked against the split before
any network is built. `GazeData.estimation_sets` then hands the estimator its training, validation and
real images, refined first when a refiner is given. The labels and the crops at the estimator's input
size are cached beside the crops (data/estimation_cache.py): a second start reads no .json and cuts no
crop that did not change. Nothing of a data set's size is held in memory: the images stay in files
read a batch at a time. Bad files are skipped with one line per kind of problem; only when nothing
usable is left is it a `DataError`.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from config import apply_sample_schedule
from data import estimation_cache, mpiigaze, unityeyes
from data.data_set import DataSet, EstimationSets, LabelledHoldOut, held_out_indices
from data.download import fetch_mpiigaze
from data.gaze_labels import as_left_eyes, label_crops, pupil_positions, split_by_file
from data.gaze_sample import write_sample
from data.image_folder import is_image, is_plain_image_folder, readable_images
from data.npy_file import RowSubset
from data.pipelines import crops_on_disk, synthetic_dataset, to_network_input
from data.reports import DataError, report_skipped, summary
from data.sample_staging import use_bundled_sample
from utils import denormalize

SAMPLE_GAZE_DIR = Path(__file__).resolve().parent / "sample" / "gaze"  # the bundled sample, apart from real data
DEFAULT_FOLDERS = {"data_dir": "data", "synthetic_image_dir": "UnityEyes", "real_image_dir": "MPIIGaze"}
LOAD_BATCH = 128  # crops loaded (and refined) at once: bounds the refiner's activations in memory


@dataclass
class EstimationSplit:
    """The estimator's labelled synthetic crops, split by file: validation decides when to stop."""
    training_paths: list
    training_gaze: np.ndarray     # (N, 3) float32, MPIIGaze's camera frame
    validation_paths: list
    validation_gaze: np.ndarray
    paths: list = None            # every labelled crop (natural order): the rows of the estimator's crops cache
    training_rows: np.ndarray = None    # indices into paths
    validation_rows: np.ndarray = None


@dataclass
class GazeData(DataSet):
    """UnityEyes crops (image files) and MPIIGaze eyes (rows of a .npy); real_* are empty when not needed."""
    synthetic_paths: list        # `{i}_cropped.png`, natural order
    synthetic_dir: str
    folder: str                  # DATA_DIR/gaze, or the bundled sample's folder: the caches and temporary files
    is_sample: bool
    real_images: object          # (N, 36, 60) uint8, an NpyRows read from disk by row
    real_gaze: np.ndarray        # (N, 3) float32, MPIIGaze's camera frame
    real_right_eye: np.ndarray   # (N,) bool: which real images are right eyes
    split: EstimationSplit = None  # training the estimator only

    @property
    def synthetic_names(self):
        return self.synthetic_paths

    def synthetic_batches(self, input_shape, batch_size, seed, shard=(1, 0)):
        return synthetic_dataset(self.synthetic_paths, input_shape, batch_size, seed, shard=shard)

    def named_synthetic_batches(self, names, input_shape, batch_size):
        return synthetic_dataset(names, input_shape, batch_size, 0, training=False)

    def test_images(self, input_shape, count):
        return _decode(self.synthetic_paths[:count], input_shape)

    def hold_out(self, count, input_shape, seed):
        synthetic = _decode(self._take_out_synthetic(count, seed), input_shape)
        real, _, _ = self._take_out_real(count, seed + 1)
        return np.asarray(synthetic), np.asarray(to_network_input(real, input_shape))

    def hold_out_labelled(self, synthetic_count, real_count, input_shape, seed):
        held_paths = self._take_out_synthetic(synthetic_count, seed)
        try:  # a few files' labels, read directly: the labels index is the whole folder's
            paths, gaze = label_crops(held_paths)
        except DataError:
            return None
        rows, real_gaze = as_left_eyes(*self._take_out_real(real_count, seed + 1))
        return LabelledHoldOut(denormalize(_decode(paths, input_shape)), gaze,
                               denormalize(to_network_input(rows, input_shape)), real_gaze)

    def _take_out_synthetic(self, count, seed):
        """The paths of count crops chosen with seed, taken out of synthetic_paths."""
        held, kept = held_out_indices(len(self.synthetic_paths), count, seed)
        held_paths = [self.synthetic_paths[index] for index in held]
        self.synthetic_paths = [self.synthetic_paths[index] for index in kept]
        return held_paths

    def _take_out_real(self, count, seed):
        """(images, gaze, right_eye) of count real eyes chosen with seed, in memory, taken out of the real ones."""
        held, kept = held_out_indices(len(self.real_images), count, seed)
        taken = self.real_images[held], self.real_gaze[held], self.real_right_eye[held]
        self.real_images = RowSubset(self.real_images, kept)
        self.real_gaze, self.real_right_eye = self.real_gaze[kept], self.real_right_eye[kept]
        return taken

    def label_positions(self, pixels):
        return pupil_positions(pixels)

    @property
    def estimation_sizes(self):
        return None if self.split is None else (len(self.split.training_paths), len(self.split.validation_paths))

    def estimation_sets(self, input_shape, batch_size, refine=None):
        """The crops at the input size: from their cache beside the crops (cut once; data/estimation_cache.py),
        or, refined when refine is given, into temporary files beside the data at each start; the real eyes
        with their gaze, the right ones mirrored into left eyes batch by batch."""
        right_eye = self.real_right_eye

        def left_eyes(rows, labels, indices):
            return as_left_eyes(rows, labels, right_eye[indices])

        real, refined = (self.real_images, self.real_gaze), refine is not None
        facts = dict(is_sample=self.is_sample, right_eyes_mirrored=int(np.sum(right_eye)))
        if self.split is None:
            return EstimationSets(None, None, real, tuple(input_shape), refined, facts, left_eyes)
        split = self.split
        print(f"[*] {len(split.training_paths)} {'refined' if refined else 'synthetic'} images to train on, "
              f"{len(split.validation_paths)} to validate on (held out by file); {len(self.real_images)} real "
              f"images to test on")
        cached = None if refined or split.paths is None else estimation_cache.cached_rows(
            split.paths, tuple(input_shape), self.synthetic_dir, lambda paths: _cut(paths, input_shape),
            "UnityEyes crops")
        if cached is not None:
            training = (RowSubset(cached, split.training_rows), split.training_gaze)
            validation = (RowSubset(cached, split.validation_rows), split.validation_gaze)
            return EstimationSets(training, validation, real, tuple(input_shape), refined, facts, left_eyes)
        training, validation = (
            (crops_on_disk(paths, input_shape, LOAD_BATCH, self.folder, refine,
                           desc=f"{'Refine' if refined else 'Load'} {name} images"), gaze)
            for name, paths, gaze in (("training", split.training_paths, split.training_gaze),
                                      ("validation", split.validation_paths, split.validation_gaze)))
        return EstimationSets(training, validation, real, tuple(input_shape), refined, facts, left_eyes)


def _cut(paths, input_shape):
    """uint8 row batches (N, H, W, C) of the crops of paths at the input size, in order, as crops_on_disk makes them."""
    for images, _ in synthetic_dataset(paths, input_shape, LOAD_BATCH, None, training=False):
        yield denormalize(images).reshape(-1, *input_shape)


def _decode(paths, input_shape):
    """The crops of paths in [-1, 1], in one batch."""
    images, _ = next(iter(synthetic_dataset(paths, input_shape, len(paths), None, training=False)))
    return images


def load_gaze_data(config, download=True):
    """Find (or make) what this task and mode use; print what was left out."""
    gaze_dir = os.path.join(config.data_dir, "gaze")
    refining = not config.is_train and config.task == "generative"
    synthetic_dir = _find_synthetic_dir(config, gaze_dir, refining)
    is_sample = synthetic_dir is None
    if is_sample:
        gaze_dir = str(SAMPLE_GAZE_DIR)
        synthetic_dir = os.path.join(gaze_dir, "UnityEyes")
        use_bundled_sample(gaze_dir, os.path.isdir(synthetic_dir),
                           lambda folder: write_sample(folder, seed=config.random_seed),
                           f"UnityEyes data in {os.path.join(config.data_dir, 'gaze', 'UnityEyes')}",
                           "real UnityEyes/MPIIGaze images", "Real data")
        _announce_sample_schedule(apply_sample_schedule(config))
    if refining and is_plain_image_folder(synthetic_dir):
        synthetic_paths = _load_plain_images(synthetic_dir)
    else:
        synthetic_paths = _load_synthetic(synthetic_dir, config.max_synthetic_num)
    real = (np.zeros((0, *mpiigaze.IMAGE_SHAPE), np.uint8), np.zeros((0, 3), np.float32), np.zeros(0, bool))
    if config.is_train or config.task == "estimation":
        real_dir = os.path.join(gaze_dir, "MPIIGaze" if is_sample else config.real_image_dir)
        real = _load_real(gaze_dir, real_dir, download and not is_sample)
    data = GazeData(synthetic_paths, synthetic_dir, gaze_dir, is_sample, *real)
    if config.is_train and config.task == "estimation":
        data.split = _split(synthetic_paths, config.validation_share, config.random_seed, synthetic_dir)
    return data


def _announce_sample_schedule(chosen):
    if chosen:
        flags = " ".join(f"--{flag}={value}" for flag, value in chosen.items())
        print(f"[*] A schedule sized for the bundled sample, about 15 minutes on 2 cores: {flags} "
              f"(--sample_schedule=False: the original's defaults)")


def _split(synthetic_paths, validation_share, seed, index_dir=None):
    """The labelled crops split by file; index_dir: their folder, where their labels are indexed."""
    paths, gaze = label_crops(synthetic_paths, index_dir)
    training, validation = split_by_file(len(paths), validation_share, seed)
    return EstimationSplit([paths[i] for i in training], gaze[training],
                           [paths[i] for i in validation], gaze[validation], paths, training, validation)


# ---- finding the data ----

def _uses_default_folders(config):
    return all(getattr(config, flag) == value for flag, value in DEFAULT_FOLDERS.items())


def _has_frames(directory, any_image):
    """True if directory holds a UnityEyes frame or crop, or any_image and any image (stops at the first)."""
    with os.scandir(directory) as entries:
        return any(entry.name.endswith((".jpg", unityeyes.CROP_SUFFIX)) or (any_image and is_image(entry.name))
                   for entry in entries)


def _find_synthetic_dir(config, gaze_dir, any_image):
    """The UnityEyes folder (for test mode, any folder of images): as given, then under DATA_DIR/gaze.

    None means use the bundled sample.
    """
    tried = [config.synthetic_image_dir, os.path.join(gaze_dir, config.synthetic_image_dir)]
    for candidate in dict.fromkeys(tried):  # dict: ordered and without duplicates
        if os.path.isdir(candidate) and _has_frames(candidate, any_image):
            return candidate
    if _uses_default_folders(config):
        return None
    raise DataError(f"no UnityEyes frames (*.jpg + *.json) in --synthetic_image_dir: tried "
                    f"{', '.join(dict.fromkeys(tried))}")


def _load_synthetic(directory, max_num):
    report = unityeyes.prepare_crops(directory, max_num=max_num)
    report_skipped(report.skipped, directory)
    if report.padded:
        summary(f"Padded the crop of {len(report.padded)} frames whose eye is at the frame edge", report.padded, "[*]")
    if report.remade:
        summary(f"Remade {len(report.remade)} crops (damaged, of the wrong size, or cut by an earlier version with "
                f"the 640x480 box from a frame of another size)", report.remade, "[*]")
    if not report.paths:
        found = ", ".join(f"{count} {kind}" for kind, count in report.found.items())
        raise DataError(f"no usable UnityEyes frame in {directory} (found {found or 'nothing'})")
    return report.paths


def _load_plain_images(directory):
    """Test mode on a folder of eye images without UnityEyes JSON: every image that decodes."""
    paths, skipped = readable_images(directory)
    report_skipped(skipped, directory)
    if not paths:
        raise DataError(f"no readable image in {directory}")
    print(f"[*] Refining {len(paths)} eye images of {directory} (no UnityEyes JSON: each image as it is)")
    return paths


def _load_real(gaze_dir, real_dir, download):
    """(images, gaze, right_eye) from the cache in gaze_dir, made from the .mat files (downloaded if missing).

    images is read by row from disk (an NpyRows); only when the cache cannot be written are they in memory.
    """
    images_path, labels_path = mpiigaze.cache_files(gaze_dir)
    old_cache = os.path.join(gaze_dir, mpiigaze.OLD_CACHE)
    if not os.path.exists(labels_path) and os.path.exists(old_cache):
        print(f"[*] Converting {old_cache} (one file, loaded whole) to {os.path.basename(images_path)} and "
              f"{os.path.basename(labels_path)} (read a batch at a time), once")
        try:
            mpiigaze.convert_old_cache(old_cache, gaze_dir)
        except ValueError as error:
            print(f"[!] Cannot convert {old_cache} ({error}): reading the .mat files again")
        except OSError as error:
            print(f"[!] Cannot convert {old_cache} ({error}): reading it whole this run")
            return _load_old_cache(old_cache)
    if os.path.exists(labels_path):
        try:
            return mpiigaze.load_cache(gaze_dir)
        except ValueError as error:
            print(f"[!] Rebuilding the real images' cache in {gaze_dir}: {error}")
    day_files = mpiigaze.find_day_files(real_dir)
    if not day_files and download:
        fetch_mpiigaze(gaze_dir, real_dir)
        day_files = mpiigaze.find_day_files(real_dir)
    if not day_files:
        raise DataError(f"no MPIIGaze files {os.path.join(real_dir, 'Data', 'Normalized', 'pXX', 'dayYY.mat')}")
    try:
        count, skipped = mpiigaze.write_cache(gaze_dir, day_files, root=real_dir)
    except OSError as error:
        print(f"[!] Cannot cache the real images ({error}); they are read into memory, and again next run")
        images, gaze, right_eye, skipped = mpiigaze.read_days(day_files, root=real_dir)
        count, real = len(images), (images, gaze, right_eye)
    else:
        real = mpiigaze.load_cache(gaze_dir) if count else None
    report_skipped(skipped, real_dir)
    if not count:
        raise DataError(f"no usable MPIIGaze file in {real_dir} ({len(day_files)} .mat files, all skipped)")
    return real


def _load_old_cache(path):
    """(images, gaze, right_eye) of a gaze.npz of earlier versions, in memory: when it cannot be converted."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays["real"], arrays["gaze"].astype(np.float32), arrays["right_eye"].astype(bool)
    except Exception as error:  # a damaged file: BadZipFile, KeyError, OSError, ValueError
        raise DataError(f"cannot read {path} ({type(error).__name__}) nor write a new cache beside it") from None
