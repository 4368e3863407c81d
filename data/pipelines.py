"""tf.data pipelines: image files and arrays on disk as batches in [-1, 1], read a batch at a time.

Every image reaches the networks through `to_network_input`, resized as the original resized
every batch (TF 0.12's `tf.image.resize_images`: bilinear, no antialiasing, no half-pixel centres).
Training pipelines are shuffled with a seed, repeated and cut into fixed-size batches (one trace of
each step function); evaluation pipelines keep the order and the last partial batch.
"""
import functools
import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data.npy_file import temporary_rows
from utils import denormalize, normalize


def resize_as_original(images, size):
    """(N, H, W, C) float images -> (N, *size, C) as TF 0.12 resized them: bilinear, legacy pixel mapping.

    No antialiasing: the 140x84 crops shrink 2.4x to 55x35 and keep their fine texture (and aliasing),
    which the refiner then has to deal with, as in the original.
    """
    # The op behind tf.compat.v1.image.resize_bilinear, without its deprecation notice on every run.
    return tf.raw_ops.ResizeBilinear(images=images, size=size, align_corners=False, half_pixel_centers=False)


def to_network_input(pixels, input_shape):
    """uint8 images (N, H, W) or (N, H, W, C) of any size -> float32 (N, *input_shape) in [-1, 1]."""
    height, width, channels = input_shape
    images = tf.cast(pixels, tf.float32)
    if images.shape.rank == 3:
        images = images[..., None]
    images = resize_as_original(images, (height, width))
    if channels == 3 and images.shape[-1] == 1:
        images = tf.image.grayscale_to_rgb(images)
    return normalize(images)


# Starts the message of an error a stream raises inside TensorFlow's (main.py prints that message alone).
STREAM_FAILED = "Reading stopped: "


def _decode_crop(path, input_shape):
    """A crop (or any PNG or JPEG, colour or grey) -> (H, W, C) float32 in [-1, 1] at the network's input size."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=input_shape[-1], expand_animations=False)
    return to_network_input(image[None], input_shape)[0]


def stream_failure(error):
    """The one-line message of a stream that stopped reading (STREAM_FAILED), found in TensorFlow's error text;
    None for any other error."""
    text = str(error)
    start = text.find(STREAM_FAILED)
    return None if start < 0 else text[start:].splitlines()[0]


def _count_epoch(least, folder, decoded, element):
    """scan: the images an epoch has given so far; at its end, an error if they are fewer than least."""
    _, epoch_end = element
    too_few = tf.logical_and(epoch_end, decoded < least)
    check = tf.debugging.assert_equal(too_few, False, message=(
        f"{STREAM_FAILED}a whole epoch of {folder} gave fewer than {least} readable images: is it still there?"))
    with tf.control_dependencies([check]):
        return tf.where(epoch_end, tf.constant(0, tf.int64), decoded + 1), element


def _indices(count, seed, shard, mark_epochs=False):
    """Row indices of this input pipeline's shard: shuffled with seed, shuffled afresh each epoch, repeated.

    Each epoch is one permutation of the indices (8 bytes an item whatever the images' size), made at
    once: a shuffle buffer of 1.2 M items took over a second to fill before the first batch, at every
    epoch. seed None: in order, once. shard: (pipelines, this pipeline's index), as tf.distribute's
    InputContext gives them; each pipeline reads every pipelines-th item, so the shards are disjoint.
    mark_epochs: each epoch ends with the index -1.
    """
    pipelines, index = shard
    indices = tf.range(index, count, pipelines, dtype=tf.int64)
    if seed is None:
        return tf.data.Dataset.from_tensor_slices(indices)
    if not len(range(index, count, pipelines)):  # an endless stream of empty epochs would never yield
        raise ValueError(f"no items to draw batches from: input pipeline {index} of {pipelines}, {count} items")

    def epoch(number):
        order = tf.random.experimental.stateless_shuffle(indices, seed=tf.stack([tf.constant(seed, tf.int64), number]))
        if mark_epochs:
            order = tf.concat([order, [-1]], axis=0)
        return tf.data.Dataset.from_tensor_slices(order)

    return tf.data.Dataset.counter().flat_map(epoch)


def synthetic_dataset(paths, input_shape, batch_size, seed, training=True, shard=(1, 0)):
    """Synthetic crops (image files) in [-1, 1], decoded a batch at a time.

    training: shuffled with the seed, repeated, fixed-size batches (one trace of each step).
    Otherwise: in the order given, once, the last partial batch included, as (images, paths).
    """
    paths = list(paths)
    folder = os.path.dirname(paths[0]) if paths else ""  # a set's crops lie in one folder
    paths = tf.constant(paths, tf.string)  # the names only: 1.2 M of them are some 100 MB
    indices = _indices(len(paths), seed if training else None, shard)
    if training:
        def load(index):  # (image, whether it is the mark of an epoch's end)
            return tf.cond(index < 0, lambda: (tf.zeros(input_shape, tf.float32), True),
                           lambda: (_decode_crop(paths[tf.maximum(index, 0)], input_shape), False))

        dataset = _indices(len(paths), seed, shard, mark_epochs=True).map(
            load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # A crop damaged or removed after the start's check is skipped with TensorFlow's warning, not fatal ...
        dataset = dataset.ignore_errors(log_warning=True)
        # ... but an epoch that gives less than a batch (a disk unmounted, a folder moved) ends the stream,
        # instead of skipping every file of every epoch for ever.
        least = min(batch_size, len(range(shard[1], len(paths), shard[0])))
        dataset = dataset.scan(tf.constant(0, tf.int64), functools.partial(_count_epoch, least, folder))
        dataset = dataset.filter(lambda image, epoch_end: tf.logical_not(epoch_end))
        dataset = dataset.map(lambda kept, _: kept)
        return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    dataset = indices.map(lambda index: (_decode_crop(paths[index], input_shape), paths[index]),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def array_batches(images, input_shape, batch_size, seed=None, labels=None, names=None, transform=None,
                  shard=(1, 0)):
    """Batches in [-1, 1] at the input size from uint8 images read by row index: only a batch is read at a time.

    images: (N, H, W) or (N, H, W, C) uint8, an NpyRows on disk or a numpy array. labels, names: (N, ...)
    arrays that go with them; the batches are images, (images, labels) or (images, names).
    transform(images, labels, indices) -> (images, labels), on each batch's numpy arrays (e.g. mirroring).
    seed given: shuffled with it, reshuffled each epoch, repeated, fixed-size batches (one trace of a
    training step). seed None: in order, once, the last partial batch included. shard: see _indices.
    """
    extra = labels if labels is not None else names
    extra_dtype = tf.float32 if labels is not None else tf.string

    def read(indices):
        try:
            rows = np.asarray(images[indices])
        except OSError as error:  # the rows' file on a disk gone: nothing more can be read from it
            raise OSError(f"{STREAM_FAILED}cannot read {getattr(images, 'path', 'the images')}: {error}") from None
        values = None if extra is None else np.asarray(extra[indices])
        if transform is not None:
            rows, values = transform(rows, values, indices)
        return (rows,) if extra is None else (rows, values.astype(np.float32) if labels is not None else values)

    def load(indices):
        outputs = tf.numpy_function(read, [indices], [tf.uint8] + ([] if extra is None else [extra_dtype]),
                                    stateful=False)
        pixels = tf.ensure_shape(outputs[0], (None, *images.shape[1:]))
        batch = to_network_input(pixels, input_shape)
        if extra is None:
            return batch
        return batch, tf.ensure_shape(outputs[1], (None, *np.shape(extra)[1:]))

    batches = _indices(len(images), seed, shard).batch(batch_size, drop_remainder=seed is not None)
    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def crops_on_disk(paths, input_shape, batch_size, folder, refine=None, desc="Load synthetic images"):
    """Every crop once, in order, as uint8 rows (H, W, C) at the network's input size, in a temporary file;
    refined first when refine is given (see rows_on_disk)."""
    def batches():
        return synthetic_dataset(paths, input_shape, batch_size, None, training=False).map(lambda images, _: images)

    return rows_on_disk(batches, len(paths), batch_size, tuple(input_shape), folder, refine, desc)


def rows_on_disk(make_batches, count, batch_size, row_shape, folder, refine=None, desc="Load images"):
    """The count images of make_batches() (a dataset of [-1, 1] batches, once through) as uint8 rows of
    row_shape in a temporary file: an NpyRows (npy_file.temporary_rows: in folder, else in the system's
    temporary folder; gone when dropped), a batch in memory at a time.

    refine (a callable on [-1, 1] batches: the refiner) runs inside the tf.data pipeline, batch by batch.
    The result is quantised as test mode's PNGs are, so training on it equals training on refined images
    written to disk.
    """
    def rows():
        dataset = make_batches() if refine is None else make_batches().map(refine)
        for images in tqdm(dataset, total=-(-count // batch_size), desc=desc):
            yield denormalize(images).reshape(-1, *row_shape)

    what = "the images at the input size" if refine is None else "the refined images"
    return temporary_rows(folder, row_shape, np.uint8, rows, what)
