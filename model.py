"""The networks and their losses, as pure functions: no optimizers, no I/O."""
import keras
import tensorflow as tf

from layers import conv2d, resnet_block

REAL_LABEL = 1
FAKE_LABEL = 0


def build_refiner(input_shape, filters=64, num_blocks=4):
    """ResNet refiner: no striding or pooling, so every pixel keeps its place (and its label)."""
    synthetic = keras.Input(input_shape, name="synthetic")
    hidden = conv2d(filters, 3, name="conv_in")(synthetic)              # (batch, H, W, 64)
    for index in range(num_blocks):
        hidden = resnet_block(hidden, filters, name=f"block{index}")  # (batch, H, W, 64)
    refined = conv2d(input_shape[-1], 1, activation="tanh", name="conv_out")(hidden)
    return keras.Model(synthetic, refined, name="refiner")             # (batch, H, W, C) in [-1, 1]


def build_discriminator(input_shape):
    """Local-patch discriminator: each output position judges one receptive field."""
    images = keras.Input(input_shape, name="images")
    hidden = conv2d(96, 3, strides=2, name="conv1")(images)           # (batch, 18, 28, 96) for 35x55
    hidden = conv2d(64, 3, strides=2, name="conv2")(hidden)           # (batch, 9, 14, 64)
    hidden = keras.layers.MaxPooling2D(3, strides=1, padding="valid", name="pool")(hidden)  # (batch, 7, 12, 64)
    hidden = conv2d(32, 3, name="conv3")(hidden)
    hidden = conv2d(32, 1, name="conv4")(hidden)
    logits = conv2d(2, 1, activation=None, name="logits")(hidden)      # (batch, 7, 12, 2) patch logits
    return keras.Model(images, logits, name="discriminator")


def patch_cross_entropy(logits, label):
    """Cross-entropy of every patch against one label, summed over patches: (batch,)."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.fill(tf.shape(logits)[:-1], label)
    per_patch = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(per_patch, axis=[1, 2])


def self_regularization(refined, synthetic, reg_scale):
    """reg_scale * sum |refined - synthetic| per image: keeps the annotation valid. (batch,)"""
    difference = tf.cast(refined, tf.float32) - tf.cast(synthetic, tf.float32)
    return reg_scale * tf.reduce_sum(tf.abs(difference), axis=[1, 2, 3])


def refiner_losses(refined_logits, refined, synthetic, reg_scale):
    """The refiner's realism, regularization and total loss, each a batch mean."""
    realism = patch_cross_entropy(refined_logits, REAL_LABEL)
    regularization = self_regularization(refined, synthetic, reg_scale)
    return {
        "realism_loss": tf.reduce_mean(realism),
        "regularization_loss": tf.reduce_mean(regularization),
        "loss": tf.reduce_mean(realism + regularization),
    }


def discriminator_losses(fake_logits, real_logits):
    """Fake (half fresh, half history) should score fake, real should score real; batch means."""
    fake = patch_cross_entropy(fake_logits, FAKE_LABEL)
    real = patch_cross_entropy(real_logits, REAL_LABEL)
    return {
        # The original names the real images' loss `synthetic_d_loss`; the tag is kept.
        "synthetic_d_loss": tf.reduce_mean(real),
        "refiner_d_loss_with_history": tf.reduce_mean(fake),
        "discrim_loss_with_history": tf.reduce_mean(fake + real),
    }
