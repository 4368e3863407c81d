"""Building blocks of the networks, and the image scaling both ends agree on."""
import keras
import numpy as np


def conv2d(filters, kernel_size, strides=1, activation="relu", name=None):
    """A 'SAME' convolution with Glorot weights and zero bias, as the original."""
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", activation=activation,
        kernel_initializer="glorot_uniform", bias_initializer="zeros", name=name)


def resnet_block(inputs, filters, name):
    """conv-ReLU-conv, add the input, ReLU: the refiner's residual unit."""
    hidden = conv2d(filters, 3, name=f"{name}_conv1")(inputs)
    hidden = conv2d(filters, 3, activation=None, name=f"{name}_conv2")(hidden)
    return keras.layers.ReLU(name=f"{name}_relu")(keras.layers.Add(name=f"{name}_add")([inputs, hidden]))


def normalize(images):
    """uint8 pixels [0, 255] -> float [-1, 1] (works on numpy arrays and tensors)."""
    return images / 127.5 - 1.0


def denormalize(images):
    """float [-1, 1] -> uint8 [0, 255], clipped: the explicit inverse of normalize."""
    pixels = np.rint((np.asarray(images, dtype=np.float32) + 1.0) * 127.5)
    return np.clip(pixels, 0, 255).astype(np.uint8)
