"""The hand estimation task end to end, at 32x32 on sets made here: trains, resumes, evaluates, learns."""
import dataclasses
import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from checkpoints import CheckpointError
from config import get_config
from data.data_set import EstimationSets
from data.hand_data import DepthCrops, HandData, refine_crops
from data.npy_file import NpyRows, read_rows, write_rows
from estimation import EVALUATION_FILE, EstimatorTrainer, evaluation_table
from model import share_within
from pose_model import HAND_ESTIMATION, MAX_WITHIN_PIXELS
from utils import denormalize, make_run_folders, normalize, run_paths

SIZE, JOINTS = 32, 14
TEMPLATE = np.random.default_rng(5).uniform(-6, 6, (JOINTS, 2)).astype(np.float32)  # each joint's place around the palm


def hand_sets(count, test_count, seed, refined=False, folder=None):
    """An easy hand set: a bright palm at a random place and a dot at each joint, a fixed layout around it.

    folder given: the images are .npy files there, read from disk (NpyRows) as the loader's crops are.
    """
    rng = np.random.default_rng(seed)

    def draw(number):
        palms = rng.uniform(10, 21, (number, 2)).astype(np.float32)
        joints = palms[:, None] + TEMPLATE                                     # (number, 14, 2), u and v in 4..27
        rows, cols = np.mgrid[:SIZE, :SIZE].astype(np.float32)
        palm = np.exp(-((cols - palms[:, 0, None, None]) ** 2 + (rows - palms[:, 1, None, None]) ** 2) / 18.0)
        dots = np.exp(-((cols - joints[..., 0, None, None]) ** 2 + (rows - joints[..., 1, None, None]) ** 2) / 1.5)
        images = np.clip(palm + dots.max(axis=1), 0, 1) * 2 - 1               # (number, 32, 32) in [-1, 1]
        return denormalize(images), joints                                      # uint8, as the loader's crops

    training_images, training_joints = draw(count)
    test_images, test_joints = draw(test_count)
    if folder is not None:
        training_images, test_images = (on_disk(folder / f"{name}.npy", images) for name, images in
                                        (("training", training_images), ("test", test_images)))
    return EstimationSets((training_images, training_joints), None, (test_images, test_joints), (SIZE, SIZE, 1),
                          refined, dict(is_sample=True, joints=JOINTS))


def on_disk(path, images):
    write_rows(path, images.shape[1:], np.uint8, [images])
    return read_rows(path)


def tiny_config(root, *flags):
    """Batch 2, one epoch, summaries every step, outputs under root; a 32x32 estimator of 8 filters, depth 1.

    One stack: each trace of the training step takes half as long; two stacks are tested in test_pose_model.
    """
    return get_config(["--task=estimation", "--data_set=hand", "--input_height=32", "--input_width=32",
                       "--estimator_filters=8", "--estimator_depth=1", "--estimator_stacks=1", "--batch_size=2",
                       "--num_epochs=1", "--log_step=1", "--checkpoint_secs=3600", "--sample_image_grid=1,2",
                       "--max_image_summary=2", f"--log_dir={root / 'logs'}", f"--sample_dir={root / 'samples'}",
                       f"--output_dir={root / 'outputs'}", *flags])


def run(root, sets, *flags):
    """The task as main.py runs it: (its evaluation results or None, the run's paths)."""
    config = tiny_config(root, *flags)
    paths = run_paths(config)
    make_run_folders(config, paths)
    trainer = EstimatorTrainer(config, paths, sets, HAND_ESTIMATION)
    return (trainer.train() if config.is_train else trainer.evaluate()), paths


def read_events(model_dir):
    events = event_accumulator.EventAccumulator(str(model_dir), size_guidance={"tensors": 0})
    events.Reload()
    return events


def read_scalars(model_dir, tag):
    return [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in read_events(model_dir).Tensors(tag)]


# Adam at 0.003, batch 8: on these sets 160 steps take the share of joints within 5 pixels from the
# untrained estimator's 20% or so to about 70% (at 0.001, to about 45%).
LEARNS = ["--load_path=hand", "--batch_size=8", "--learning_rate=0.003"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained five epochs (160 steps) on refined images, then launched again: restored, nothing to train.

    One trace of the training step only (each costs some 15 s here); resuming mid-run is the gaze
    estimator's code path too, tested in test_estimation.py.
    """
    root = tmp_path_factory.mktemp("hand")
    sets = hand_sets(256, 24, seed=1, refined=True, folder=root)
    assert isinstance(sets.training[0], NpyRows) and isinstance(sets.test[0], NpyRows)
    keras.utils.set_random_seed(0)
    first, _ = run(root, sets, *LEARNS, "--num_epochs=5")
    first_checkpoint = tf.train.latest_checkpoint(root / "logs" / "estimation_hand")
    resumed, _ = run(root, sets, *LEARNS, "--num_epochs=5")
    return SimpleNamespace(root=root, sets=sets, first=first, first_checkpoint=first_checkpoint, resumed=resumed,
                           model_dir=root / "logs" / "estimation_hand")


def test_training_writes_a_checkpoint_the_evaluation_and_summaries(trained):
    assert trained.first_checkpoint.endswith("ckpt-160") and trained.first["step"] == 160
    written = json.loads((trained.model_dir / EVALUATION_FILE).read_text())
    assert written["step"] == trained.resumed["step"] and written["checkpoint"] == trained.resumed["checkpoint"]
    shares = [written["share_within_pixels"][str(d)] for d in range(MAX_WITHIN_PIXELS + 1)]
    assert len(shares) == 21 and all(0 <= share <= 1 for share in shares) and np.all(np.diff(shares) >= 0)
    assert written["trained_on"] == "refined" and written["real_images"] == 24 and written["joints"] == JOINTS
    assert (trained.root / "samples" / "estimation_hand" / "training_images.png").is_file()
    assert {"estimator/loss", "estimator/joint_error", "estimator/training_images", "real/joint_error",
            "real/evaluation", "_hparams_/session_start_info"} <= set(read_events(trained.model_dir).Tags()["tensors"])
    assert {step for step, _ in read_scalars(trained.model_dir, "real/share_within_pixels")} == set(range(21))
    assert {step for step, _ in read_scalars(trained.model_dir, "real/within_5_pixels")} == {160}  # both evaluations, of the same weights


def test_a_finished_run_launched_again_is_restored_and_trains_no_more(trained):
    assert trained.resumed["step"] == 160 and trained.resumed["epoch"] == 5
    assert tf.train.latest_checkpoint(trained.model_dir).endswith("ckpt-160")
    steps = [step for step, _ in read_scalars(trained.model_dir, "estimator/loss")]
    assert steps == list(range(1, 161))  # each step once: the second launch trained none again
    with pytest.raises(CheckpointError, match="trained on refined images"):
        run(trained.root, dataclasses.replace(trained.sets, refined=False), *LEARNS, "--num_epochs=6")


def test_evaluation_mode_measures_the_saved_estimator_again(trained):
    before = json.loads((trained.model_dir / EVALUATION_FILE).read_text())
    sets = dataclasses.replace(trained.sets, training=None, refined=False)  # evaluation reads neither
    again, _ = run(trained.root, sets, "--is_train=False", "--load_path=hand", "--batch_size=7")
    assert again["share_within_pixels"] == pytest.approx(before["share_within_pixels"])
    assert again["mean_joint_error"] == pytest.approx(before["mean_joint_error"], abs=1e-4)
    assert again["step"] == 160 and again["trained_on"] == "refined"
    with pytest.raises(CheckpointError, match="no estimator checkpoint"):
        run(trained.root, sets, "--is_train=False", "--load_path=missing")


def test_a_trained_estimator_beats_an_untrained_one(trained):
    config = tiny_config(trained.root, "--load_path=untrained")
    keras.utils.set_random_seed(0)  # the trained run's initial weights
    untrained = EstimatorTrainer(config, run_paths(config), trained.sets, HAND_ESTIMATION)
    distances = untrained.errors(trained.sets.test_batches(8))  # in pixels of a 224x224 crop: 7 a pixel here
    assert distances.shape == (24, JOINTS)
    before = float(share_within(distances, MAX_WITHIN_PIXELS)[MAX_WITHIN_PIXELS])
    after = trained.resumed["share_within_pixels"][str(MAX_WITHIN_PIXELS)]
    assert after > before + 0.3, (before, after)


def test_the_table_has_a_column_per_run_and_marks_five_pixels():
    runs = [dict(model=name, trained_on=kind, share_within_pixels={str(d): min(1.0, d / share) for d in range(21)},
                 mean_joint_error=error, real_images=3, joints=14)
            for name, kind, error, share in (("estimation_a", "synthetic", 7.5, 10), ("estimation_b", "refined", 6.0, 5))]
    lines = evaluation_table(runs, HAND_ESTIMATION).splitlines()
    assert len(lines) == 3 + 21 + 1 and "14 joints each" in lines[0]
    assert lines[1].split() == ["d", "estimation_a", "estimation_b"] and lines[2].split() == ["synthetic", "refined"]
    assert lines[3 + 5].split() == ["5", "50.0", "100.0", "<-", "the", "paper's", "table"]
    assert lines[3 + 20].split() == ["20", "100.0", "100.0"] and lines[-1].split() == ["mean", "7.50", "6.00", "pixels"]


def test_refined_crops_go_to_a_temporary_file_that_leaves_nothing_behind(tmp_path, capsys):
    images = hand_sets(10, 0, seed=3).training[0]
    folder = tmp_path / "hand"
    folder.mkdir()
    refined = refine_crops(images, (SIZE, SIZE, 1), 4, lambda batch: -batch, str(folder))
    assert isinstance(refined, NpyRows) and refined.shape == images.shape
    np.testing.assert_array_equal(refined[np.arange(10)], denormalize(-normalize(images.astype(np.float32))))
    assert not list(folder.iterdir())  # the name is gone at once: the file lives as long as the rows
    crops = DepthCrops(images, np.zeros((10, JOINTS, 2), np.float32), np.arange(1, 11))
    data = HandData(str(tmp_path / "read_only"), True, crops, crops)  # a folder not there: not writable
    sets = data.estimation_sets((SIZE, SIZE, 1), 4, refine=lambda batch: batch)
    assert "[!] Cannot write the refined images" in capsys.readouterr().out
    assert sets.refined and isinstance(sets.training[0], NpyRows) and len(sets.test[0]) == 0
    np.testing.assert_array_equal(sets.training[0][np.arange(10)], images)
