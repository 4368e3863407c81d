"""tf.data pipelines: crops, real images and labelled images as batches in [-1, 1].

Every image reaches the networks through `to_network_input`, resized as the original resized
every batch (TF 0.12's `tf.image.resize_images`: bilinear, no antialiasing, no half-pixel centres).
Training pipelines are shuffled with a seed, repeated and cut into fixed-size batches (one trace of
each step function); evaluation pipelines keep the order and the last partial batch.
"""
import numpy as np
import tensorflow as tf
from tqdm import tqdm

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


def _decode_crop(path, input_shape):
    """A crop (or any PNG or JPEG, colour or grey) -> (H, W, C) float32 in [-1, 1] at the network's input size."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=input_shape[-1], expand_animations=False)
    return to_network_input(image[None], input_shape)[0]


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


def real_dataset(real_images, input_shape, batch_size, seed):
    """Real images (N, 36, 60) uint8 -> batches in [-1, 1]: without replacement, reshuffled each epoch."""
    images = tf.constant(real_images)
    indices = tf.data.Dataset.range(len(real_images))
    indices = indices.shuffle(len(real_images), seed=seed, reshuffle_each_iteration=True).repeat()
    batches = indices.batch(batch_size, drop_remainder=True)
    return batches.map(lambda index: to_network_input(tf.gather(images, index), input_shape),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def named_images_dataset(images, names, input_shape, batch_size):
    """uint8 images in memory with their names -> (images in [-1, 1], names) batches, in order, once."""
    dataset = tf.data.Dataset.from_tensor_slices((images, tf.constant(list(names), tf.string))).batch(batch_size)
    return dataset.map(lambda batch, batch_names: (to_network_input(batch, input_shape), batch_names),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def load_crops(paths, input_shape, batch_size, refine=None, desc="Load synthetic images"):
    """Every crop once, in order, as uint8 (N, H, W, C) at the network's input size; refined first if refine.

    refine (a callable on [-1, 1] batches: the refiner) runs inside the tf.data pipeline, batch by
    batch. The result is quantised as test mode's PNGs are, so training on it equals training on
    refined images written to disk, without the disk.
    """
    dataset = synthetic_dataset(paths, input_shape, batch_size, 0, training=False)
    if refine is not None:
        def refine_batch(images, names):
            return refine(images), names
        dataset = dataset.map(refine_batch)
    loaded = np.empty((len(paths), *input_shape), np.uint8)
    start = 0
    for images, _ in tqdm(dataset, total=-(-len(paths) // batch_size), desc=desc):
        loaded[start:start + len(images)] = denormalize(images)
        start += len(images)
    return loaded


def labelled_dataset(images, gaze, input_shape, batch_size, seed=None):
    """(images in [-1, 1] at the input size, gaze) batches from uint8 images in memory, of any size.

    seed given: shuffled with it, reshuffled each epoch, repeated, fixed-size batches (one trace of
    the training step). seed None: in order, once, the last partial batch included.
    """
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(gaze, np.float32)))
    if seed is not None:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.batch(batch_size, drop_remainder=seed is not None)
    return dataset.map(lambda batch, labels: (to_network_input(batch, input_shape), labels),
                       num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
