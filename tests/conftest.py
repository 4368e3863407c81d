"""Shared fixtures: a tiny config so every test runs in seconds on a CPU."""
import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from config import get_config  # noqa: E402

TINY_FLAGS = ["--batch_size=4", "--buffer_size=16", "--initial_K_g=2", "--initial_K_d=2", "--max_step=2",
              "--log_step=1", "--sample_image_grid=2,2", "--max_image_summary=2", "--checkpoint_secs=3600"]


@pytest.fixture
def tiny_config(tmp_path):
    """The fixture config of STYLE.md: batch 4, buffer 16, two steps of each phase, a 2x2 grid."""
    return get_config(TINY_FLAGS + [f"--log_dir={tmp_path / 'logs'}", f"--sample_dir={tmp_path / 'samples'}",
                                    f"--output_dir={tmp_path / 'outputs'}"])
