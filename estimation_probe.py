"""The estimation probe: are the refined images better training data? Measured while the refiner trains.

Where the real images have labels (gaze: MPIIGaze's gaze; hand: NYU's joints), every
--estimation_probe_step refiner steps the trainer refines a fixed held-out set of labelled synthetic
images, trains SEEDS small estimators on them from scratch, briefly, with their synthetic labels, and
writes their mean error on a held-out set of labelled real images as `probe/estimation_error` (degrees,
pixels: the estimation task's unit). The same estimators trained once on the unrefined images are the
mark (`probe/estimation_error_synthetic`). Every probe starts from the same seeded weights and sees
the same batches in the same order, so two probes differ only in the refined images.

It is the estimation task (`--task=estimation`) in miniature: TRAINING_STEPS steps of BATCH images,
the paper's gaze estimator or a one-stack hourglass of HAND_FILTERS channels, no validation split.
README, 'Keeping the best refiner', gives its cost and how well it ranks refiners against the full task.
"""
import types

import keras
import numpy as np
import tensorflow as tf

from config import DATA_SET_DEFAULTS
from training_loop import minimize
from utils import denormalize, normalize

TRAINING_STEPS = 200  # of each estimator, from scratch, at every probe
# Estimators a probe trains, each from its own seeded weights and batch order; its error is their mean. One alone
# moved by up to 1.6 degrees with its seed and kept the worst of four refiners of a long run; the mean of three
# ranked them in the full estimation task's two groups (README, 'Keeping the best refiner').
SEEDS = 3
BATCH = {"gaze": 64, "hand": 16}  # images a step: the hand's 224x224 crops hold 26 times a gaze crop's pixels
HAND_FILTERS = 64     # the hand estimator's channels in the probe (the task's: 256), one hourglass
EVALUATION_BATCH = 256


class EstimationProbe:
    """A data set's labelled held-out images (data.data_set.LabelledHoldOut) and the probe's summaries."""

    def __init__(self, held_out, task, config, refine_batch, seed):
        """task: the data set's EstimationTask (model.py); refine_batch: images refined at once."""
        self.held_out, self.task, self.refine_batch, self.seed = held_out, task, refine_batch, seed
        self.input_shape = tuple(held_out.synthetic.shape[1:])
        self.label_shape = tuple(held_out.synthetic_labels.shape[1:])
        # The task's estimator as --task=estimation builds it, the hand's smaller (cost: README).
        self.config = types.SimpleNamespace(**{**vars(config), "estimator_filters": HAND_FILTERS,
                                               "estimator_stacks": 1})
        count = len(held_out.synthetic)
        self.batch = min(BATCH[config.data_set], count)
        self.orders = [[order.choice(count, self.batch, replace=False) for _ in range(TRAINING_STEPS)]
                       for order in (np.random.default_rng(self._seed(index)) for index in range(SEEDS))]
        self._build_training(DATA_SET_DEFAULTS[config.data_set]["learning_rate"])
        self.mark = None  # the error of the estimators trained on the unrefined images
        self.last = {}

    def _build_training(self, learning_rate):
        """One estimator, optimizer and compiled step for every estimator of every probe, each starting again
        from the state they are built in: a step traced anew for each took longer than a test's training.
        ValueError now if the estimator cannot take the input."""
        self.estimator = self.task.build(self.input_shape, self.label_shape, self.config)
        optimizer = keras.optimizers.Adam(learning_rate, epsilon=1e-8)
        if keras.mixed_precision.global_policy().compute_dtype == "float16":
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(self.estimator.trainable_variables)
        self.variables = self.estimator.weights + optimizer.variables
        self.built_values = [variable.numpy() for variable in self.variables]

        @tf.function
        def train_step(images, labels):
            with tf.GradientTape() as tape:
                outputs = self.estimator(images, training=True)
                loss = self.task.loss(outputs, labels, self.input_shape, self.config, self.batch)
            minimize(optimizer, tape, loss, self.estimator.trainable_variables)

        self.train_step = train_step

    def write(self, refine, step):
        """Refine the held-out synthetic images with refine(images), train and measure the estimators, and write
        the error (and, the first time, the unrefined images' mark) at x = step; the values."""
        values = {}
        if self.mark is None:
            self.mark = values["estimation_error_synthetic"] = self.error(self.held_out.synthetic)
        synthetic = self.held_out.synthetic
        refined = np.concatenate([denormalize(refine(normalize(np.float32(synthetic[start:start + self.refine_batch]))))
                                  for start in range(0, len(synthetic), self.refine_batch)])
        values["estimation_error"] = self.error(refined)
        for name, value in values.items():
            tf.summary.scalar(f"probe/{name}", value, step=step)
        self.last = {**values, "estimation_error_synthetic": self.mark}
        return values

    def _seed(self, index):
        """Estimator index's seed (its initial weights and batch order): none is another probe seed's."""
        return self.seed * SEEDS + index

    def error(self, pixels):
        """The probe's error of uint8 images `pixels` (N, H, W, C): the mean of its estimators'."""
        return float(np.mean([self.estimator_error(pixels, index) for index in range(SEEDS)]))

    def estimator_error(self, pixels, index):
        """The mean error on the held-out real images of estimator `index` (its own seeded weights and batch
        order) trained on `pixels` with the held-out synthetic labels."""
        for variable, value in zip(self.variables, self.built_values):
            variable.assign(value)
        seed_weights(self.estimator, self._seed(index))
        labels = np.float32(self.held_out.synthetic_labels)
        for indices in self.orders[index]:
            self.train_step(normalize(np.float32(pixels[indices])), labels[indices])
        real, real_labels = self.held_out.real, np.float32(self.held_out.real_labels)
        errors = [self.task.errors(self.estimator(normalize(np.float32(real[start:start + EVALUATION_BATCH])),
                                                  training=False),
                                   real_labels[start:start + EVALUATION_BATCH], self.input_shape)
                  for start in range(0, len(real), EVALUATION_BATCH)]
        return float(np.mean(np.concatenate([np.asarray(part, np.float64) for part in errors])))


def seed_weights(model, seed):
    """Draw model's random weights again from seed: the same model built twice starts the same, and drawing them
    takes nothing from the random state that training uses. Layer i's seed is 1000 * seed + i: two seeds share none."""
    for index, layer in enumerate(model.layers):
        for name in ("kernel", "bias", "depthwise_kernel"):
            initializer, weight = getattr(layer, f"{name}_initializer", None), getattr(layer, name, None)
            if initializer is None or weight is None or "seed" not in initializer.get_config():
                continue  # constant initializers (zeros, ones) need no seed
            seeded = type(initializer).from_config({**initializer.get_config(), "seed": 1000 * seed + index})
            weight.assign(seeded(weight.shape, weight.dtype))
