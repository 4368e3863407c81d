"""Faults during training: kill -9 and resume, SIGTERM, a NaN loss. Nothing is lost, nothing half-written."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from config import get_config
from data.gaze_data import load_gaze_data
from data.sample_data import write_sample
from trainer import Trainer, TrainingDiverged
from utils import prepare_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULE = ["--initial_K_g=2", "--initial_K_d=2", "--K_g=2", "--K_d=1", "--batch_size=4", "--buffer_size=16",
            "--log_step=1000", "--sample_image_grid=2,2", "--max_image_summary=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_sample(root / "gaze", num_synthetic=16, num_real=12, seed=2)
    return root


def folders(data_dir, root):
    return [f"--data_dir={data_dir}", f"--log_dir={root / 'logs'}", f"--sample_dir={root / 'samples'}",
            f"--output_dir={root / 'outputs'}"]


def checkpoint_state(model_dir):
    """{name: value} of the counters and the buffer's fill in the latest checkpoint."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    state = {}
    for key in reader.get_variable_to_shape_map():
        if key.endswith("iterations/.ATTRIBUTES/VARIABLE_VALUE") or key.startswith(("step/", "history_buffer/")):
            state[key] = reader.get_tensor(key)
    return state


def counters(state):
    find = lambda prefix: int(next(v for k, v in state.items() if k.startswith(prefix)))  # noqa: E731
    return find("refiner_optimizer/"), find("discriminator_optimizer/"), find("step/")


def start_training(data_dir, root, *flags):
    command = [sys.executable, "main.py", *folders(data_dir, root), *SCHEDULE, "--load_path=run", *flags]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoints(process, model_dir, count, timeout=180):
    """Block until the run has written `count` checkpoints (by their index files)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(model_dir) and len([f for f in os.listdir(model_dir) if f.endswith(".index")]) >= count:
            return
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.kill()
    pytest.fail("no checkpoint in time")


def consistent(refiner_steps, discriminator_steps, iterations):
    """Counters a checkpoint between two whole steps can hold, with the SCHEDULE above."""
    if iterations == 0:
        return refiner_steps <= 2 and (discriminator_steps == 0 or refiner_steps == 2)
    return refiner_steps == 2 + 2 * iterations and discriminator_steps == 2 + iterations


def test_kill_9_then_resume_goes_on_from_the_last_checkpoint(data_dir, tmp_path):
    model_dir = tmp_path / "logs" / "generative_run"
    process = start_training(data_dir, tmp_path, "--max_step=100000", "--checkpoint_secs=1")
    wait_for_checkpoints(process, model_dir, 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = checkpoint_state(model_dir)  # the latest checkpoint is complete and readable
    before = counters(state)
    assert consistent(*before)
    assert any(k.startswith("history_buffer/") for k in state)

    resumed = start_training(data_dir, tmp_path, f"--max_step={before[2] + 2}", "--checkpoint_secs=3600")
    stdout, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, stderr[-2000:]
    assert (f"refiner step {before[0]}, discriminator step {before[1]}, iteration {before[2]}") in stdout
    after = counters(checkpoint_state(model_dir))
    assert after[2] == before[2] + 2 and consistent(*after)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_dir, tmp_path):
    model_dir = tmp_path / "logs" / "generative_run"
    process = start_training(data_dir, tmp_path, "--max_step=100000", "--checkpoint_secs=1")
    wait_for_checkpoints(process, model_dir, 1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert "SIGTERM" in stdout + stderr and "Traceback" not in stderr
    refiner_steps, discriminator_steps, iterations = counters(checkpoint_state(model_dir))
    assert consistent(refiner_steps, discriminator_steps, iterations) and iterations < 100000


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    config = get_config([*folders(data_dir, tmp_path), *SCHEDULE, "--load_path=run", "--max_step=2",
                         "--log_step=1", "--checkpoint_secs=3600"])
    prepare_dirs(config)
    data = load_gaze_data(config)
    Trainer(config, data).train()
    good = tf.train.latest_checkpoint(config.model_dir)

    config.max_step = 4
    trainer = Trainer(config, data)
    restore = trainer._restore

    def restore_then_poison(required):
        restored = restore(required)
        # A weight gone bad, as after an exploding update; the output layer's, as ReLU may swallow a NaN.
        bias = trainer.refiner.get_layer("conv_out").bias
        bias.assign(bias * np.nan)
        return restored

    trainer._restore = restore_then_poison
    with pytest.raises(TrainingDiverged, match=r"refiner/\w+ is nan at step 13; the last good checkpoint is .*ckpt-10"):
        trainer.train()
    assert tf.train.latest_checkpoint(config.model_dir) == good
    assert counters(checkpoint_state(config.model_dir)) == (6, 4, 2)
    assert sorted(f for f in os.listdir(config.model_dir) if f.endswith('.index')) == ['ckpt-10.index']
