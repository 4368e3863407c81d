"""Checkpoints written before the redesign (tests/fixtures/checkpoints_v1, see its README) still restore."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from checkpoints import load_refiner
from config import get_config
from data.data_set import EstimationSets
from estimation import EstimatorTrainer
from model import GAZE_ESTIMATION
from trainer import Trainer
from utils import run_paths

OLD = Path(__file__).parent / "fixtures" / "checkpoints_v1"
NO_DATA = None  # restoring reads no data


def copy_run(name, tmp_path):
    """The old run folder, copied so a test may write into it; its flags as the old run's command line."""
    shutil.copytree(OLD / name, tmp_path / "logs" / name)
    return tmp_path / "logs" / name


def stored(model_dir, key):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    return reader.get_tensor(f"{key}/.ATTRIBUTES/VARIABLE_VALUE")


def assert_weights_equal(model_dir, prefix, variables):
    """The optimizer tracks the networks' variables in order, so the file keys them by its index."""
    for index, variable in enumerate(variables):
        np.testing.assert_array_equal(variable.numpy(), stored(model_dir, f"{prefix}/_trainable_variables/{index}"))


def test_an_old_generative_checkpoint_restores_every_object_and_trains_on(tmp_path):
    model_dir = copy_run("generative_old", tmp_path)
    config = get_config(["--batch_size=4", "--buffer_size=16", "--initial_K_g=2", "--initial_K_d=2", "--max_step=2",
                         f"--log_dir={tmp_path / 'logs'}", "--load_path=old"])
    trainer = Trainer(config, run_paths(config), NO_DATA)
    assert trainer.restore().endswith("ckpt-10")
    counters = (int(trainer.refiner_optimizer.iterations), int(trainer.discriminator_optimizer.iterations),
                int(trainer.step))
    assert counters == (6, 4, 2)
    assert_weights_equal(model_dir, "refiner_optimizer", trainer.refiner.trainable_variables)
    assert_weights_equal(model_dir, "discriminator_optimizer", trainer.discriminator.trainable_variables)
    assert len(trainer.history_buffer) == 16
    np.testing.assert_array_equal(trainer.history_buffer.images.numpy(), stored(model_dir, "history_buffer/images"))
    losses, _ = trainer.refiner_step(tf.zeros((4, 35, 55, 1)))  # the restored optimizer state goes on
    assert np.isfinite(float(losses["loss"])) and int(trainer.refiner_optimizer.iterations) == 7


def test_an_old_generative_checkpoint_gives_test_mode_its_refiner(tmp_path):
    model_dir = copy_run("generative_old", tmp_path)
    refiner = load_refiner(tf.train.latest_checkpoint(str(model_dir)), (35, 55, 1))
    assert_weights_equal(model_dir, "refiner_optimizer", refiner.trainable_variables)


@pytest.mark.parametrize("which", ["training state", "best weights"])
def test_an_old_estimation_checkpoint_restores(tmp_path, which):
    model_dir = copy_run("estimation_old", tmp_path)
    config = get_config(["--task=estimation", "--input_height=19", "--input_width=19", "--batch_size=64",
                         f"--log_dir={tmp_path / 'logs'}", "--load_path=old"])
    no_images = (np.zeros((0, 19, 19, 1), np.uint8), np.zeros((0, 3), np.float32))
    sets = EstimationSets(None, no_images, no_images, (19, 19, 1), refined=False)  # a validation split: gaze's
    trainer = EstimatorTrainer(config, run_paths(config), sets, GAZE_ESTIMATION)
    if which == "training state":
        trainer._restore()
        assert int(trainer.epoch) == 1 and int(trainer.optimizer.iterations) == 42
    else:
        assert trainer._restore_evaluated()[0].endswith("estimator-1")
    assert int(trainer.best_epoch) == 1 and np.isfinite(float(trainer.best_error))
    assert_weights_equal(model_dir, "optimizer", trainer.estimator.trainable_variables)
