"""The README's commands on the bundled sample, as a user runs them: train, resume, refine."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from checkpoints import load_refiner
from conftest import checkpoint_counters, folder_flags, main_in_process, run_main
from data.gaze_sample import write_sample

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


def events_of(model_dir):
    events = event_accumulator.EventAccumulator(str(model_dir), size_guidance={"tensors": 0})
    events.Reload()
    return events


def steps_of(events, tag):
    return [event.step for event in events.Tensors(tag)]


def test_training_writes_the_original_tensorboard_tags_on_each_networks_steps(run):
    root, _, name, _ = run
    events = events_of(root / "logs" / name)
    assert SCALAR_TAGS | {"test_refined_images", "test_synthetic_images"} <= set(events.Tags()["tensors"])
    # As the original: each network's summaries at its own steps that are multiples of log_step (2),
    # pre-training included: refiner steps 1..4 pre-training then 5..8 (2 iterations of K_g=2), and
    # discriminator steps 1..2 then 3..4.
    for tag in ("refiner/realism_loss", "refiner/regularization_loss", "refiner/loss"):
        expected = [2, 4, 6, 8] if tag != "refiner/realism_loss" else [6, 8]  # no realism in pre-training
        assert steps_of(events, tag) == expected, tag
    assert steps_of(events, "test_refined_images") == [2, 4, 6, 8]
    assert steps_of(events, "test_synthetic_images") == [2]
    for tag in ("synthetic_d_loss", "refiner_d_loss_with_history", "discrim_loss_with_history"):
        assert steps_of(events, tag) == [2, 4], tag
    assert all(np.isfinite(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors("refiner/loss"))


def test_training_writes_sample_grids_named_by_refiner_step_and_real_samples(run):
    root, _, name, _ = run
    assert sorted(os.listdir(root / "samples" / name), key=lambda file: int(file.split(".")[0])) == [
        "2.png", "4.png", "6.png", "8.png"]
    with Image.open(root / "samples" / name / "8.png") as grid:
        assert grid.size == (2 * 55 + 3, 2 * 35 + 3)
    assert os.path.exists(root / "samples" / "real_0.png")


def test_resume_continues_the_counters_without_pretraining_again(run):
    root, folders, name, _ = run
    result = main_in_process(*folders, *SCHEDULE, "--max_step=3", f"--load_path={name}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored" in result.stdout
    assert checkpoint_counters(root / "logs" / name) == (4 + 3 * 2, 2 + 3 * 1, 3)
    assert len(os.listdir(root / "logs")) == 1  # the same run folder, not a new one
    events = events_of(root / "logs" / name)  # the axes go on: refiner step 10, no discriminator step 6
    assert steps_of(events, "refiner/loss") == [2, 4, 6, 8, 10]
    assert steps_of(events, "discrim_loss_with_history") == [2, 4]
    assert "10.png" in os.listdir(root / "samples" / name)


def trained_refiner(root, name):
    """The run's refiner from its latest checkpoint, computing in float32 whatever precision trained it."""
    keras.mixed_precision.set_global_policy("float32")  # as main_in_process leaves it; pinned, never `auto`'s
    refiner = load_refiner(tf.train.latest_checkpoint(str(root / "logs" / name)), (35, 55, 1))
    assert {layer.compute_dtype for layer in refiner.layers} == {"float32"}
    return refiner


def network_inputs(paths):
    """Image files as test mode must feed them to the refiner: grey, resized as TF 0.12 did (bilinear,
    no antialiasing, no half-pixel centres) to 35x55, in [-1, 1]. (N, 35, 55, 1) float32."""
    images = []
    for path in paths:
        pixels = tf.io.decode_image(tf.io.read_file(str(path)), channels=1, expand_animations=False)
        images.append(tf.raw_ops.ResizeBilinear(images=tf.cast(pixels, tf.float32)[None], size=(35, 55),
                                                align_corners=False, half_pixel_centers=False)[0])
    return np.stack(images) / 127.5 - 1.0


def assert_written_by(refiner, inputs, outputs):
    """Each written PNG is refiner(its input) quantised to uint8, within 1, and differs from its input.

    The second check makes the first tell: a test mode that wrote its inputs unrefined fails it, and a
    refiner with other weights (untrained ones) misses the first by far more than 1.
    """
    images = network_inputs(inputs)
    expected = np.clip(np.rint((refiner(images).numpy()[..., 0].astype(np.float64) + 1.0) * 127.5), 0, 255)
    unrefined = np.clip(np.rint((images[..., 0].astype(np.float64) + 1.0) * 127.5), 0, 255)
    for index, output in enumerate(outputs):
        with Image.open(output) as image:
            written = np.asarray(image, dtype=np.float64)
        assert np.abs(written - expected[index]).max() <= 1, f"{output} is not the trained refiner's output"
        assert np.abs(written - unrefined[index]).mean() > 2, f"{output} is its input, not refined"


def test_refine_writes_one_image_per_crop(run):
    root, folders, name, _ = run
    result = main_in_process(*folders, "--is_train=False", f"--load_path={name}", "--batch_size=5")
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = sorted(os.listdir(root / "outputs" / name))
    crops = [file for file in os.listdir(root / "data" / "gaze" / "UnityEyes") if file.endswith("_cropped.png")]
    assert len(crops) == NUM_SYNTHETIC
    assert sorted(file.replace("_cropped", "_refined") for file in crops) == outputs
    with Image.open(root / "outputs" / name / outputs[0]) as image:
        assert image.size == (55, 35) and image.mode == "L"
    crop_paths = [root / "data" / "gaze" / "UnityEyes" / file.replace("_refined", "_cropped") for file in outputs]
    assert_written_by(trained_refiner(root, name), crop_paths, [root / "outputs" / name / file for file in outputs])


def test_training_leaves_both_exports_with_the_refiners_numbers(run):
    root, _, name, _ = run
    model_dir = root / "logs" / name
    refiner = trained_refiner(root, name)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 35, 55, 1)).astype(np.float32)
    exported = keras.models.load_model(model_dir / "refiner.keras")
    assert {layer.compute_dtype for layer in exported.layers} == {"float32"}  # whatever precision trained it
    # The same float32 weights computing in float32 on both sides: equal up to float32 rounding.
    np.testing.assert_allclose(exported(images).numpy(), refiner(images).numpy(), rtol=0, atol=1e-5)
    assert (model_dir / "refiner_saved_model" / "saved_model.pb").is_file()


def test_refine_a_folder_of_any_eye_images_with_the_keras_file(run, tmp_path):
    root, folders, name, _ = run
    rng = np.random.default_rng(0)
    inputs = {"eye one.png": (36, 60, 3), "Eye (2).JPG": (50, 80), "3.jpeg": (84, 140), "grey eye.png": (35, 55)}
    for file_name, shape in inputs.items():
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
            tmp_path / file_name, format="JPEG" if file_name.lower().endswith(("jpg", "jpeg")) else "PNG")
    (tmp_path / "broken.png").write_bytes((tmp_path / "eye one.png").read_bytes()[:80])
    result = main_in_process(*folders, "--is_train=False",
                             f"--load_path={root / 'logs' / name / 'refiner.keras'}",
                             f"--synthetic_image_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}", "--batch_size=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipped 1 files" in result.stdout and "broken.png" in result.stdout
    outputs = sorted(os.listdir(tmp_path / "out" / name))  # named after the run that exported the file
    assert outputs == sorted(f"{os.path.splitext(file_name)[0]}_refined.png" for file_name in inputs)
    for output in outputs:
        with Image.open(tmp_path / "out" / name / output) as image:
            assert image.size == (55, 35) and image.mode == "L"
    sources = sorted(inputs, key=lambda file_name: f"{os.path.splitext(file_name)[0]}_refined.png")
    assert_written_by(trained_refiner(root, name), [tmp_path / file_name for file_name in sources],
                      [tmp_path / "out" / name / output for output in outputs])


def test_refine_without_a_checkpoint_is_one_clear_error(run):
    _, folders, _, _ = run
    result = main_in_process(*folders, "--is_train=False", "--load_path=missing_run")
    assert result.returncode == 1
    # TensorFlow's own start-up lines may come first; ours is one line, last.
    assert result.stderr.strip().splitlines()[-1].startswith("[!] --load_path=missing_run: no checkpoint in")
    assert "Traceback" not in result.stderr
