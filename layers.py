"""Building blocks of the networks."""
import keras


def conv2d(filters, kernel_size, strides=1, activation="relu", name=None):
    """A 'SAME' convolution with Glorot weights and zero bias, as the original."""
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", activation=activation,
        kernel_initializer="glorot_uniform", bias_initializer="zeros", name=name)


def resnet_block(inputs, filters, name, kernel_size=3):
    """conv-ReLU-conv, add the input, ReLU: the refiner's residual unit."""
    hidden = conv2d(filters, kernel_size, name=f"{name}_conv1")(inputs)
    hidden = conv2d(filters, kernel_size, activation=None, name=f"{name}_conv2")(hidden)
    return keras.layers.ReLU(name=f"{name}_relu")(keras.layers.Add(name=f"{name}_add")([inputs, hidden]))
