"""The history buffer: append until full, then replace half a batch at random; sample half a batch."""
import numpy as np
import pytest
import tensorflow as tf

from data.history_buffer import HistoryBuffer


def batch_of(value, size=4):
    return tf.fill((size, 2, 3, 1), float(value))


def test_push_appends_until_full():
    buffer = HistoryBuffer(capacity=10, image_shape=(2, 3, 1), batch_size=4, seed=0)
    assert len(buffer) == 0
    buffer.push(batch_of(1))
    buffer.push(batch_of(2))
    assert len(buffer) == 8
    buffer.push(batch_of(3))  # only two slots left: the rest of the batch is dropped
    assert len(buffer) == 10
    stored = buffer.images.numpy()[:, 0, 0, 0]
    np.testing.assert_array_equal(stored, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    assert buffer.images.dtype == tf.float32


def test_full_buffer_replaces_at_most_half_a_batch():
    buffer = HistoryBuffer(capacity=8, image_shape=(2, 3, 1), batch_size=4, seed=0)
    buffer.push(batch_of(1))
    buffer.push(batch_of(1))
    buffer.push(batch_of(7))
    stored = buffer.images.numpy()[:, 0, 0, 0]
    assert len(buffer) == 8
    assert 1 <= np.sum(stored == 7) <= 2 and np.sum(stored == 1) >= 6


def test_replacement_takes_images_of_the_new_batch():
    buffer = HistoryBuffer(capacity=4, image_shape=(1, 1, 1), batch_size=4, seed=1)
    buffer.push(tf.zeros((4, 1, 1, 1)))
    new = tf.reshape(tf.constant([10.0, 11.0, 12.0, 13.0]), (4, 1, 1, 1))
    for _ in range(20):
        buffer.push(new)
    stored = set(buffer.images.numpy().ravel().tolist())
    assert stored <= {0.0, 10.0, 11.0, 12.0, 13.0} and len(stored - {0.0}) >= 2


def test_sample_draws_half_a_batch_of_stored_images():
    buffer = HistoryBuffer(capacity=16, image_shape=(2, 3, 1), batch_size=6, seed=0)
    buffer.push(batch_of(5, size=6))
    sample = buffer.sample()
    assert sample.shape == (3, 2, 3, 1)
    np.testing.assert_array_equal(sample.numpy(), 5.0)  # never the empty slots beyond size


def test_fixed_seed_gives_the_same_samples():
    def draws(seed):
        buffer = HistoryBuffer(capacity=16, image_shape=(1, 1, 1), batch_size=4, seed=seed)
        buffer.push(tf.reshape(tf.range(4, dtype=tf.float32), (4, 1, 1, 1)))
        buffer.push(tf.reshape(tf.range(4, 8, dtype=tf.float32), (4, 1, 1, 1)))
        return np.concatenate([buffer.sample().numpy().ravel() for _ in range(5)])
    np.testing.assert_array_equal(draws(3), draws(3))
    assert not np.array_equal(draws(3), draws(4))


def test_sampling_an_empty_buffer_is_a_clear_error():
    buffer = HistoryBuffer(capacity=4, image_shape=(1, 1, 1), batch_size=2, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="history buffer is empty"):
        buffer.sample()


def test_contents_and_random_state_survive_a_checkpoint(tmp_path):
    buffer = HistoryBuffer(capacity=8, image_shape=(1, 1, 1), batch_size=4, seed=0)
    buffer.push(tf.reshape(tf.range(4, dtype=tf.float32), (4, 1, 1, 1)))
    path = tf.train.Checkpoint(buffer=buffer).save(str(tmp_path / "ckpt"))
    expected = [buffer.sample().numpy() for _ in range(3)]
    restored = HistoryBuffer(capacity=8, image_shape=(1, 1, 1), batch_size=4, seed=99)
    tf.train.Checkpoint(buffer=restored).restore(path).assert_consumed()
    assert len(restored) == 4
    for sample in expected:
        np.testing.assert_array_equal(restored.sample().numpy(), sample)
