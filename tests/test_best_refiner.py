"""The estimation probe and the best refiner: the probe ranks refiners, the best is kept, exported, resumed and
loaded, and --refiner=latest still gives the last."""
import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import estimation_probe
from best_refiner import STATE_FILE, BestRefiner, read_best
from checkpoints import CheckpointError, Checkpoints
from data.data_set import LabelledHoldOut
from estimation_probe import EstimationProbe
from export import BEST_NAME, RefinerExporter, load_any_refiner
from model import GAZE_ESTIMATION, build_refiner
from utils import save_params

SIDE = 19  # the gaze estimator's smallest input


def pupils(count, seed, brightness):
    """Grey (count, SIDE, SIDE, 1) uint8 eyes, a dark disc where the eye looks, and the gaze (count, 3) it means."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(4, SIDE - 5, (count, 2))
    rows, cols = np.mgrid[:SIDE, :SIDE]
    distance = np.hypot(cols[None] - centres[:, 0, None, None], rows[None] - centres[:, 1, None, None])
    images = np.where(distance < 3, 40.0, brightness) + rng.normal(0, 8, (count, SIDE, SIDE))
    gaze = np.concatenate([(centres - SIDE / 2) / SIDE, -np.ones((count, 1))], axis=1)
    return np.clip(images, 0, 255).astype(np.uint8)[..., None], gaze.astype(np.float32)


def scramble(images):
    """A refiner that keeps each image's pixels and loses where they were."""
    flat = tf.reshape(images, (tf.shape(images)[0], -1))
    return tf.reshape(tf.transpose(tf.random.shuffle(tf.transpose(flat))), tf.shape(images))


def test_the_estimation_probe_ranks_a_scrambling_refiner_below_the_identity(monkeypatch):
    monkeypatch.setattr(estimation_probe, "TRAINING_STEPS", 60)
    monkeypatch.setattr(estimation_probe, "SEEDS", 2)
    monkeypatch.setattr(estimation_probe, "BATCH", {"gaze": 32})
    keras.mixed_precision.set_global_policy("float32")
    synthetic, synthetic_gaze = pupils(256, seed=1, brightness=200)
    real, real_gaze = pupils(128, seed=2, brightness=170)  # another domain: darker skin
    config = types.SimpleNamespace(data_set="gaze")
    probe = EstimationProbe(LabelledHoldOut(synthetic, synthetic_gaze, real, real_gaze), GAZE_ESTIMATION, config,
                            refine_batch=64, seed=5)
    with tf.summary.create_noop_writer().as_default():
        scrambled = probe.write(scramble, step=20)
    # The mark is what the identity refiner gives: the estimators trained on the images as they are.
    assert set(scrambled) == {"estimation_error", "estimation_error_synthetic"}
    assert scrambled["estimation_error_synthetic"] < 4 and scrambled["estimation_error"] > 8
    assert probe.last == scrambled


def test_the_probe_is_the_mean_of_estimators_that_start_and_draw_apart_and_the_same_at_every_probe(monkeypatch):
    monkeypatch.setattr(estimation_probe, "SEEDS", 3)
    keras.mixed_precision.set_global_policy("float32")
    images, gaze = pupils(100, seed=1, brightness=200)
    probe = EstimationProbe(LabelledHoldOut(images, gaze, images, gaze), GAZE_ESTIMATION,
                            types.SimpleNamespace(data_set="gaze"), refine_batch=64, seed=5)
    orders = [np.concatenate(order) for order in probe.orders]
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    weights = []
    for seed in (15, 16, 15):  # the seeds of two estimators of a probe, and the first again
        estimator = GAZE_ESTIMATION.build((SIDE, SIDE, 1), (3,), None)
        estimation_probe.seed_weights(estimator, seed)
        weights.append(estimator.get_layer("conv1").kernel.numpy())
    assert not np.array_equal(weights[0], weights[1]) and np.array_equal(weights[0], weights[2])
    monkeypatch.setattr(probe, "estimator_error", lambda pixels, index: [1.0, 2.0, 6.0][index])
    assert probe.error(images) == 3.0


SHAPE = (12, 16, 1)


def refiner_run(model_dir):
    """A run folder with params.json and a refiner (its latest checkpoint); the refiner and its keeper."""
    model_dir.mkdir()
    save_params(types.SimpleNamespace(input_height=SHAPE[0], input_width=SHAPE[1], input_channel=1),
                types.SimpleNamespace(model_dir=str(model_dir)))
    refiner = build_refiner(SHAPE)
    return refiner, Checkpoints({"refiner": refiner}, str(model_dir), max_to_keep=3)


def perturb(refiner, seed):
    """New weights: each refiner state of a test is told apart by its outputs."""
    rng = np.random.default_rng(seed)
    refiner.set_weights([weight + rng.normal(0, 0.05, weight.shape) for weight in refiner.get_weights()])


def outputs(refine):
    images = np.random.default_rng(0).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    return np.asarray(refine(images))


def keeper(refiner, model_dir, criterion="estimation_error"):
    return BestRefiner(RefinerExporter(refiner, str(model_dir), BEST_NAME), criterion, SHAPE, "degrees")


def test_the_best_refiner_is_kept_exported_remembered_on_resume_and_loaded_with_refiner_best(tmp_path):
    keras.mixed_precision.set_global_policy("float32")
    model_dir = tmp_path / "generative_run"
    refiner, checkpoints = refiner_run(model_dir)
    best = keeper(refiner, model_dir)
    assert best.consider(10, {"estimation_error": 5.0, "realism_accuracy": 0.9})
    kept = outputs(lambda images: refiner(images, training=False))
    perturb(refiner, 1)
    assert not best.consider(20, {"estimation_error": 6.0})
    assert not best.consider(25, {"realism_accuracy": 0.5})  # no estimation probe at this step: not a candidate
    assert not best.consider(26, {"estimation_error": float("nan")})  # a refiner gone bad is never the best
    checkpoints.save(20)
    # A resumed run: a new keeper reads the record and compares with it.
    resumed = keeper(refiner, model_dir)
    assert resumed.state["step"] == 10 and not resumed.consider(30, {"estimation_error": 5.5})
    assert read_best(str(model_dir))["values"] == {"estimation_error": 5.0, "realism_accuracy": 0.9}
    for which, expected, loaded in (("best", kept, BEST_NAME), ("latest", outputs(lambda i: refiner(i)), "ckpt-20")):
        refine, what = load_any_refiner(str(model_dir), str(tmp_path), SHAPE, "load_path", which=which)
        np.testing.assert_allclose(outputs(refine), expected, atol=1e-5)
        assert loaded in what
    _, what = load_any_refiner(str(model_dir), str(tmp_path), SHAPE, "load_path", which="best")
    assert "(the best probe's: refiner step 10, estimation error 5.00 degrees)" in what
    assert resumed.consider(40, {"estimation_error": 4.0, "label_shift": 1.5})
    assert "refiner step 40, estimation error 4.00 degrees (label shift 1.50), exported as" in resumed.report_line()
    refine, _ = load_any_refiner(str(model_dir / f"{BEST_NAME}.keras"), str(tmp_path), SHAPE, "load_path")
    np.testing.assert_allclose(outputs(refine), outputs(lambda images: refiner(images)), atol=1e-5)


def test_without_labels_the_best_is_the_closest_statistics_while_the_label_shift_stays_small(tmp_path):
    keras.mixed_precision.set_global_policy("float32")
    refiner, _ = refiner_run(tmp_path / "run")
    best = keeper(refiner, tmp_path / "run", "statistics_distance")
    limit = best.label_shift_limit  # 2% of the 12x16 diagonal
    assert limit == pytest.approx(0.4)
    assert not best.consider(5, {"statistics_distance": 1.0, "label_shift": limit + 0.1})
    assert "no probe's label shift was under 0.4 px" in best.report_line()
    assert best.consider(10, {"statistics_distance": 2.0, "label_shift": limit})
    assert not best.consider(15, {"statistics_distance": 1.0, "label_shift": 2 * limit})
    assert best.consider(20, {"statistics_distance": 1.5})  # folders: no proxy of a label to watch
    # A run resumed with the estimation probe on compares estimation errors, not distances.
    assert keeper(refiner, tmp_path / "run").state is None
    assert json.loads((tmp_path / "run" / STATE_FILE).read_text())["step"] == 20


def test_refiner_best_of_a_run_that_kept_none_is_one_clear_error(tmp_path):
    refiner, checkpoints = refiner_run(tmp_path / "run")
    checkpoints.save(3)
    with pytest.raises(CheckpointError, match="--refiner=best: .* kept no best refiner .* --refiner=latest"):
        load_any_refiner(str(tmp_path / "run"), str(tmp_path), SHAPE, "load_path", which="best")
