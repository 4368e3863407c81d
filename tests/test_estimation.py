"""The estimation task: the estimator, its error measures, the label conventions, and the CLI end to end."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

import main
from conftest import folder_flags, main_in_process
from config import MIN_ESTIMATOR_INPUT, ConfigError, check_config, get_config
from data import mpiigaze
from data.gaze_data import load_gaze_data
from data.gaze_labels import as_left_eyes, label_crops, look_vec_to_gaze, pupil_positions, read_look_vec, split_by_file
from data.npy_file import NpyRows
from data.pipelines import crops_on_disk, to_network_input
from data.gaze_sample import write_sample
from estimation import EstimatorTrainer
from model import (GAZE_ESTIMATION, MAX_WITHIN_DEGREES, angular_error, build_estimator, build_refiner, euclidean_loss,
                   share_within)
from utils import run_paths

NUM_SYNTHETIC, NUM_REAL = 24, 20
TINY = ["--task=estimation", "--batch_size=8", "--num_epochs=2", "--log_step=1", "--sample_image_grid=2,4",
        "--max_image_summary=2", "--checkpoint_secs=3600"]
REFINED_VALUE = 0.5  # what the constant refiner below outputs everywhere


# ---------------------------------------------------------------- the estimator and its measures

def test_estimator_shapes_follow_the_paper():
    estimator = build_estimator((35, 55, 1))
    assert estimator(np.zeros((2, 35, 55, 1), np.float32)).shape == (2, 3)
    assert estimator.get_layer("flatten").output.shape[1:] == (9600,)  # the paper's "9600"
    assert estimator.get_layer("fc").units == 1000
    assert [estimator.get_layer(f"conv{i}").filters for i in range(1, 6)] == [32, 32, 64, 80, 192]
    smallest = build_estimator((MIN_ESTIMATOR_INPUT, MIN_ESTIMATOR_INPUT, 1))
    assert smallest.get_layer("flatten").output.shape[1:] == (192,)
    with pytest.raises(ValueError):  # one pixel less: a negative size within, and no estimator
        build_estimator((MIN_ESTIMATOR_INPUT - 1, MIN_ESTIMATOR_INPUT, 1))


def test_angular_error_on_known_vectors():
    predicted = np.array([[0, 0, -1], [0, 0, -2], [1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], np.float32)
    gaze = np.array([[0, 0, -1], [0, 0, -1], [0, 1, 0], [0, 0, -1], [1, 0, 0], [0, 0, -1]], np.float32)
    np.testing.assert_allclose(angular_error(predicted, gaze).numpy(), [0, 0, 90, 180, 45, 90], atol=1e-6)
    tilted = [[np.sin(np.radians(7.0)), 0, -np.cos(np.radians(7.0))]]
    np.testing.assert_allclose(angular_error(tilted, [[0.0, 0, -1]]).numpy(), [7.0], atol=1e-6)


def test_share_within_d_degrees_on_known_errors():
    within = share_within(np.array([0.0, 0.5, 7.0, 7.01, 30.0]), MAX_WITHIN_DEGREES).numpy()
    assert within.shape == (26,)
    assert within[0] == pytest.approx(0.2) and within[1] == pytest.approx(0.4)
    assert within[7] == pytest.approx(0.6) and within[8] == pytest.approx(0.8)
    assert within[25] == pytest.approx(0.8)  # 30 degrees is beyond the table
    assert np.all(np.diff(within) >= 0)


def test_euclidean_loss_is_half_the_mean_squared_distance():
    loss = euclidean_loss(np.array([[1.0, 0, 0], [0, 0, 0]]), np.array([[0.0, 0, 0], [0, 2, 0]]))
    assert float(loss) == pytest.approx(0.5 * (1 + 4) / 2)


# ---------------------------------------------------------------- label conventions

def test_look_vec_to_gaze_flips_only_y():
    look_vecs = np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0], [0, 0, 2], [0.6, 0.8, 0]], np.float32)
    expected = np.array([[0, 0, -1], [0, -1, 0], [1, 0, 0], [0, 0, 1], [0.6, -0.8, 0]], np.float32)
    np.testing.assert_allclose(look_vec_to_gaze(look_vecs), expected, atol=1e-6)
    # As UnityEyes writes it, "(x, y, z, 0)": the fourth component is dropped.
    np.testing.assert_allclose(look_vec_to_gaze([0.1, 0.2, -0.9, 0.0]),
                               np.array([0.1, -0.2, -0.9]) / np.linalg.norm([0.1, 0.2, 0.9]), atol=1e-6)
    with pytest.raises(ValueError):
        look_vec_to_gaze([0.0, 0.0, 0.0])


def test_as_left_eyes_mirrors_only_the_right_eyes():
    images = np.random.default_rng(0).integers(0, 256, (2, 36, 60), dtype=np.uint8)
    gaze = np.array([[0.3, -0.2, -0.9], [0.3, -0.2, -0.9]], np.float32)
    originals = images.copy(), gaze.copy()
    flipped, flipped_gaze = as_left_eyes(images, gaze, np.array([False, True]))
    np.testing.assert_array_equal(flipped[0], images[0])
    np.testing.assert_array_equal(flipped[1], images[1][:, ::-1])
    np.testing.assert_allclose(flipped_gaze, [[0.3, -0.2, -0.9], [-0.3, -0.2, -0.9]])
    np.testing.assert_array_equal(images, originals[0])  # the inputs are untouched
    np.testing.assert_array_equal(gaze, originals[1])


def test_split_by_file_is_seeded_disjoint_and_complete():
    training, validation = split_by_file(100, 0.1, seed=7)
    assert len(validation) == 10 and sorted([*training, *validation]) == list(range(100))
    assert all(np.diff(training) > 0) and all(np.diff(validation) > 0)  # each in file order
    np.testing.assert_array_equal(split_by_file(100, 0.1, seed=7)[1], validation)
    assert list(split_by_file(100, 0.1, seed=8)[1]) != list(validation)
    assert [len(part) for part in split_by_file(3, 0.01, seed=1)] == [2, 1]  # at least one each
    assert [len(part) for part in split_by_file(3, 0.99, seed=1)] == [1, 2]


def test_estimation_flags_are_checked():
    for flags, flag in ((["--validation_share=0"], "validation_share"), (["--validation_share=1"], "validation_share"),
                        (["--refiner_path=x"], "refiner_path"), (["--task=estimation", "--input_height=18"],
                                                                 "input_height")):
        with pytest.raises(ConfigError, match=f"--{flag}="):
            check_config(get_config(flags))
    check_config(get_config(["--task=estimation", "--batch_size=7", "--refiner_path=x"]))  # any batch size


# ---------------------------------------------------------------- on the sample data

@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """DATA_DIR with a tiny bundled sample, and the loaded GazeData."""
    root = tmp_path_factory.mktemp("estimation")
    write_sample(root / "data" / "gaze", num_synthetic=NUM_SYNTHETIC, num_real=NUM_REAL, seed=11)
    config = get_config([f"--data_dir={root / 'data'}", f"--sample_dir={root / 'samples'}"])
    return root, load_gaze_data(config)


def test_the_pupil_moves_with_gaze_x_in_both_domains(sample):
    """The conventions on the pixels: after conversion, gaze x > 0 puts the pupil on the image right in both."""
    root, data = sample
    paths, gaze = label_crops(data.synthetic_paths)
    crops = crops_on_disk(paths, (35, 55, 1), 8, str(root))[np.arange(len(paths))][..., 0]
    assert np.corrcoef(pupil_positions(crops)[:, 0], gaze[:, 0])[0, 1] > 0.8
    real, real_gaze = as_left_eyes(data.real_images[np.arange(NUM_REAL)], data.real_gaze, data.real_right_eye)
    assert np.corrcoef(pupil_positions(real)[:, 0], real_gaze[:, 0])[0, 1] > 0.8
    # The raw look_vec y points up; the pupil's row (down) follows the converted y, not the raw one.
    assert np.allclose(gaze[:, 1], -np.array([read_look_vec(path)[1] for path in paths]), atol=1e-3)


def test_the_cache_keeps_which_images_are_right_eyes(sample):
    root, data = sample
    assert data.real_right_eye.shape == (NUM_REAL,) and data.real_right_eye.sum() == NUM_REAL // 2
    gaze_dir = root / "data" / "gaze"
    assert mpiigaze.load_cache(gaze_dir)[2].sum() == NUM_REAL // 2
    np.savez(mpiigaze.cache_files(gaze_dir)[1], gaze=data.real_gaze)  # labels without right_eye
    with pytest.raises(ValueError, match="right_eye"):
        mpiigaze.load_cache(gaze_dir)
    config = get_config([f"--data_dir={root / 'data'}", f"--sample_dir={root / 'samples'}"])
    np.testing.assert_array_equal(load_gaze_data(config).real_right_eye, data.real_right_eye)  # rebuilt


def test_estimation_sets_hold_the_split_the_mirrored_real_eyes_and_the_refined_crops(sample):
    root, _ = sample
    config = get_config([f"--data_dir={root / 'data'}", "--task=estimation", "--validation_share=0.25"])
    data = load_gaze_data(config)
    split = data.split
    assert len(split.training_paths) == 18 and len(split.validation_paths) == 6
    assert not set(split.training_paths) & set(split.validation_paths)
    sets = data.estimation_sets((35, 55, 1), 4, refine=lambda images: images * 0 + REFINED_VALUE)
    assert sets.training[0].shape == (18, 35, 55, 1) and sets.validation[0].shape == (6, 35, 55, 1)
    assert isinstance(sets.training[0], NpyRows)  # on disk, read a batch at a time
    assert np.all(sets.training[0][np.arange(18)] == np.rint((REFINED_VALUE + 1) * 127.5))  # quantised as a PNG
    np.testing.assert_array_equal(sets.training[1], split.training_gaze)
    mirrored_images, mirrored = as_left_eyes(data.real_images[np.arange(NUM_REAL)], data.real_gaze,
                                             data.real_right_eye)
    batches = list(sets.test_batches(4))
    assert [len(images) for images, _ in batches] == [4] * 5
    np.testing.assert_array_equal(np.concatenate([gaze for _, gaze in batches]), mirrored)  # mirrored per batch
    np.testing.assert_allclose(np.concatenate([images for images, _ in batches]),
                               to_network_input(mirrored_images, (35, 55, 1)), atol=1e-6)
    assert sets.facts == dict(right_eyes_mirrored=NUM_REAL // 2, is_sample=False)
    assert not [name for name in os.listdir(root / "data" / "gaze") if name.startswith(".")]  # no temporary left
    evaluation_only = load_gaze_data(get_config([f"--data_dir={root / 'data'}", "--task=estimation",
                                                 "--is_train=False", "--load_path=x"])).estimation_sets((35, 55, 1), 4)
    assert evaluation_only.training is None and len(evaluation_only.test[0]) == NUM_REAL


def test_the_estimator_learns_the_gaze_better_than_predicting_the_mean_gaze(tmp_path):
    """On the sample's real eyes, after 150 steps on 180 synthetic crops (at 21x33: seconds, not minutes).

    An estimator that does not learn, a loss that ignores the labels, or real labels that do not belong to
    their images all stay at the mean gaze's error or above (measured: about 17 degrees, the trained one 12).
    """
    write_sample(tmp_path / "gaze", num_synthetic=200, num_real=100, seed=4, workers=1)
    config = get_config([f"--data_dir={tmp_path}", "--task=estimation", "--batch_size=16", "--input_height=21",
                         "--input_width=33", f"--log_dir={tmp_path / 'logs'}"])
    sets = load_gaze_data(config).estimation_sets((21, 33, 1), 16)
    keras.utils.set_random_seed(0)
    trainer = EstimatorTrainer(config, run_paths(config), sets, GAZE_ESTIMATION)
    batches = iter(sets.training_batches(16, seed=0))
    for _ in range(150):
        trainer.train_step(*next(batches))
    errors = trainer.errors(sets.test_batches(64))[:, 0]
    real_gaze = np.concatenate([gaze for _, gaze in sets.test_batches(64)])
    mean_gaze = np.broadcast_to(np.mean(sets.training[1], axis=0), real_gaze.shape)
    baseline = angular_error(mean_gaze, real_gaze).numpy()
    assert np.mean(errors) < 0.85 * np.mean(baseline), (np.mean(errors), np.mean(baseline))


# ---------------------------------------------------------------- the command line

def flags_for(root):
    return folder_flags(root / "data", root)


@pytest.fixture(scope="module")
def trained(sample):
    """A tiny estimator trained on the raw synthetic sample."""
    root, _ = sample
    result = main_in_process(*flags_for(root), *TINY, "--load_path=synthetic")  # a new run with a known name
    assert result.returncode == 0, result.stderr[-3000:]
    return root, "estimation_synthetic", result


def test_training_evaluates_on_the_real_images_and_writes_the_json(trained):
    root, name, result = trained
    model_dir = root / "logs" / name
    results = json.loads((model_dir / "evaluation.json").read_text())
    assert results["trained_on"] == "synthetic" and results["real_images"] == NUM_REAL
    assert results["right_eyes_mirrored"] == NUM_REAL // 2 and 1 <= results["epoch"] <= 2
    within = results["share_within_degrees"]
    assert list(within) == [str(d) for d in range(26)] and all(0 <= share <= 1 for share in within.values())
    assert 0 < results["mean_angular_error"] <= 180
    assert "within d degrees" in result.stdout and "       7  " in result.stdout and "      25  " in result.stdout
    assert tf.train.latest_checkpoint(model_dir / "best") and tf.train.latest_checkpoint(model_dir)
    assert json.loads((model_dir / "params.json").read_text())["task"] == "estimation"


def test_training_writes_tensorboard_summaries_and_the_training_images(trained):
    root, name, _ = trained
    events = event_accumulator.EventAccumulator(str(root / "logs" / name), size_guidance={"tensors": 0})
    events.Reload()
    assert {"estimator/loss", "estimator/angular_error", "validation/angular_error", "real/angular_error",
            "real/within_7_degrees", "real/share_within_degrees", "estimator/training_images",
            "_hparams_/experiment", "_hparams_/session_start_info"} <= set(
        events.Tags()["tensors"])
    assert [event.step for event in events.Tensors("real/share_within_degrees")] == list(range(26))
    with Image.open(root / "samples" / name / "training_images.png") as grid:
        assert grid.size == (4 * 55 + 5, 2 * 35 + 3)
        assert np.asarray(grid)[1:36, 1:56].std() > 10  # raw synthetic eyes, not a flat image


def test_evaluation_mode_measures_the_saved_estimator_again(trained):
    root, name, _ = trained
    before = json.loads((root / "logs" / name / "evaluation.json").read_text())
    result = main_in_process(*flags_for(root), "--task=estimation", "--is_train=False", f"--load_path={name}",
                             "--batch_size=7")
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((root / "logs" / name / "evaluation.json").read_text())
    assert after["mean_angular_error"] == pytest.approx(before["mean_angular_error"], abs=1e-4)
    assert after["trained_on"] == "synthetic" and "within d degrees" in result.stdout
    # The HParams of the evaluation are the evaluated run's flags (its params.json), not this command's.
    trained_batch = json.loads((root / "logs" / name / "params.json").read_text())["batch_size"]
    assert trained_batch != 7 and last_hparams(root / "logs" / name)["batch_size"] == trained_batch


def last_hparams(model_dir):
    """{flag: value} of the newest HParams session a run folder's event files hold."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    found = None
    for path in sorted(model_dir.glob("events.out.tfevents.*"), key=os.path.getmtime):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    session = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    found = {flag: item.string_value or item.number_value
                             for flag, item in session.session_start_info.hparams.items()}
    return found


def test_evaluating_a_missing_estimator_is_one_clear_error(sample, capsys):
    root, _ = sample
    assert main.main([*flags_for(root), "--task=estimation", "--is_train=False", "--load_path=missing"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("[!] no estimator checkpoint in")


def test_a_refiner_path_without_a_checkpoint_is_one_clear_error(sample, capsys):
    root, _ = sample
    assert main.main([*flags_for(root), *TINY, "--refiner_path=missing"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("[!] --refiner_path=missing: no checkpoint in")


def test_the_split_is_checked_before_any_network_is_built(sample, capsys, monkeypatch):
    root, _ = sample
    def fail(*args, **kwargs):
        raise AssertionError("a network was built before the flags were checked")
    for module, name in ((main, "run_estimation"), (main, "Trainer")):
        monkeypatch.setattr(module, name, fail)
    assert main.main([*flags_for(root), *TINY, "--batch_size=23", "--refiner_path=missing"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("[!] --batch_size=23: the estimator's training split holds 22 labelled crops")


def save_constant_refiner(model_dir):
    """A generative checkpoint whose refiner outputs REFINED_VALUE everywhere (its last conv: zero weights)."""
    refiner = build_refiner((35, 55, 1))
    conv_out = refiner.get_layer("conv_out")
    conv_out.kernel.assign(tf.zeros_like(conv_out.kernel))
    conv_out.bias.assign([np.arctanh(REFINED_VALUE)])
    discriminator_like = tf.Variable(1.0)  # other objects of a generative checkpoint are left alone
    checkpoint = tf.train.Checkpoint(refiner=refiner, step=discriminator_like)
    tf.train.CheckpointManager(checkpoint, str(model_dir), max_to_keep=1).save()


def test_the_estimator_trains_on_images_refined_by_the_refiner_path(sample):
    root, _ = sample
    save_constant_refiner(root / "logs" / "generative_constant")
    result = main_in_process(*flags_for(root), *TINY, "--num_epochs=1", "--refiner_path=constant",
                             "--load_path=refined")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refined by" in result.stdout and "generative_constant" in result.stdout
    with Image.open(root / "samples" / "estimation_refined" / "training_images.png") as grid:
        pixels = np.asarray(grid)
    # Every image the first step received is the refiner's constant, not a synthetic eye.
    tiles = [pixels[1 + r * 36: 36 + r * 36, 1 + c * 56: 56 + c * 56] for r in range(2) for c in range(4)]
    expected = np.rint((REFINED_VALUE + 1) * 127.5)
    assert all(np.all(tile == expected) for tile in tiles)
    results = json.loads((root / "logs" / "estimation_refined" / "evaluation.json").read_text())
    assert results["trained_on"] == "refined" and results["refiner_path"] == "constant"
    assert results["refiner"] == "latest"  # the default: the run's last refiner, as the original had only that one
