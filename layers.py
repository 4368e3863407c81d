"""Building blocks of the networks."""
import keras


def conv2d(filters, kernel_size, strides=1, activation="relu", name=None, kernel_initializer="glorot_uniform"):
    """A 'SAME' convolution with Glorot weights and zero bias, as the original."""
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", activation=activation,
        kernel_initializer=kernel_initializer, bias_initializer="zeros", name=name)


def resnet_block(inputs, filters, name, kernel_size=3, starts_as_identity=False):
    """conv-ReLU-conv, add the input, ReLU: the refiner's residual unit.

    starts_as_identity: the second convolution starts at zero, so the block first passes its input on.
    """
    hidden = conv2d(filters, kernel_size, name=f"{name}_conv1")(inputs)
    hidden = conv2d(filters, kernel_size, activation=None, name=f"{name}_conv2",
                    kernel_initializer="zeros" if starts_as_identity else "glorot_uniform")(hidden)
    return keras.layers.ReLU(name=f"{name}_relu")(keras.layers.Add(name=f"{name}_add")([inputs, hidden]))
