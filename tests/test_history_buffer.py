"""The history buffer, as the original's: whole batches appended while they fit, then half a batch of
random filled slots replaced a push; half a batch sampled from the filled slots. The warm-up pushes."""
import itertools
import types

import numpy as np
import pytest
import tensorflow as tf

from data.history_buffer import HistoryBuffer


def batch_of(value, size=4):
    return tf.fill((size, 2, 3, 1), float(value))


def stored(buffer):
    return buffer.images.numpy()[:, 0, 0, 0]


def test_push_appends_whole_batches_while_they_fit():
    buffer = HistoryBuffer(capacity=10, image_shape=(2, 3, 1), batch_size=4, seed=0)
    assert len(buffer) == 0
    buffer.push(batch_of(1))
    buffer.push(batch_of(2))
    assert len(buffer) == 8
    np.testing.assert_array_equal(stored(buffer), [1, 1, 1, 1, 2, 2, 2, 2, 0, 0])
    assert buffer.images.dtype == tf.float32


def test_the_tail_stays_empty_when_the_capacity_is_not_a_multiple_of_the_batch():
    buffer = HistoryBuffer(capacity=10, image_shape=(2, 3, 1), batch_size=4, seed=0)
    for value in range(1, 41):
        buffer.push(batch_of(value))  # from the third on, none fits: replacements only, among slots 0..7
        assert len(buffer) == min(value, 2) * 4
        np.testing.assert_array_equal(stored(buffer)[8:], 0)
    assert set(stored(buffer)[:8]) - {1, 2}  # later pushes did land in the filled slots


def test_each_push_past_the_first_that_does_not_fit_replaces_half_a_batch_of_filled_slots():
    """Exactly the original's rule: slots drawn from [0, size), images from the batch, both with replacement."""
    capacity, batch_size, seed = 20, 6, 5  # 3 batches fill 18 slots; 2 stay empty
    buffer = HistoryBuffer(capacity=capacity, image_shape=(1, 1, 1), batch_size=batch_size, seed=seed)
    twin = tf.random.Generator.from_seed(seed)  # the buffer's draws, in the same order
    expected = np.zeros(capacity, np.float32)
    for push in range(12):
        batch = np.arange(batch_size, dtype=np.float32) + 100 * (push + 1)  # every image of every push distinct
        buffer.push(tf.reshape(batch, (batch_size, 1, 1, 1)))
        if push < 3:
            expected[push * batch_size:(push + 1) * batch_size] = batch
        else:
            slots = twin.uniform([batch_size // 2], 0, 18, dtype=tf.int32).numpy()
            picks = twin.uniform([batch_size // 2], 0, batch_size, dtype=tf.int32).numpy()
            assert slots.max() < 18
            expected[slots] = batch[picks]
            changed = np.isin(stored(buffer), batch)
            assert 1 <= changed.sum() <= batch_size // 2  # half a batch of slots, some perhaps drawn twice
        np.testing.assert_array_equal(stored(buffer), expected)
        assert len(buffer) == min(push + 1, 3) * batch_size


def test_full_buffer_replaces_at_most_half_a_batch():
    buffer = HistoryBuffer(capacity=8, image_shape=(2, 3, 1), batch_size=4, seed=0)
    buffer.push(batch_of(1))
    buffer.push(batch_of(1))
    buffer.push(batch_of(7))
    assert len(buffer) == 8
    assert 1 <= np.sum(stored(buffer) == 7) <= 2 and np.sum(stored(buffer) == 1) >= 6


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


def test_samples_come_from_old_pushes_in_the_proportions_of_the_rule():
    """The buffer is a history: after many pushes, a sample's age (pushes since it was pushed) follows the rule.

    Each push writes h = batch/2 slots drawn with replacement from the S filled ones, so it hits a given slot
    with probability q = 1 - (1 - 1/S)^h, and a slot holds the image of the push of age a (0: the latest) with
    probability q (1 - q)^a. A buffer that keeps only recent batches, or a sample of the newest, fails this.
    """
    capacity, batch_size, replacing = 1024, 64, 300
    buffer = HistoryBuffer(capacity=capacity, image_shape=(1, 1, 1), batch_size=batch_size, seed=7)
    fills = capacity // batch_size
    pushes = fills + replacing
    for push in range(pushes):
        buffer.push(tf.fill((batch_size, 1, 1, 1), float(push)))  # each batch labelled with its push number
    ages = pushes - 1 - np.concatenate([buffer.sample().numpy().ravel() for _ in range(200)])
    q = 1 - (1 - 1 / capacity) ** (batch_size // 2)
    survive = lambda a: (1 - q) ** a  # noqa: E731  P(age >= a), for a <= replacing (older: the fill batches)
    edges = [0, 8, 24, 56]
    for low, high in zip(edges, edges[1:] + [None]):
        expected = survive(low) - (survive(high) if high is not None else 0)
        observed = np.mean((ages >= low) & (ages < high if high is not None else True))
        assert abs(observed - expected) < 0.06, (low, high, observed, expected)
    assert abs(ages.mean() - (1 - q) / q) < 0.15 * (1 - q) / q
    assert np.mean(ages == 0) < 0.1  # the latest push is a small part of the history


def warm_up_pushes(initial_K_g, monkeypatch, tmp_path):
    """The refiner warm-up steps (0-based) that push, and the trainer: its steps stubbed, its buffer real."""
    from conftest import TINY_FLAGS, folder_flags
    from config import get_config
    from trainer import Trainer
    from utils import run_paths

    config = get_config([*TINY_FLAGS, f"--initial_K_g={initial_K_g}", *folder_flags(tmp_path, tmp_path)])
    trainer = Trainer(config, run_paths(config), types.SimpleNamespace(synthetic_paths=[], real_images=None))
    trainer.supervisor = types.SimpleNamespace(checkpoint_and_continue=lambda step: True)
    monkeypatch.setattr(trainer, "_log_refiner", lambda losses: None)  # summaries are not what is tested
    trainer.synthetic_batches = (tf.fill((4, 35, 55, 1), float(step)) for step in itertools.count())
    trainer.warm_up_refiner_step = lambda synthetic: ({}, synthetic)  # "refined": the step's number in every pixel
    pushed, push = [], trainer.history_buffer.push
    monkeypatch.setattr(trainer.history_buffer, "push", lambda batch: (pushed.append(int(batch[0, 0, 0, 0])),
                                                                        push(batch)))
    assert trainer._warm_up_refiner()
    return pushed, trainer


@pytest.mark.parametrize("initial_K_g, steps", [(1000, range(901, 1000)), (100, range(91, 100)), (11, [10]),
                                                (10, []), (1, []), (0, [])])
def test_refiner_warm_up_pushes_on_the_steps_past_nine_tenths(initial_K_g, steps, monkeypatch, tmp_path):
    pushed, trainer = warm_up_pushes(initial_K_g, monkeypatch, tmp_path)
    assert pushed == list(steps)
    assert len(trainer.history_buffer) == min(4 * len(pushed), 16)


def test_a_warm_up_without_pushes_seeds_the_buffer_with_one_refined_batch(monkeypatch, tmp_path):
    pushed, trainer = warm_up_pushes(10, monkeypatch, tmp_path)
    assert pushed == [] and len(trainer.history_buffer) == 0
    samples = []
    monkeypatch.setattr(trainer, "_discriminate", lambda: samples.append(trainer.history_buffer.sample()))
    assert trainer._warm_up_discriminator()  # the original crashed here, sampling an empty buffer
    assert len(pushed) == 1 and len(trainer.history_buffer) == 4 and len(samples) == 2


@pytest.mark.parametrize("K_g, seeded", [(2, False), (0, True)])
def test_the_adversarial_phase_seeds_only_when_it_would_sample_before_pushing(K_g, seeded, monkeypatch, tmp_path):
    """With no warm-ups the original's first iteration pushed K_g batches before sampling: no seed then."""
    pushed, trainer = warm_up_pushes(0, monkeypatch, tmp_path)
    trainer.config.initial_K_d, trainer.config.K_g = 0, K_g
    trainer.refiner_step = lambda synthetic: ({}, synthetic)
    sizes = []
    monkeypatch.setattr(trainer, "_discriminate", lambda: sizes.append(len(trainer.history_buffer)))
    assert trainer._train_adversarially()
    first = 4 if seeded else 4 * K_g  # the seed alone, or the iteration's K_g pushes
    assert sizes[0] == first and len(pushed) == (1 if seeded else 2 * K_g)
