"""The hand pose estimator of the paper's hand experiment, and its targets, loss and measures: pure functions.

Shrivastava et al. 2017, section 4.3: a fully convolutional estimator "similar to a stacked hourglass
net" (Newell et al. 2016), two stacks, that outputs one heatmap per joint; it is scored as the share
of the 14 NYU evaluation joints within d pixels of the truth, d = 0..20 (their table gives 5 pixels).

Conventions: joints are (u, v) in input pixels, u the column and v the row, with a pixel's centre at
integer coordinates. Heatmaps are at a quarter of the input's height and width, so heatmap cell (i, j)
covers input pixels 4i..4i+3 (rows) and 4j..4j+3 (columns) and sits at input (4j + 1.5, 4i + 1.5).
"""
import math

import keras
import tensorflow as tf

from model import EstimationTask

HEATMAP_STRIDE = 4     # heatmaps are at input resolution / 4, as Newell et al.'s
MAX_WITHIN_PIXELS = 20  # the paper's plot: the share of joints within 0..20 pixels
MARKED_PIXELS = 5       # the paper's table gives the share within 5 pixels
PAPER_INPUT = 224       # distances are in pixels of a crop of this width, whatever the run's input size
NORM_GROUPS = 16        # at most this many groups per group normalization


def _norm_relu(inputs, name):
    """Group normalization, then ReLU; no scale, since a convolution always follows (ReLU commutes with it).

    Newell et al. use batch normalization; group normalization behaves the same in training and
    evaluation and does not depend on how a global batch is split over replicas (tf.distribute).
    """
    groups = math.gcd(inputs.shape[-1], NORM_GROUPS)
    hidden = keras.layers.GroupNormalization(groups, scale=False, name=f"{name}_norm")(inputs)
    return keras.layers.ReLU(name=f"{name}_relu")(hidden)


def _conv(filters, kernel_size, name, strides=1, use_bias=True):
    """A 'SAME' convolution with Glorot weights; no bias where a normalization with its own offset follows."""
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=use_bias,
                               kernel_initializer="glorot_uniform", name=name)


def residual_module(inputs, filters, name):
    """Newell et al.'s pre-activation bottleneck: 1x1 to filters/2, 3x3, 1x1 back to filters, plus the input."""
    hidden = _conv(filters // 2, 1, f"{name}_conv1", use_bias=False)(_norm_relu(inputs, f"{name}_in"))
    hidden = _conv(filters // 2, 3, f"{name}_conv2", use_bias=False)(_norm_relu(hidden, f"{name}_mid"))
    hidden = _conv(filters, 1, f"{name}_conv3")(_norm_relu(hidden, f"{name}_out"))
    skip = inputs if inputs.shape[-1] == filters else _conv(filters, 1, f"{name}_skip")(inputs)
    return keras.layers.Add(name=f"{name}_add")([skip, hidden])


def hourglass(inputs, filters, depth, name):
    """One hourglass, recursively: a skip branch at this scale, and half the scale down and back up."""
    skip = residual_module(inputs, filters, f"{name}_skip")                       # (batch, h, w, f)
    lower = keras.layers.MaxPooling2D(2, name=f"{name}_pool")(inputs)              # (batch, h/2, w/2, f)
    lower = residual_module(lower, filters, f"{name}_down")
    if depth > 1:
        lower = hourglass(lower, filters, depth - 1, f"{name}_inner")
    else:
        lower = residual_module(lower, filters, f"{name}_bottom")                  # (batch, h/2^depth, ..., f)
    lower = residual_module(lower, filters, f"{name}_up")
    upper = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_upsample")(lower)
    return keras.layers.Add(name=f"{name}_add")([skip, upper])                     # (batch, h, w, f)


def check_input_shape(input_shape, depth):
    """ValueError unless height and width halve cleanly 2 (stem) + depth (hourglass) times."""
    multiple = HEATMAP_STRIDE * 2 ** depth
    height, width = input_shape[:2]
    if height % multiple or width % multiple:
        raise ValueError(f"hand estimator input {height}x{width}: height and width must be multiples of "
                         f"{multiple} (4 * 2**depth, depth {depth})")


def build_hand_estimator(input_shape, num_joints=14, stacks=2, filters=256, depth=3):
    """Stacked hourglass: (batch, H, W, C) -> every stack's heatmaps, (batch, stacks, H/4, W/4, num_joints).

    Every stack's heatmaps are returned for intermediate supervision; the last stack's are the
    prediction. Depth 3 (not Newell's 4) at 224x224: the 56x56 heatmaps halve cleanly only 3 times.
    """
    check_input_shape(input_shape, depth)
    images = keras.Input(input_shape, name="images")                             # (batch, 224, 224, 1)
    stem = _conv(max(filters // 4, 1), 7, "stem_conv", strides=2, use_bias=False)
    hidden = stem(images)                                                        # (batch, 112, 112, f/4)
    hidden = residual_module(_norm_relu(hidden, "stem"), filters // 2, "stem_res1")  # (batch, 112, 112, f/2)
    hidden = keras.layers.MaxPooling2D(2, name="stem_pool")(hidden)              # (batch, 56, 56, f/2)
    hidden = residual_module(hidden, filters // 2, "stem_res2")
    features = residual_module(hidden, filters, "stem_res3")                     # (batch, 56, 56, f)
    all_heatmaps = []
    for stack in range(stacks):
        name = f"stack{stack}"
        hidden = hourglass(features, filters, depth, f"{name}_hourglass")         # (batch, 56, 56, f)
        hidden = residual_module(hidden, filters, f"{name}_res")
        hidden = _norm_relu(_conv(filters, 1, f"{name}_features", use_bias=False)(hidden), f"{name}_features")
        # float32 under mixed precision too: bfloat16's 8 bits would round the peak and its neighbours together.
        heatmaps = keras.layers.Conv2D(num_joints, 1, kernel_initializer="glorot_uniform", dtype="float32",
                                       name=f"{name}_heatmaps")(hidden)                # (batch, 56, 56, 14)
        all_heatmaps.append(keras.layers.Reshape((1, *heatmaps.shape[1:]), dtype="float32",
                                                 name=f"{name}_as_stack")(heatmaps))
        if stack < stacks - 1:  # the next stack starts from these features and these heatmaps
            features = keras.layers.Add(name=f"{name}_merge")([
                features, _conv(filters, 1, f"{name}_remap_features")(hidden),
                _conv(filters, 1, f"{name}_remap_heatmaps")(heatmaps)])
    stacked = (keras.layers.Concatenate(axis=1, dtype="float32", name="heatmaps")(all_heatmaps) if stacks > 1
               else keras.layers.Identity(dtype="float32", name="heatmaps")(all_heatmaps[0]))
    return keras.Model(images, stacked, name="hand_estimator")                  # (batch, 2, 56, 56, 14)


def _scale(heatmap_shape, input_shape):
    """Input pixels per heatmap cell, (rows, columns)."""
    return input_shape[0] / heatmap_shape[0], input_shape[1] / heatmap_shape[1]


def joint_heatmaps(joints_px, heatmap_shape, input_shape, sigma):
    """Target heatmaps: a unit-peak Gaussian (sigma in heatmap cells) at each joint, (batch, h, w, joints).

    joints_px: (batch, joints, 2), (u, v) in input pixels; heatmap_shape and input_shape: (height, width, ...).
    """
    joints = tf.cast(joints_px, tf.float32)
    row_scale, col_scale = _scale(heatmap_shape, input_shape)
    # Input pixel u lies at heatmap column (u - (scale - 1) / 2) / scale: cell centres map to cell centres.
    columns = (joints[..., 0] - (col_scale - 1) / 2) / col_scale                 # (batch, joints)
    rows = (joints[..., 1] - (row_scale - 1) / 2) / row_scale
    grid_rows = tf.range(heatmap_shape[0], dtype=tf.float32)[None, :, None, None]  # (1, h, 1, 1)
    grid_cols = tf.range(heatmap_shape[1], dtype=tf.float32)[None, None, :, None]  # (1, 1, w, 1)
    squared = (grid_rows - rows[:, None, None, :]) ** 2 + (grid_cols - columns[:, None, None, :]) ** 2
    return tf.exp(-squared / (2.0 * sigma ** 2))                                  # (batch, h, w, joints)


def heatmap_loss(predicted_stacks, targets, global_batch_size):
    """Mean squared error of each stack's heatmaps, summed over stacks, per image; (the share of) the batch mean.

    predicted_stacks: (batch, stacks, h, w, joints) or a list of (batch, h, w, joints); targets: (batch, h, w, joints).
    """
    if isinstance(predicted_stacks, (list, tuple)):
        predicted_stacks = tf.stack(predicted_stacks, axis=1)
    difference = tf.cast(predicted_stacks, tf.float32) - tf.cast(targets, tf.float32)[:, None]
    per_image = tf.reduce_sum(tf.reduce_mean(tf.square(difference), axis=[2, 3, 4]), axis=1)  # (batch,)
    return tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)


def heatmap_joints(heatmaps, input_shape):
    """Joints (u, v) in input pixels from the last stack's heatmaps: (batch, joints, 2).

    The arg-max cell, moved along each axis to the vertex of the parabola through it and its two
    neighbours (at most half a cell; none on the border). On a Gaussian target that is within a few
    hundredths of a cell of the truth; Newell et al.'s quarter-cell shift is up to a quarter off.
    heatmaps: (batch, stacks, h, w, joints) or (batch, h, w, joints).
    """
    heatmaps = tf.cast(heatmaps, tf.float32)
    if heatmaps.shape.rank == 5:
        heatmaps = heatmaps[:, -1]
    height, width, num_joints = heatmaps.shape[1:]
    flat = tf.reshape(tf.transpose(heatmaps, [0, 3, 1, 2]), [-1, num_joints, height * width])  # (batch, joints, h*w)
    peak = tf.argmax(flat, axis=-1, output_type=tf.int32)                         # (batch, joints)
    rows, cols = peak // width, peak % width

    def value(row, col):
        row, col = tf.clip_by_value(row, 0, height - 1), tf.clip_by_value(col, 0, width - 1)
        return tf.gather(flat, row * width + col, batch_dims=2)

    def vertex(before, centre, after, inside):
        offset = tf.math.divide_no_nan(0.5 * (after - before), 2.0 * centre - before - after)
        return tf.where(inside, tf.clip_by_value(offset, -0.5, 0.5), 0.0)

    centre = value(rows, cols)
    col_offset = vertex(value(rows, cols - 1), centre, value(rows, cols + 1), (cols > 0) & (cols < width - 1))
    row_offset = vertex(value(rows - 1, cols), centre, value(rows + 1, cols), (rows > 0) & (rows < height - 1))
    row_scale, col_scale = _scale((height, width), input_shape)
    u = (tf.cast(cols, tf.float32) + col_offset) * col_scale + (col_scale - 1) / 2
    v = (tf.cast(rows, tf.float32) + row_offset) * row_scale + (row_scale - 1) / 2
    return tf.stack([u, v], axis=-1)                                              # (batch, joints, 2)


def joint_distances(predicted_px, joints_px):
    """Euclidean distance in pixels between predicted and true joints: (batch, joints)."""
    difference = tf.cast(predicted_px, tf.float32) - tf.cast(joints_px, tf.float32)
    return tf.norm(difference, axis=-1)


def _paper_pixel_distances(heatmaps, joints_px, input_shape):
    """(batch, joints) distances in pixels of a PAPER_INPUT-wide crop: d means the same on every run."""
    scale = PAPER_INPUT / input_shape[1]
    return scale * joint_distances(heatmap_joints(heatmaps, input_shape), joints_px)


def _heatmap_loss_of_joints(heatmaps, joints_px, input_shape, config, global_batch_size):
    targets = joint_heatmaps(joints_px, heatmaps.shape[2:4], input_shape, config.heatmap_sigma)
    return heatmap_loss(heatmaps, targets, global_batch_size)


HAND_ESTIMATION = EstimationTask(
    build=lambda input_shape, label_shape, config: build_hand_estimator(
        input_shape, num_joints=label_shape[0], stacks=config.estimator_stacks, filters=config.estimator_filters,
        depth=config.estimator_depth),
    loss=_heatmap_loss_of_joints, errors=_paper_pixel_distances,
    error_name="joint_error", unit="pixels", max_within=MAX_WITHIN_PIXELS, marked=MARKED_PIXELS)
