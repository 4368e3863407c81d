"""Probes: is refinement working? Measured while the refiner trains, on images it never trained on.

Every --eval_step refiner steps the trainer refines a fixed held-out set of synthetic images and
compares them with a held-out set of real ones (both chosen once per run with the seed, and taken out
of the training streams), writing TensorBoard scalars under `probe/` on the refiner's step axis:

- realism: how well a fresh classifier tells refined from real images, as its cross-validated accuracy
  (0.5: it cannot; 1.0: always). A ridge classifier on the images' pixels (averaged down to at most
  32x32), their grey-level histogram and the statistics below, trained from scratch at every probe: it
  is not our discriminator, so the refiner cannot have learned to fool it. The same for the unrefined
  synthetic images once, at a run's first probe, is the baseline (`realism_accuracy_synthetic`).
- domain statistics: brightness (mean grey level), contrast (its standard deviation within an image)
  and high-frequency energy (the standard deviation of what a Gaussian blur of one pixel removes),
  each image's, and for colour images its colour balance (the mean red and blue levels less the grey
  level: a colour cast); the distance of the refined images' mean from the real ones' in units of the real
  images' spread, for each statistic and as their root mean square (0: alike on average).
- label keeping: the mean absolute change of a grey level from the synthetic input (0..255), and how
  far the data set's cheap proxy of the label moved (pixels): the pupil for eyes, the hand's centre
  of mass for depth crops. A refiner that moves the gaze shows it there. Folders of plain images
  have no labels, so no proxy and no `label_shift`.

The realism classifier sees colour images' colour too: their colour balance, and a red-less-grey and a
blue-less-grey image beside the grey one.
"""
import numpy as np
import tensorflow as tf
from scipy.ndimage import gaussian_filter

from utils import denormalize

FOLDS = 5               # of the realism probe's cross-validation
FEATURE_SIDE = 32       # pixels are averaged down to at most this many a side
HISTOGRAM_BINS = 16
STATISTICS = ("brightness", "contrast", "high_frequency")
# The probes' tags a sweep compares (hparams.py); each statistic's own distance is written beside them.
METRICS = ("probe/realism_accuracy", "probe/statistics_distance", "probe/grey_level_change", "probe/label_shift",
           "probe/estimation_error")  # the last: estimation_probe.py


def image_statistics(pixels):
    """{statistic: (N,) float64} of uint8 or float images (N, H, W[, C]) in levels 0..255: STATISTICS, and
    for colour images red_balance and blue_balance."""
    images = _grey(pixels)
    detail = images - gaussian_filter(images, sigma=(0, 1.0, 1.0))
    statistics = {"brightness": images.mean(axis=(1, 2)), "contrast": images.std(axis=(1, 2)),
                  "high_frequency": detail.std(axis=(1, 2))}
    if _is_colour(pixels):
        channel_means = np.asarray(pixels, np.float64).mean(axis=(1, 2))  # (N, 3)
        statistics["red_balance"] = channel_means[:, 0] - statistics["brightness"]
        statistics["blue_balance"] = channel_means[:, 2] - statistics["brightness"]
    return statistics


def statistics_distance(fake_statistics, real_statistics):
    """{statistic: |mean over fake - mean over real| / the real images' standard deviation, "distance": their
    root mean square}, of two sets' image_statistics: 0 when the two sets are alike on average."""
    distances = {}
    for name in real_statistics:
        spread = max(float(np.std(real_statistics[name])), 1e-6)  # a set of identical images: any change counts
        distances[name] = abs(float(np.mean(fake_statistics[name]) - np.mean(real_statistics[name]))) / spread
    distances["distance"] = float(np.sqrt(np.mean([value ** 2 for value in distances.values()])))
    return distances


def realism_accuracy(fake, real, seed=0):
    """The cross-validated accuracy of a ridge classifier telling fake from real images: 0.5 when it cannot."""
    return classifier_accuracy(image_features(fake, image_statistics(fake)),
                               image_features(real, image_statistics(real)), seed)


def classifier_accuracy(fake_features, real_features, seed):
    """realism_accuracy on the images' features: stratified folds drawn with seed, features standardised on
    each training fold."""
    features = np.concatenate([fake_features, real_features])
    labels = np.concatenate([-np.ones(len(fake_features)), np.ones(len(real_features))])
    folds = _stratified_folds(labels, FOLDS, seed, [row.tobytes() for row in features])
    correct = 0
    for fold in range(FOLDS):
        test, train = folds == fold, folds != fold
        mean, std = features[train].mean(axis=0), features[train].std(axis=0) + 1e-6
        predicted = _ridge(((features[train] - mean) / std), labels[train], (features[test] - mean) / std)
        # A tie (exactly 0: images the classifier cannot tell apart at all) is called real, not wrong both ways.
        correct += int(np.sum(np.where(predicted >= 0, 1.0, -1.0) == labels[test]))
    return correct / len(labels)


def _ridge(train, labels, test):
    """Kernel (dual) ridge regression on ±1 labels, linear kernel: n x n, however many features."""
    kernel = train @ train.T
    # The features' scale, so as strong whatever their number; never 0, even for identical images.
    regularisation = max(np.trace(kernel) / len(train), 1e-6)
    weights = np.linalg.solve(kernel + regularisation * np.eye(len(train)), labels - labels.mean())
    return test @ (train.T @ weights) + labels.mean()


def _stratified_folds(labels, folds, seed, keys):
    """Each item's fold, 0..folds-1, each class spread evenly over the folds in a seeded order; an item of the
    second class whose key (its features) is also the first class's goes in the fold of such a twin.

    An image in both sets, tested while its twin of the other label trains, is predicted as the twin's label:
    identical sets scored 0.1, not a coin toss. Tested together, twins get one prediction, right for one.
    """
    rng = np.random.default_rng(seed)
    assignment, twin_folds, taken = np.empty(len(labels), np.int64), {}, {}
    first, *others = np.unique(labels)
    for order, member in enumerate(rng.permutation(np.flatnonzero(labels == first))):
        assignment[member] = order % folds
        twin_folds.setdefault(keys[member], []).append(order % folds)
    for value in others:
        unmatched = 0
        for member in rng.permutation(np.flatnonzero(labels == value)):
            candidates = twin_folds.get(keys[member])
            if candidates:  # the next of the folds its twins are in, so a set of copies spreads as they do
                count = taken.get(keys[member], 0)
                assignment[member], taken[keys[member]] = candidates[count % len(candidates)], count + 1
            else:
                assignment[member], unmatched = unmatched % folds, unmatched + 1
    return assignment


def image_features(pixels, statistics):
    """(N, features): the image averaged down to at most FEATURE_SIDE a side (for colour images also its red
    and blue less its grey), its histogram, its statistics (image_statistics(pixels))."""
    images = _grey(pixels)
    planes = [images]
    if _is_colour(pixels):
        colour = np.asarray(pixels, np.float64)
        planes += [colour[..., 0] - images, colour[..., 2] - images]
    height, width = images.shape[1:]
    histogram = np.stack([np.histogram(image, HISTOGRAM_BINS, (0, 256))[0] for image in images]) / (height * width)
    return np.concatenate([*(_shrink(plane) for plane in planes), histogram,
                           np.stack(list(statistics.values()), axis=1)], axis=1)


def _shrink(images):
    """(N, features): (N, H, W) images averaged down to at most FEATURE_SIDE a side, flattened."""
    height, width = images.shape[1:]
    step_rows, step_cols = -(-height // FEATURE_SIDE), -(-width // FEATURE_SIDE)
    rows, cols = height // step_rows * step_rows, width // step_cols * step_cols
    small = images[:, :rows, :cols].reshape(len(images), rows // step_rows, step_rows, cols // step_cols, step_cols)
    return small.mean(axis=(2, 4)).reshape(len(images), -1)


def _is_colour(pixels):
    return np.ndim(pixels) == 4 and np.shape(pixels)[-1] == 3


def _grey(pixels):
    """float64 (N, H, W) grey levels of uint8 or float images (N, H, W[, C]); colour averaged."""
    images = np.asarray(pixels, np.float64)
    return images.mean(axis=-1) if images.ndim == 4 else images


def label_shift(synthetic, refined, label_positions):
    """Mean distance (pixels) the label proxy label_positions(images) -> (N, 2) moved between the two."""
    return float(np.mean(np.linalg.norm(label_positions(refined) - label_positions(synthetic), axis=1)))


def grey_level_change(synthetic, refined):
    """Mean absolute change of a grey level (0..255) from the synthetic images to the refined ones."""
    return float(np.mean(np.abs(_grey(refined) - _grey(synthetic))))


class Probes:
    """The held-out images and the probes' summaries; on the chief, between training steps."""

    def __init__(self, synthetic, real, label_positions, refine_batch, seed):
        """synthetic, real: the held-out images in [-1, 1] (N, H, W, C); label_positions(uint8 images) -> (N, 2),
        or None where the data set has no labels; refine_batch: images refined at once (bounds the refiner's
        activations)."""
        self.synthetic, self.real_pixels = synthetic, denormalize(real)
        self.synthetic_pixels = denormalize(synthetic)
        # What the real and unrefined images give is the same at every probe: measured once.
        self.real_statistics = image_statistics(self.real_pixels)
        self.real_features = image_features(self.real_pixels, self.real_statistics)
        self.label_positions, self.refine_batch, self.seed = label_positions, refine_batch, seed
        self.has_labels = label_positions(self.synthetic_pixels[:1]) is not None
        self.baseline_written = False
        self.marks = {}  # the unrefined images' realism accuracy and statistics distance: what refining starts from
        self.last, self.last_step = {}, None  # the latest probe's values, for the run's report

    def write(self, refine, step):
        """Refine the held-out synthetic images with refine(images) and write every probe at x = step; the values."""
        refined = np.concatenate([denormalize(refine(self.synthetic[start:start + self.refine_batch]))
                                  for start in range(0, len(self.synthetic), self.refine_batch)])
        statistics = image_statistics(refined)
        values = {"realism_accuracy": classifier_accuracy(image_features(refined, statistics), self.real_features,
                                                          self.seed)}
        if not self.baseline_written:  # the unrefined images' accuracy: the mark the refiner starts from
            synthetic_statistics = image_statistics(self.synthetic_pixels)
            synthetic_features = image_features(self.synthetic_pixels, synthetic_statistics)
            values["realism_accuracy_synthetic"] = classifier_accuracy(synthetic_features, self.real_features,
                                                                       self.seed)
            self.marks = {"realism_accuracy": values["realism_accuracy_synthetic"], "statistics_distance":
                          statistics_distance(synthetic_statistics, self.real_statistics)["distance"]}
            self.baseline_written = True
        distances = statistics_distance(statistics, self.real_statistics)
        values["statistics_distance"] = distances.pop("distance")
        values.update({f"{name}_distance": value for name, value in distances.items()})
        values["grey_level_change"] = grey_level_change(self.synthetic_pixels, refined)
        if self.has_labels:
            values["label_shift"] = label_shift(self.synthetic_pixels, refined, self.label_positions)
        for name, value in values.items():
            tf.summary.scalar(f"probe/{name}", value, step=step)
        self.last, self.last_step = values, step
        return values
