"""tf.data pipelines: crops, real images and labelled images as batches in [-1, 1].

Training pipelines are shuffled with a seed, repeated and cut into fixed-size batches (one trace of
each step function); evaluation pipelines keep the order and the last partial batch.
"""
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from utils import denormalize, normalize


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
