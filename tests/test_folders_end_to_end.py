"""--data_set=folders in colour, as a user runs it: train on two folder trees, resume, refine the tree, reload."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import checkpoint_counters, folder_flags, main_in_process
from test_end_to_end import events_of
from test_folder_data import write_images

SCHEDULE = ["--batch_size=4", "--buffer_size=16", "--initial_K_g=2", "--initial_K_d=2", "--K_g=1", "--K_d=1",
            "--log_step=2", "--eval_step=2", "--probe_images=20", "--sample_image_grid=2,2", "--max_image_summary=2",
            "--checkpoint_secs=3600"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Colour renders in a tree (24x30 PNG) and colour camera images (16x20 JPEG); a run of two iterations."""
    root = tmp_path_factory.mktemp("folders")
    synthetic, real = root / "renders", root / "camera"
    for part in range(2):
        write_images(synthetic / f"part{part}", 50, size=(24, 30), seed=part, start=50 * part)
    write_images(real, 100, size=(16, 20), suffix="jpg", seed=5)
    folders = ["--data_set=folders", f"--synthetic_image_dir={synthetic}", f"--real_image_dir={real}",
               *folder_flags(root / "data", root)]
    before = _stamps(synthetic)
    result = main_in_process(*folders, *SCHEDULE, "--max_step=2")
    assert result.returncode == 0, result.stderr[-3000:]
    (name,) = os.listdir(root / "logs")
    return root, folders, name, result, before


def _stamps(folder):
    return {os.path.join(top, entry): os.stat(os.path.join(top, entry)).st_mtime_ns
            for top, dirs, files in os.walk(folder) for entry in dirs + files}


def test_the_input_and_networks_follow_the_images_and_say_why(run):
    root, _, name, result, _ = run
    params = json.loads((root / "logs" / name / "params.json").read_text())
    assert (params["input_height"], params["input_width"], params["input_channel"]) == (16, 20, 3)
    assert params["self_regularization"] == "colour_cast"
    assert "input 16x20x3 (the real images' median size 16x20" in result.stdout
    assert "the eye networks" in result.stdout


def test_the_run_ends_with_a_report_a_user_can_act_on(run):
    root, folders, name, result, _ = run
    assert "[*] Done." in result.stdout and "Probes at refiner step 4: realism accuracy" in result.stdout
    assert f"tensorboard --logdir={root / 'logs'}" in result.stdout
    refine = result.stdout.split("Refine the synthetic images with it: ")[1].splitlines()[0]
    assert refine.startswith(f"python main.py --is_train=False --load_path={name} --data_set=folders")
    assert f"--synthetic_image_dir={root / 'renders'}" in refine


def test_training_writes_colour_samples_summaries_and_probes_without_a_label_shift(run):
    root, _, name, _, _ = run
    model_dir = root / "logs" / name
    assert checkpoint_counters(model_dir) == (2 + 2, 2 + 2, 2)
    grid = Image.open(root / "samples" / name / "2.png")
    assert grid.mode == "RGB" and grid.size == (2 * 20 + 3, 2 * 16 + 3)
    events = events_of(model_dir)
    tags = set(events.Tags()["tensors"])
    assert {"probe/realism_accuracy", "probe/red_balance_distance", "probe/blue_balance_distance"} <= tags
    assert "probe/label_shift" not in tags  # no labels, so no proxy of one
    encoded = tf.make_ndarray(events.Tensors("test_refined_images")[0].tensor_proto)[2]
    assert tf.io.decode_png(encoded).shape == (16, 20, 3)


def test_resuming_continues_the_run(run):
    root, folders, name, _, _ = run
    result = main_in_process(*folders, *SCHEDULE, "--max_step=3", f"--load_path={name}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored" in result.stdout and "Decoding" not in result.stdout  # nothing decoded again
    assert checkpoint_counters(root / "logs" / name) == (2 + 3, 2 + 3, 3)


def test_test_mode_refines_the_tree_with_its_stems_and_the_export_takes_colour(run):
    root, folders, name, _, before = run
    synthetic = next(flag.split("=", 1)[1] for flag in folders if flag.startswith("--synthetic_image_dir"))
    result = main_in_process(*folders, "--is_train=False", f"--load_path={name}")
    assert result.returncode == 0, result.stderr[-3000:]
    output = root / "outputs" / name
    written = sorted(str(path.relative_to(output)) for path in output.rglob("*.png"))
    assert written == sorted(f"part{index // 50}/img{index}.png" for index in range(100))
    refined = np.asarray(Image.open(output / "part1" / "img60.png"))
    assert refined.shape == (16, 20, 3)
    exported = keras.models.load_model(root / "logs" / name / "refiner.keras", compile=False)
    assert exported.input_shape == (None, 16, 20, 3) and exported.output_shape == (None, 16, 20, 3)
    # The export refines the image test mode did (the synthetic image as training decoded it), within a level.
    result = main_in_process(*folders, "--is_train=False", f"--load_path={root / 'logs' / name / 'refiner.keras'}",
                             f"--output_dir={root / 'again'}")
    assert result.returncode == 0, result.stderr[-3000:]
    again = np.asarray(Image.open(root / "again" / name / "part1" / "img60.png"))  # named after its run
    assert np.abs(again.astype(int) - refined).max() <= 1
    assert _stamps(synthetic) == before  # nothing was ever written into the synthetic folder


def test_the_estimation_task_is_a_one_line_error(run):
    _, folders, _, _, _ = run
    result = main_in_process(*folders, "--task=estimation")
    assert result.returncode == 1 and "no labels" in result.stderr and result.stderr.count("\n") == 1
