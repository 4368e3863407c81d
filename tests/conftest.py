"""Shared fixtures and helpers: a tiny config, the command line as a user runs it, checkpoint readers."""
import contextlib
import io
import os
import subprocess
import sys
import types

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from config import get_config  # noqa: E402
from utils import run_paths  # noqa: E402

TINY_FLAGS = ["--batch_size=4", "--buffer_size=16", "--initial_K_g=2", "--initial_K_d=2", "--max_step=2",
              "--log_step=1", "--sample_image_grid=2,2", "--max_image_summary=2", "--checkpoint_secs=3600"]


@pytest.fixture
def tiny_config(tmp_path):
    """The fixture config of STYLE.md: batch 4, buffer 16, two steps of each phase, a 2x2 grid."""
    return get_config(TINY_FLAGS + [f"--log_dir={tmp_path / 'logs'}", f"--sample_dir={tmp_path / 'samples'}",
                                    f"--output_dir={tmp_path / 'outputs'}"])


@pytest.fixture
def tiny_paths(tiny_config):
    return run_paths(tiny_config)


def folder_flags(data_dir, root):
    """--data_dir and the three output folders under root, so a test writes nothing in the repository."""
    return [f"--data_dir={data_dir}", f"--log_dir={root / 'logs'}", f"--sample_dir={root / 'samples'}",
            f"--output_dir={root / 'outputs'}"]


def run_main(*flags, timeout=240):
    """`python main.py FLAGS` as a user runs it; the finished process, stdout and stderr as text."""
    return subprocess.run([sys.executable, "main.py", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def main_in_process(*flags):
    """`main.main(FLAGS)` in this process, without TensorFlow's start-up: exit status, stdout, stderr.

    For modes that set up no devices: single-device training, test mode, evaluation and errors; fp32 is
    passed so `auto` never leaves a bfloat16 policy behind for later tests.
    """
    import main  # here: importing it imports TensorFlow
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main.main([*flags, "--mixed_precision=fp32"])
    return types.SimpleNamespace(returncode=status, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def checkpoint_values(model_dir):
    """{key: value} of the counters and the history buffer in the latest checkpoint of model_dir."""
    import tensorflow as tf  # here, so collecting the tests that need no TensorFlow stays quick
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key.endswith("iterations/.ATTRIBUTES/VARIABLE_VALUE") or key.startswith(("step/", "history_buffer/"))}


def checkpoint_counters(model_dir):
    """(refiner steps, discriminator steps, adversarial iterations) in the latest checkpoint of model_dir."""
    values = checkpoint_values(model_dir)
    find = lambda prefix: int(next(value for key, value in values.items() if key.startswith(prefix)))  # noqa: E731
    return find("refiner_optimizer/"), find("discriminator_optimizer/"), find("step/")


# The slowest files, slowest first. pytest.ini gives each process a whole file at a time, in this order:
# started first, the long files end together instead of one process running the last of them alone.
SLOW_FILES = ["test_faults.py", "test_multi_worker.py", "test_distribution.py", "test_probes.py", "test_worker_pool.py",
              "test_refinement_options.py", "test_trainer_steps.py", "test_hand_end_to_end.py", "test_end_to_end.py",
              "test_hand_estimation.py"]


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: a file's own order is kept
