"""What every data set gives the rest of the program: the contract, written once.

A data set is a module of data/ with a loader, `load_..._data(config) -> DataSet`, named in
main.DATA_SETS beside its estimation task. The trainer draws `synthetic_batches` and `real_batches`
and refines `test_images` for its sample grids; test mode refines `named_synthetic_batches`; the
estimation task trains and evaluates on `estimation_sets`. Images stay on disk (image files, or rows
of .npy files read by index) and reach the networks a batch at a time, in [-1, 1] at the input size.
"""
import abc
import os
from dataclasses import dataclass, field

import numpy as np

from data.pipelines import array_batches


class DataSet(abc.ABC):
    """A loaded data set. Subclasses set the attributes and implement the abstract methods."""
    folder: str            # where the data and its caches live: DATA_DIR/<name>, or the bundled sample's folder
    synthetic_dir: str     # the synthetic images' folder: test mode never writes into it
    is_sample: bool        # the bundled sample, never mixed with real data
    real_images: object    # (N, H, W) uint8 rows read by index (an NpyRows on disk): what refined images aim for

    @property
    @abc.abstractmethod
    def synthetic_names(self):
        """What test mode names each synthetic image by (a path or a file name), in the data set's order."""

    @property
    def num_synthetic(self):
        return len(self.synthetic_names)

    def output_name(self, name):
        """Where test mode writes the refined image of synthetic image `name`, relative to OUTPUT_DIR/NAME:
        `{i}_cropped.png` -> `{i}_refined.png`, any other `{stem}.{ext}` -> `{stem}_refined.png`, so the
        refined image keeps its frame's number (and label)."""
        stem = os.path.basename(name)
        stem = stem[: -len("_cropped.png")] if stem.endswith("_cropped.png") else os.path.splitext(stem)[0]
        return f"{stem}_refined.png"

    @abc.abstractmethod
    def synthetic_batches(self, input_shape, batch_size, seed, shard=(1, 0)):
        """Synthetic images: shuffled with seed, reshuffled each epoch, repeated, fixed-size batches.

        shard: (input pipelines, this one's index): a worker of a cluster reads only its share.
        """

    def real_batches(self, input_shape, batch_size, seed, shard=(1, 0)):
        """Real images, as synthetic_batches."""
        return array_batches(self.real_images, input_shape, batch_size, seed, shard=shard)

    @abc.abstractmethod
    def named_synthetic_batches(self, names, input_shape, batch_size):
        """(images, names) of the synthetic images named, in order, once: what test mode refines."""

    @abc.abstractmethod
    def test_images(self, input_shape, count):
        """The first `count` synthetic images: the sample grids' fixed inputs."""

    @abc.abstractmethod
    def hold_out(self, count, input_shape, seed):
        """Take `count` synthetic and `count` real images, chosen with seed, out of what the training batches
        draw, for the probes (probes.py): (synthetic, real), each (count, H, W, C) in [-1, 1]."""

    def hold_out_labelled(self, synthetic_count, real_count, input_shape, seed):
        """Take up to synthetic_count synthetic and real_count real images with their labels out of what the
        training batches draw, for the estimation probe (estimation_probe.py): a LabelledHoldOut, or None for a
        data set whose real images have no labels. Images without a usable label are left out of it."""
        return None

    @abc.abstractmethod
    def label_positions(self, pixels):
        """(N, 2) (x, y) in pixels: where a cheap proxy of each uint8 image's label lies (the probes watch it);
        None for a data set without labels."""

    @property
    @abc.abstractmethod
    def estimation_sizes(self):
        """(training, validation or None) images of the estimation task, None when not training it: the
        flags are checked against them before any network is built."""

    @abc.abstractmethod
    def estimation_sets(self, input_shape, batch_size, refine=None):
        """The estimation task's EstimationSets; the training (and validation) images refined once, a batch
        at a time into temporary files, when refine (images -> refined images) is given."""


def held_out_indices(total, count, seed):
    """(held out, kept): sorted indices of count items of total chosen with seed, and of the others."""
    held = np.sort(np.random.default_rng(seed).choice(total, count, replace=False))
    return held, np.setdiff1d(np.arange(total), held)


@dataclass
class LabelledHoldOut:
    """Labelled images held out of training: uint8 (N, H, W, C) at the input size, labels as the estimator's."""
    synthetic: np.ndarray
    synthetic_labels: np.ndarray
    real: np.ndarray           # oriented as the estimator is evaluated (gaze: right eyes mirrored into left eyes)
    real_labels: np.ndarray


@dataclass
class EstimationSets:
    """An estimator's labelled sets: uint8 images at the input size read by row, with their labels."""
    training: tuple        # (images, labels); None when only evaluating
    validation: tuple      # (images, labels) held out to decide when to stop; None where a data set has no split
    test: tuple            # (real images, labels): only ever evaluated
    input_shape: tuple
    refined: bool          # the training images were refined
    facts: dict = field(default_factory=dict)  # what the evaluation records about the data (is_sample, ...)
    test_transform: object = None  # (rows, labels, indices) -> (rows, labels), applied to each test batch

    @property
    def label_shape(self):
        return tuple(self.test[1].shape[1:])

    def training_batches(self, batch_size, seed, shard=(1, 0)):
        """Shuffled with seed, repeated, fixed-size batches of (images, labels)."""
        images, labels = self.training
        return array_batches(images, self.input_shape, batch_size, seed, labels=labels, shard=shard)

    def validation_batches(self, batch_size):
        images, labels = self.validation
        return array_batches(images, self.input_shape, batch_size, labels=labels)

    def test_batches(self, batch_size):
        """Every test image once, in order."""
        images, labels = self.test
        return array_batches(images, self.input_shape, batch_size, labels=labels, transform=self.test_transform)
