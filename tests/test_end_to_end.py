"""The README's commands on the bundled sample, as a user runs them: train, resume, refine."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from conftest import checkpoint_counters, folder_flags, run_main
from data.sample_data import write_sample

NUM_SYNTHETIC = 24
SCHEDULE = ["--initial_K_g=4", "--initial_K_d=2", "--K_g=2", "--K_d=1", "--batch_size=4", "--buffer_size=16",
            "--log_step=2", "--sample_image_grid=2,2", "--max_image_summary=2"]
SCALAR_TAGS = {"refiner/realism_loss", "refiner/regularization_loss", "refiner/loss", "synthetic_d_loss",
               "refiner_d_loss_with_history", "discrim_loss_with_history"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny training run on a tiny sample; the tests below read what it left."""
    root = tmp_path_factory.mktemp("run")
    write_sample(root / "data" / "gaze", num_synthetic=NUM_SYNTHETIC, num_real=20, seed=9)
    folders = folder_flags(root / "data", root)
    result = run_main(*folders, *SCHEDULE, "--max_step=2")
    assert result.returncode == 0, result.stderr[-3000:]
    (name,) = os.listdir(root / "logs")
    return root, folders, name, result


def test_training_writes_checkpoint_params_and_counters(run):
    root, _, name, _ = run
    model_dir = root / "logs" / name
    assert name.startswith("generative_")
    assert checkpoint_counters(model_dir) == (4 + 2 * 2, 2 + 2 * 1, 2)
    params = json.loads((model_dir / "params.json").read_text())
    assert params["batch_size"] == 4 and params["max_step"] == 2 and list(params) == sorted(params)
    assert "model_dir" not in params  # the flags only: derived paths are not flags


def test_training_writes_the_original_tensorboard_tags(run):
    root, _, name, _ = run
    events = event_accumulator.EventAccumulator(str(root / "logs" / name), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert SCALAR_TAGS | {"refiner/regularization_loss", "test_refined_images", "test_synthetic_images"} <= tags
    # Pre-training logs its own loss; the adversarial phase every log_step of its two iterations.
    assert [event.step for event in events.Tensors("discrim_loss_with_history")][-1] == 4 + 2 * 2 + 2 + 2 * 1
    assert all(np.isfinite(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors("refiner/loss"))


def test_training_writes_sample_grids_and_real_samples(run):
    root, _, name, _ = run
    grids = sorted(os.listdir(root / "samples" / name), key=lambda file: int(file.split(".")[0]))
    assert grids and grids[-1] == "12.png"
    with Image.open(root / "samples" / name / grids[-1]) as grid:
        assert grid.size == (2 * 55 + 3, 2 * 35 + 3)
    assert os.path.exists(root / "samples" / "real_0.png")


def test_resume_continues_the_counters_without_pretraining_again(run):
    root, folders, name, _ = run
    result = run_main(*folders, *SCHEDULE, "--max_step=3", f"--load_path={name}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored" in result.stdout
    assert checkpoint_counters(root / "logs" / name) == (4 + 3 * 2, 2 + 3 * 1, 3)
    assert len(os.listdir(root / "logs")) == 1  # the same run folder, not a new one


def test_refine_writes_one_image_per_crop(run):
    root, folders, name, _ = run
    result = run_main(*folders, "--is_train=False", f"--load_path={name}", "--batch_size=5")
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = sorted(os.listdir(root / "outputs" / name))
    crops = [file for file in os.listdir(root / "data" / "gaze" / "UnityEyes") if file.endswith("_cropped.png")]
    assert len(crops) == NUM_SYNTHETIC
    assert sorted(file.replace("_cropped", "_refined") for file in crops) == outputs
    with Image.open(root / "outputs" / name / outputs[0]) as image:
        assert image.size == (55, 35) and image.mode == "L"


def test_refine_without_a_checkpoint_is_one_clear_error(run):
    _, folders, _, _ = run
    result = run_main(*folders, "--is_train=False", "--load_path=missing_run")
    assert result.returncode == 1
    # TensorFlow's own start-up lines may come first; ours is one line, last.
    assert result.stderr.strip().splitlines()[-1].startswith("[!] no checkpoint in")
    assert "Traceback" not in result.stderr
