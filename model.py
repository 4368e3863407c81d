"""The networks and their losses, as pure functions: no optimizers, no I/O."""
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from config import network_design
from layers import AffineCorrection, CoordinateChannels, NoiseChannels, conv2d, resnet_block

REAL_LABEL = 1
FAKE_LABEL = 0


# The paper's appendix: the eye networks for 35x55 gaze crops, the hand networks for 224x224 depth crops.
# The hand refiner's 10 blocks start as identities. With all 20 convolutions random, Adam's first
# pre-training steps on the bundled sample drove its tanh into saturation (every pixel 1.0, for good)
# at learning rate 1e-3 every time, and at 1e-4 once in three runs (twice more it came back from
# 60% saturated); starting at identity, at 1e-4, never in three seeds (at 1e-3 it still does).
REFINER_DESIGNS = {"gaze": dict(kernel_size=3, num_blocks=4, starts_as_identity=False),
                   "hand": dict(kernel_size=7, num_blocks=10, starts_as_identity=True)}


# The opt-in additions to the refiner (flags of the same names; README, 'When refined images stay too close to
# the synthetic ones') at their defaults: the paper's refiner. A run's params.json records its values.
REFINER_OPTIONS = {"noise_channels": 0, "coordinate_channels": False, "affine_correction": False}


def build_refiner(input_shape, data_set="gaze", filters=64, noise_channels=0, coordinate_channels=False,
                  affine_correction=False):
    """ResNet refiner: no striding or pooling, so every pixel keeps its place (and its label); as many
    channels out as in.

    gaze: a 3x3 convolution, 4 ResNet blocks of 3x3 convolutions; hand: 7x7 and 10 blocks of 7x7;
    folders: one of the two by the input's size (config.network_design). Opt-in: noise planes and the pixels'
    coordinates beside the input; a brightness and contrast change of the whole image after the last
    convolution (its output, layer "conv_out", is what the self-regularization compares: refiner_outputs).
    """
    design = REFINER_DESIGNS[network_design(data_set, *input_shape[:2])]
    synthetic = keras.Input(input_shape, name="synthetic")
    hidden = synthetic
    if noise_channels:
        hidden = NoiseChannels(noise_channels, name="noise")(hidden)
    if coordinate_channels:
        hidden = CoordinateChannels(name="coordinates")(hidden)
    hidden = conv2d(filters, design["kernel_size"], name="conv_in")(hidden)  # (batch, H, W, 64)
    for index in range(design["num_blocks"]):
        hidden = resnet_block(hidden, filters, f"block{index}", design["kernel_size"],
                              design["starts_as_identity"])  # (batch, H, W, 64)
    refined = conv2d(input_shape[-1], 1, activation="tanh", name="conv_out")(hidden)
    if affine_correction:
        refined = AffineCorrection(name="affine_correction")(refined)
    return keras.Model(synthetic, refined, name="refiner")             # (batch, H, W, C) in [-1, 1]


def refiner_options(flags):
    """The REFINER_OPTIONS of {flag: value} (a config's vars, a run's params.json); those missing at their
    defaults (a run from before they existed)."""
    return {name: flags.get(name, default) for name, default in REFINER_OPTIONS.items()}


def regularized_variables(refiner):
    """The refiner's variables the warm-up's self-regularization alone trains: all but --affine_correction's,
    which acts after what is regularized and so gets no gradient there."""
    return [variable for layer in refiner.layers if layer.name != "affine_correction"
            for variable in layer.trainable_weights]


def refiner_outputs(refiner):
    """A callable images -> (regularized, refined): what the self-regularization compares with the synthetic
    images, and the refined images. The same tensor but with --affine_correction, whose change of the whole
    image comes after what is regularized."""
    if "affine_correction" not in [layer.name for layer in refiner.layers]:
        def same(images, training):
            refined = refiner(images, training=training)
            return refined, refined
        return same
    return keras.Model(refiner.input, [refiner.get_layer("conv_out").output, refiner.output])


def build_discriminator(input_shape, data_set="gaze", coordinate_channels=False):
    """Local-patch discriminator: each output position judges one receptive field; the patch grid follows the
    input's size (the eye design's for gaze, the hand's for hand; folders: by the input's size).
    coordinate_channels: each pixel's row and column beside it, so a patch is judged knowing where it lies."""
    images = keras.Input(input_shape, name="images")
    hidden = CoordinateChannels(name="coordinates")(images) if coordinate_channels else images
    if network_design(data_set, *input_shape[:2]) == "hand":
        return _build_hand_discriminator(images, hidden)
    hidden = conv2d(96, 3, strides=2, name="conv1")(hidden)           # (batch, 18, 28, 96) for 35x55
    hidden = conv2d(64, 3, strides=2, name="conv2")(hidden)           # (batch, 9, 14, 64)
    hidden = keras.layers.MaxPooling2D(3, strides=1, padding="valid", name="pool")(hidden)  # (batch, 7, 12, 64)
    hidden = conv2d(32, 3, name="conv3")(hidden)
    hidden = conv2d(32, 1, name="conv4")(hidden)
    logits = conv2d(2, 1, activation=None, name="logits")(hidden)      # (batch, 7, 12, 2) patch logits
    return keras.Model(images, logits, name="discriminator")


def _build_hand_discriminator(images, hidden):
    """The paper's hand discriminator: 7x7/4 (96), 5x5/2 (64), max-pool 3x3/2, 3x3/2 (32), 1x1 (32), 1x1 (2)."""
    hidden = conv2d(96, 7, strides=4, name="conv1")(hidden)           # (batch, 56, 56, 96) for 224x224
    hidden = conv2d(64, 5, strides=2, name="conv2")(hidden)           # (batch, 28, 28, 64)
    hidden = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool")(hidden)  # (batch, 14, 14, 64)
    hidden = conv2d(32, 3, strides=2, name="conv3")(hidden)           # (batch, 7, 7, 32)
    hidden = conv2d(32, 1, name="conv4")(hidden)
    logits = conv2d(2, 1, activation=None, name="logits")(hidden)      # (batch, 7, 7, 2) patch logits
    return keras.Model(images, logits, name="discriminator")


def patch_cross_entropy(logits, label):
    """Cross-entropy of every patch against one label, summed over patches: (batch,)."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.fill(tf.shape(logits)[:-1], label)
    per_patch = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(per_patch, axis=[1, 2])


def self_regularization(refined, synthetic, reg_scale, psi="identity"):
    """reg_scale * sum |psi(refined) - psi(synthetic)| per image: keeps the annotation valid. (batch,)

    psi (the paper's feature map, here linear, so psi(refined) - psi(synthetic) = psi(refined - synthetic)):
    "identity", the original's; "channel_mean", the mean of the colour channels, one of the paper's examples,
    which leaves every change of colour that keeps the grey level free; "colour_cast", the grey level and
    each channel less it, less the image's mean of that: only a cast that spans the whole image is free,
    the colours of its parts stay anchored. On one channel these three are the same. "derivatives", the
    paper's other example: the differences between neighbouring pixels, across and down, and the image's
    mean as an anchor (it costs a change of the whole image as the identity does, since without it the
    images drift until the tanh saturates): a change that varies slowly over the image (lighting) is
    nearly free, an edge moved or a pixel changed alone costs two to four times what it does under the
    identity.
    """
    difference = tf.cast(refined, tf.float32) - tf.cast(synthetic, tf.float32)
    if psi == "derivatives":
        across = tf.reduce_sum(tf.abs(difference[:, :, 1:] - difference[:, :, :-1]), axis=[1, 2, 3])
        down = tf.reduce_sum(tf.abs(difference[:, 1:] - difference[:, :-1]), axis=[1, 2, 3])
        pixels = difference.shape[1] * difference.shape[2]
        anchor = pixels * tf.reduce_sum(tf.abs(tf.reduce_mean(difference, axis=[1, 2])), axis=-1)
        return reg_scale * (across + down + anchor)
    if psi != "identity":
        grey = tf.reduce_mean(difference, axis=-1, keepdims=True)          # (batch, H, W, 1)
        cast = difference - grey                                           # (batch, H, W, C): the colour change
        local = cast - tf.reduce_mean(cast, axis=[1, 2], keepdims=True)    # less the image's uniform cast
        difference = grey if psi == "channel_mean" else tf.concat([grey, local], axis=-1)
    return reg_scale * tf.reduce_sum(tf.abs(difference), axis=[1, 2, 3])


def batch_mean(per_image, global_batch_size):
    """sum / global batch size: on one replica the batch mean; on several, each replica's share of it."""
    return tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)


def refiner_losses(refined_logits, refined, synthetic, reg_scale, global_batch_size, psi="identity"):
    """The refiner's realism, regularization and total loss, each a (share of the) global batch mean."""
    realism = patch_cross_entropy(refined_logits, REAL_LABEL)
    regularization = self_regularization(refined, synthetic, reg_scale, psi)
    return {
        "realism_loss": batch_mean(realism, global_batch_size),
        "regularization_loss": batch_mean(regularization, global_batch_size),
        "loss": batch_mean(realism + regularization, global_batch_size),
    }


def discriminator_losses(fake_logits, real_logits, from_history, global_batch_size):
    """Fake (fresh and history; from_history (batch,) bool tells which) should score fake, real should score real.

    (Shares of) global batch means, so the losses of micro-batches add up to those of their batch.
    """
    fake = patch_cross_entropy(fake_logits, FAKE_LABEL)
    real = patch_cross_entropy(real_logits, REAL_LABEL)
    return {
        # The original names the real images' loss `synthetic_d_loss`; the tag is kept.
        "synthetic_d_loss": batch_mean(real, global_batch_size),
        # As the original: the loss on the history half alone.
        "refiner_d_loss_with_history": batch_mean(tf.where(from_history, fake, 0.0), global_batch_size // 2),
        "discrim_loss_with_history": batch_mean(fake + real, global_batch_size),
    }


# ---- the gaze estimator of the paper's evaluation (Shrivastava et al. 2017, section 4.2) ----

MAX_WITHIN_DEGREES = 25  # the paper's Figure 7 plots the share of images within 0..25 degrees
MARKED_DEGREES = 7       # the paper's Table 3 gives the share within 7 degrees


def _valid_conv(filters, kernel_size, name):
    """An unpadded ReLU convolution, Glorot weights, zero bias."""
    return keras.layers.Conv2D(filters, kernel_size, padding="valid", activation="relu",
                               kernel_initializer="glorot_uniform", bias_initializer="zeros", name=name)


def build_estimator(input_shape):
    """The paper's gaze estimator: five 3x3 convs, two max-pools, then 9600 -> 1000 -> 3.

    Unpadded convolutions and pools: that is what makes the paper's "9600" the flattened size of the
    last feature map at 35x55 (5 x 10 x 192 = 9600). With 'SAME' padding it would be 8 x 13 x 192 =
    19968, and a fully connected layer of 9600 after it would hold 192M weights.
    """
    images = keras.Input(input_shape, name="images")                  # (batch, 35, 55, 1)
    hidden = _valid_conv(32, 3, "conv1")(images)                      # (batch, 33, 53, 32)
    hidden = _valid_conv(32, 3, "conv2")(hidden)                      # (batch, 31, 51, 32)
    hidden = _valid_conv(64, 3, "conv3")(hidden)                      # (batch, 29, 49, 64)
    hidden = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(hidden)  # (batch, 14, 24, 64)
    hidden = _valid_conv(80, 3, "conv4")(hidden)                      # (batch, 12, 22, 80)
    hidden = _valid_conv(192, 3, "conv5")(hidden)                     # (batch, 10, 20, 192)
    hidden = keras.layers.MaxPooling2D(2, strides=2, name="pool2")(hidden)  # (batch, 5, 10, 192)
    hidden = keras.layers.Flatten(name="flatten")(hidden)            # (batch, 9600)
    hidden = keras.layers.Dense(1000, activation="relu", kernel_initializer="glorot_uniform", name="fc")(hidden)
    gaze = keras.layers.Dense(3, kernel_initializer="glorot_uniform", name="gaze")(hidden)  # (batch, 3)
    return keras.Model(images, gaze, name="estimator")


def euclidean_loss(predicted, gaze, global_batch_size=None):
    """Caffe's EuclideanLoss, the paper's: sum of squared differences over 2 * batch (the global batch)."""
    difference = tf.cast(predicted, tf.float32) - tf.cast(gaze, tf.float32)
    return batch_mean(0.5 * tf.reduce_sum(tf.square(difference), axis=-1), global_batch_size)


def angular_error(predicted, gaze):
    """Degrees between predicted and true gaze directions, of any lengths: (batch,).

    float64, so a perfect prediction measures 0 and not arccos's float32 floor of about 0.02 degrees;
    a zero prediction has no direction and counts as 90 degrees off.
    """
    predicted = tf.math.l2_normalize(tf.cast(predicted, tf.float64), axis=-1)
    gaze = tf.math.l2_normalize(tf.cast(gaze, tf.float64), axis=-1)
    cosine = tf.clip_by_value(tf.reduce_sum(predicted * gaze, axis=-1), -1.0, 1.0)
    return tf.acos(cosine) * (180.0 / np.pi)


def share_within(errors, max_value):
    """The share of errors (degrees, pixels) of at most d, for d = 0, 1, ..., max_value: (max_value + 1,)."""
    errors = tf.reshape(tf.cast(errors, tf.float64), (-1, 1))
    thresholds = tf.range(max_value + 1, dtype=tf.float64)[None, :]
    return tf.reduce_mean(tf.cast(errors <= thresholds, tf.float64), axis=0)


@dataclass(frozen=True)
class EstimationTask:
    """A data set's part of the estimation task (estimation.py): its estimator, loss and error, the paper's units."""
    build: Callable      # (input_shape, label_shape, config) -> the estimator, a keras.Model
    loss: Callable       # (outputs, labels, input_shape, config, global_batch_size) -> this replica's share of the loss
    errors: Callable     # (outputs, labels, input_shape) -> (batch, k) float: each image's k errors, in `unit`
    error_name: str      # in the TensorBoard tags and evaluation.json: estimator/<error_name>, mean_<error_name>
    unit: str            # of the errors: the evaluation's share_within_<unit>
    max_within: int      # the paper's plot: the share of errors within 0..max_within units
    marked: int          # the threshold of the paper's table: real/within_<marked>_<unit>


GAZE_ESTIMATION = EstimationTask(
    build=lambda input_shape, label_shape, config: build_estimator(input_shape),
    loss=lambda outputs, gaze, input_shape, config, global_batch_size: euclidean_loss(outputs, gaze, global_batch_size),
    errors=lambda outputs, gaze, input_shape: angular_error(outputs, gaze)[:, None],
    error_name="angular_error", unit="degrees", max_within=MAX_WITHIN_DEGREES, marked=MARKED_DEGREES)
