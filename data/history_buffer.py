"""History of refined images (the paper's section 2.3).

The discriminator sees half a batch of refined images from earlier refiner
versions, so the refiner cannot win by jumping to a pattern the current
discriminator has forgotten. The buffer lives in TensorFlow variables: push
and sample run next to the training step without copies through the host,
and a tf.train.Checkpoint saves its contents and its random state with the
models, so a resumed run continues with the same history.
"""
import tensorflow as tf


class HistoryBuffer(tf.Module):
    """Up to `capacity` refined images, as the original's: push appends whole batches while they fit; from
    the first batch that does not, each push replaces half a batch of random filled slots.

    The slots past the last whole batch stay empty (buffer_size 25600 holds 50 batches of 512; 100 of 500
    would hold 51 and leave 100 slots unused), and sample() draws from the filled ones only.
    """

    def __init__(self, capacity, image_shape, batch_size, seed):
        super().__init__(name="history_buffer")
        self.capacity = int(capacity)
        self.half_batch = int(batch_size) // 2
        # float32, not the original's float64: the default 25600 images take 197 MB, not 394.
        self.images = tf.Variable(tf.zeros((self.capacity, *image_shape), tf.float32), trainable=False, name="images")
        self.size = tf.Variable(0, dtype=tf.int32, trainable=False, name="size")
        self.rng = tf.random.Generator.from_seed(seed)

    @tf.function
    def push(self, batch):
        """Store a batch of refined images: appended whole while size + len(batch) <= capacity; otherwise
        half a batch of slots drawn from the filled ones [0, size) take images drawn from the batch (both
        with replacement, as the original's numpy rng.choice)."""
        batch = tf.cast(batch, tf.float32)
        count = tf.shape(batch)[0]
        if self.size + count <= self.capacity:
            slots = self.size + tf.range(count)
            self.images.scatter_nd_update(slots[:, None], batch)
            self.size.assign_add(count)
        else:
            # Empty here only for a batch larger than the buffer, which the configuration refuses.
            check = tf.debugging.assert_positive(self.size, message="a batch larger than the empty history buffer")
            with tf.control_dependencies([check]):
                slots = self.rng.uniform([self.half_batch], 0, self.size, dtype=tf.int32)
            picks = self.rng.uniform([self.half_batch], 0, count, dtype=tf.int32)
            self.images.scatter_nd_update(slots[:, None], tf.gather(batch, picks))

    @tf.function
    def sample(self):
        """Half a batch of stored images drawn at random (with replacement, as the original)."""
        check = tf.debugging.assert_positive(self.size, message="the history buffer is empty: push refined images first")
        with tf.control_dependencies([check]):  # uniform() over an empty range fails first, and less clearly
            picks = self.rng.uniform([self.half_batch], 0, self.size, dtype=tf.int32)
        return tf.gather(self.images, picks)

    def __len__(self):
        return int(self.size.numpy())
