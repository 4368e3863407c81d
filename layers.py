"""Building blocks of the networks."""
import keras
import tensorflow as tf


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


# ---- the opt-in additions to the paper's networks (README, 'When refined images stay too close to the synthetic
# ones'). Registered, so a refiner.keras that holds them loads wherever this module has been imported.

@keras.saving.register_keras_serializable(package="simgan")
class NoiseChannels(keras.layers.Layer):
    """Appends `channels` planes of standard normal noise, fresh at every call (training or not): a source
    of randomness for the refiner, which is otherwise a fixed function of the synthetic image and so cannot
    give two identical renders two different sensor noises."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def call(self, images):
        shape = tf.concat([tf.shape(images)[:-1], [self.channels]], axis=0)
        return tf.concat([images, tf.random.normal(shape, dtype=images.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


def coordinate_planes(images):
    """(batch, H, W, 2): each pixel's row and column of images (batch, H, W, C), each from -1 to 1."""
    height, width = images.shape[1], images.shape[2]
    rows, cols = keras.ops.meshgrid(keras.ops.linspace(-1.0, 1.0, height), keras.ops.linspace(-1.0, 1.0, width),
                                    indexing="ij")
    planes = keras.ops.cast(keras.ops.stack([rows, cols], axis=-1), images.dtype)   # (H, W, 2)
    return keras.ops.broadcast_to(planes[None], (keras.ops.shape(images)[0], height, width, 2))


@keras.saving.register_keras_serializable(package="simgan")
class CoordinateChannels(keras.layers.Layer):
    """Appends each pixel's row and column, each from -1 to 1 (CoordConv): convolutions see no further than
    their receptive field, so without these a network cannot tell the border (where a camera darkens) from the
    middle except through the zero padding."""

    def call(self, images):
        return keras.ops.concatenate([images, coordinate_planes(images)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 2)


@keras.saving.register_keras_serializable(package="simgan")
class AffineCorrection(keras.layers.Layer):
    """A change of the whole image's brightness and contrast, and a brightness ramp across it (light from one
    side), chosen per image from the image's own mean and spread.

    Four numbers, each a tanh of a linear function of the image's mean and standard deviation: a contrast
    factor in [1/2, 2] applied around the image's mean, a brightness shift in [-1, 1], and a rise from the
    image's middle to its bottom edge and to its right edge, each in [-1/2, 1/2]; the result is clipped to
    [-1, 1]. Ten weights, starting at zero, so it starts as the identity; keyed on two numbers an image rather
    than the refiner's 64 feature maps, so that Adam's steps, each about the learning rate a weight, move the
    brightness a little a step: keyed on the feature maps, the brightness swung by up to 2.3 real spreads
    between probes 25 steps apart on the bundled sample (beside noise and coordinate channels). Nothing it
    does moves an edge, so it cannot move a label; the self-regularization is taken before it.
    """

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(2, 4), initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(4,), initializer="zeros", name="bias")

    def call(self, image):
        mean = keras.ops.mean(image, axis=[1, 2, 3], keepdims=True)                          # (batch, 1, 1, 1)
        spread = keras.ops.std(image, axis=[1, 2, 3], keepdims=True)
        keys = keras.ops.concatenate([mean, spread], axis=-1)[:, 0, 0]                        # (batch, 2)
        contrast_log2, shift, row_rise, col_rise = [
            value[:, None, None, None] for value in keras.ops.unstack(keras.ops.tanh(keys @ self.kernel + self.bias),
                                                                      axis=-1)]
        rows, cols = keras.ops.split(coordinate_planes(image), 2, axis=-1)                   # (batch, H, W, 1) each
        ramp = shift + 0.5 * (row_rise * rows + col_rise * cols)
        return keras.ops.clip(mean + keras.ops.power(2.0, contrast_log2) * (image - mean) + ramp, -1.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape
