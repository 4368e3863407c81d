"""The hand estimation task end to end, at 32x32 on sets made here: trains, resumes, evaluates, learns."""
import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from checkpoints import CheckpointError
from config import get_config
from hand_estimation import EVALUATION_FILE, HandEstimatorTrainer, evaluation_table, run_hand_estimation
from pose_model import MAX_WITHIN_PIXELS, joint_distances, share_within_pixels
from utils import make_run_folders, run_paths

SIZE, JOINTS = 32, 14
TEMPLATE = np.random.default_rng(5).uniform(-6, 6, (JOINTS, 2)).astype(np.float32)  # each joint's place around the palm


def hand_sets(count, test_count, seed, refined=False):
    """An easy hand set: a bright palm at a random place and a dot at each joint, a fixed layout around it."""
    rng = np.random.default_rng(seed)

    def draw(number):
        palms = rng.uniform(10, 21, (number, 2)).astype(np.float32)
        joints = palms[:, None] + TEMPLATE                                     # (number, 14, 2), u and v in 4..27
        rows, cols = np.mgrid[:SIZE, :SIZE].astype(np.float32)
        palm = np.exp(-((cols - palms[:, 0, None, None]) ** 2 + (rows - palms[:, 1, None, None]) ** 2) / 18.0)
        dots = np.exp(-((cols - joints[..., 0, None, None]) ** 2 + (rows - joints[..., 1, None, None]) ** 2) / 1.5)
        images = np.clip(palm + dots.max(axis=1), 0, 1) * 2 - 1               # (number, 32, 32) in [-1, 1]
        return images[..., None].astype(np.float32), joints

    training_images, training_joints = draw(count)
    test_images, test_joints = draw(test_count)
    return SimpleNamespace(training_images=training_images, training_joints=training_joints, test_images=test_images,
                           test_joints=test_joints, input_shape=(SIZE, SIZE, 1), refined=refined)


def tiny_config(root, *flags):
    config = get_config(["--task=estimation", "--batch_size=2", "--num_epochs=1", "--log_step=1",
                         "--checkpoint_secs=3600", "--sample_image_grid=1,2", "--max_image_summary=2",
                         f"--log_dir={root / 'logs'}", f"--sample_dir={root / 'samples'}",
                         f"--output_dir={root / 'outputs'}", *flags])
    # Not flags of config.py yet: set as hand_estimation reads them.
    config.estimator_filters, config.estimator_depth = 8, 2
    return config


def run(root, sets, *flags):
    config = tiny_config(root, *flags)
    paths = run_paths(config)
    make_run_folders(config, paths)
    return run_hand_estimation(config, paths, sets), paths


def read_scalars(model_dir, tag):
    events = event_accumulator.EventAccumulator(str(model_dir), size_guidance={"tensors": 0})
    events.Reload()
    return [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in events.Tensors(tag)]


def test_trains_resumes_and_evaluates_again(tmp_path):
    sets = hand_sets(8, 6, seed=0, refined=True)
    results, paths = run(tmp_path, sets, "--load_path=hand")  # 4 steps
    model_dir = tmp_path / "logs" / "estimation_hand"
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
    written = json.loads((model_dir / EVALUATION_FILE).read_text())
    shares = [written["share_within_pixels"][str(d)] for d in range(MAX_WITHIN_PIXELS + 1)]
    assert len(shares) == 21 and all(0 <= share <= 1 for share in shares) and np.all(np.diff(shares) >= 0)
    assert written["trained_on"] == "refined" and written["step"] == 4 and written["real_images"] == 6
    assert written == json.loads(json.dumps(results))
    assert (tmp_path / "samples" / "estimation_hand" / "training_images.png").is_file()
    assert [step for step, _ in read_scalars(model_dir, "estimator/loss")] == [1, 2, 3, 4]
    assert [step for step, _ in read_scalars(model_dir, "real/share_within_pixels")] == list(range(21))

    resumed, _ = run(tmp_path, sets, "--load_path=hand", "--num_epochs=2")  # the counters go on
    assert resumed["step"] == 8 and resumed["epoch"] == 2
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-8")
    with pytest.raises(CheckpointError, match="trained on refined images"):
        run(tmp_path, hand_sets(8, 6, seed=0, refined=False), "--load_path=hand", "--num_epochs=3")

    again, _ = run(tmp_path, SimpleNamespace(**{**vars(sets), "training_images": None}), "--is_train=False",
                   "--load_path=hand", "--batch_size=4")  # evaluation needs no training set; any batch size
    assert again["share_within_pixels"] == pytest.approx(resumed["share_within_pixels"])
    assert again["mean_joint_error"] == pytest.approx(resumed["mean_joint_error"], abs=1e-4)
    assert again["step"] == 8 and again["trained_on"] == "refined"
    with pytest.raises(CheckpointError, match="no hand estimator checkpoint"):
        run(tmp_path, sets, "--is_train=False", "--load_path=missing")


def test_the_table_has_a_row_per_run_and_marks_five_pixels():
    within = {str(d): min(1.0, d / 10) for d in range(21)}
    runs = [dict(model="estimation_a", trained_on="synthetic", share_within_pixels=within, mean_joint_error=7.5,
                 real_images=3, joints=14), dict(model="estimation_b", trained_on="refined",
                                                 share_within_pixels=within, mean_joint_error=6.0, real_images=3,
                                                 joints=14)]
    lines = evaluation_table(runs).splitlines()
    assert len(lines) == 4 and "[  5px]" in lines[1] and "20px" in lines[1]
    assert "synthetic" in lines[2] and "[ 50.0]" in lines[2] and "refined" in lines[3] and "7.50px" in lines[2]


def test_a_trained_estimator_beats_an_untrained_one_at_five_pixels(tmp_path):
    sets = hand_sets(512, 64, seed=1)
    config = tiny_config(tmp_path, "--load_path=untrained", "--batch_size=8")
    keras.utils.set_random_seed(0)
    untrained = HandEstimatorTrainer(config, run_paths(config), sets)
    distances = joint_distances(untrained.predict_joints(sets.test_images), sets.test_joints)
    before = float(share_within_pixels(distances)[5])
    keras.utils.set_random_seed(0)
    results, _ = run(tmp_path, sets, "--load_path=learns", "--batch_size=8", "--num_epochs=5",
                     "--log_step=1000")  # 320 steps
    after = results["share_within_pixels"]["5"]
    assert after > before + 0.3, (before, after)
