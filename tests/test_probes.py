"""The probes' numbers on cases whose answers are known."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import estimation_probe
from best_refiner import read_best
from conftest import folder_flags, main_in_process
from data.gaze_labels import pupil_positions
from data.gaze_sample import write_sample
from data.hand_data import BACKGROUND, HandData
from probes import grey_level_change, image_statistics, label_shift, realism_accuracy, statistics_distance
from test_end_to_end import assert_written_by
from utils import denormalize


def eyes(count, seed, brightness=120.0, noise=20.0):
    """Grey 35x55 'eyes' with a dark pupil at a random place, plus noise: uint8 (count, 35, 55, 1)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:35, :55]
    centres = rng.uniform([12, 18], [23, 37], (count, 2))
    distance = np.hypot(rows - centres[:, 0, None, None], cols - centres[:, 1, None, None])
    images = brightness - 90 * (distance < 4) + rng.normal(0, noise, (count, 35, 55))
    return np.clip(images, 0, 255).astype(np.uint8)[..., None], centres


def test_two_halves_of_one_set_cannot_be_told_apart():
    images, _ = eyes(200, seed=1)
    accuracy = realism_accuracy(images[:100], images[100:], seed=0)
    assert 0.35 <= accuracy <= 0.65, accuracy


def test_a_constant_image_is_always_told_from_real_ones():
    images, _ = eyes(60, seed=2)
    constant = np.full_like(images, 120)
    assert realism_accuracy(constant, images, seed=0) == 1.0


def test_two_sets_of_one_constant_image_are_a_coin_toss_not_an_error():
    constant = np.full((20, 8, 8, 1), 100, np.uint8)
    assert realism_accuracy(constant, constant) == 0.5


def test_identical_sets_are_a_coin_toss():
    images, _ = eyes(100, seed=8)
    assert 0.4 <= realism_accuracy(images, images, seed=0) <= 0.6


def test_the_probes_follow_what_is_refined():
    """An identity refiner scores the unrefined images' mark; one that moves the images towards the real
    ones scores closer to real on every probe."""
    from probes import Probes
    from utils import normalize
    synthetic, _ = eyes(60, seed=9, brightness=150, noise=5)
    real, _ = eyes(60, seed=10, brightness=110, noise=12)
    probes = Probes(normalize(synthetic.astype(np.float32)), normalize(real.astype(np.float32)), pupil_positions,
                    16, seed=0)
    writer = tf.summary.create_noop_writer()
    with writer.as_default():
        same = probes.write(lambda images: images, step=1)
        darker = probes.write(lambda images: np.clip(images - 40 / 127.5, -1, 1), step=2)
    assert same["realism_accuracy"] == same["realism_accuracy_synthetic"] and same["grey_level_change"] == 0.0
    assert same["label_shift"] == 0.0
    assert darker["brightness_distance"] < same["brightness_distance"] - 1
    assert darker["grey_level_change"] == pytest.approx(40, abs=1)


def test_the_further_from_real_the_better_the_images_are_told_apart():
    real, _ = eyes(80, seed=3, noise=10)
    accuracies = [realism_accuracy(eyes(80, seed=4, noise=noise)[0], real) for noise in (10, 10.5, 11, 12)]
    assert accuracies[0] < 0.6 < accuracies[1] < accuracies[2] < accuracies[3] == 1.0, accuracies


def test_the_statistics_of_a_set_against_itself_are_zero_and_measure_a_shift_in_real_spreads():
    images, _ = eyes(50, seed=6)
    statistics = image_statistics(images)
    assert statistics_distance(statistics, statistics) == {"brightness": 0.0, "contrast": 0.0, "high_frequency": 0.0,
                                                   "distance": 0.0}
    brighter = images.astype(np.float64) + 10  # no clipping: the images lie well inside 0..255 on average
    spread = np.std(image_statistics(images)["brightness"])
    distances = statistics_distance(image_statistics(brighter), statistics)
    assert distances["brightness"] == pytest.approx(10 / spread, rel=0.05)
    assert distances["contrast"] < 0.2 and distances["distance"] == pytest.approx(
        np.sqrt(sum(distances[name] ** 2 for name in ("brightness", "contrast", "high_frequency")) / 3))


def test_high_frequency_energy_grows_with_noise_and_not_with_a_smooth_gradient():
    flat = np.full((1, 20, 20), 100.0)
    gradient = flat + np.linspace(0, 50, 20)[None, None, :]
    noisy = flat + np.random.default_rng(0).normal(0, 10, (1, 20, 20))
    energy = {name: image_statistics(images)["high_frequency"][0]
              for name, images in (("flat", flat), ("gradient", gradient), ("noisy", noisy))}
    assert energy["flat"] == 0 and energy["gradient"] < 1 < 5 < energy["noisy"]


def test_the_pupil_is_found_and_its_move_is_the_label_shift():
    images, centres = eyes(20, seed=7, noise=2)
    found = pupil_positions(images)
    np.testing.assert_allclose(found[:, ::-1], centres, atol=1.0)  # (x, y) against (row, col)
    moved = np.roll(images, 3, axis=2)  # three pixels to the right
    assert label_shift(images, moved, pupil_positions) == pytest.approx(3.0, abs=0.5)
    assert label_shift(images, images, pupil_positions) == 0


def test_the_hand_centre_is_the_mean_position_of_the_hand_pixels():
    crops = np.full((1, 20, 30), BACKGROUND, np.uint8)
    crops[0, 4:8, 10:20] = 50  # rows 4..7, columns 10..19
    data = HandData.__new__(HandData)  # label_positions reads no data
    np.testing.assert_allclose(data.label_positions(crops[..., None]), [[14.5, 5.5]])


def test_grey_level_change_is_the_mean_absolute_difference():
    images = np.zeros((2, 4, 4, 1), np.uint8)
    changed = images.copy()
    changed[0] = 8
    assert grey_level_change(images, changed) == 4.0


# ---- while training: the tags on the right steps, resumed, and none with --eval_step=0

SCHEDULE = ["--initial_K_g=4", "--initial_K_d=1", "--K_g=1", "--K_d=1", "--batch_size=4", "--buffer_size=8",
            "--log_step=100", "--sample_image_grid=1,2", "--max_image_summary=1", "--checkpoint_secs=3600"]


def events_of(model_dir):
    events = event_accumulator.EventAccumulator(str(model_dir), size_guidance={"tensors": 0})
    events.Reload()
    return events


def scalars(events, tag):
    return [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in events.Tensors(tag)]


@pytest.fixture(scope="module")
def sample_folders(tmp_path_factory):
    """A sample large enough for both probes: 25 of each kind held out (a fifth of 126), then 20 (of 101)."""
    root = tmp_path_factory.mktemp("probes")
    write_sample(root / "data" / "gaze", num_synthetic=126, num_real=126, seed=3, workers=1)
    return root, folder_flags(root / "data", root)


@pytest.fixture(scope="module")
def probed(sample_folders):
    """Refiner steps 1..4 warm-up, 5..7 adversarial, probes at 2, 4 and 6, an estimation probe at 4; then resumed
    to step 9 (a probe and an estimation probe at 8). The estimation probe is cut to one estimator of 10 steps:
    what is tested here is where it runs and what it keeps."""
    root, folders = sample_folders
    flags = [*folders, *SCHEDULE, "--eval_step=2", "--estimation_probe_step=4", "--load_path=probed"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(estimation_probe, "TRAINING_STEPS", 10)
        patch.setattr(estimation_probe, "SEEDS", 1)
        first = main_in_process(*flags, "--max_step=3")
        assert first.returncode == 0, first.stderr[-3000:]
        after_first = events_of(root / "logs" / "generative_probed")
        resumed = main_in_process(*flags, "--max_step=5")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    return first, after_first, events_of(root / "logs" / "generative_probed"), resumed


def test_every_probe_is_written_at_every_eval_step_of_the_refiner(probed):
    first, events, _, _ = probed
    assert "[*] Probes every 2 refiner steps, on 25 synthetic and 25 real images held out" in first.stdout
    for name in ("realism_accuracy", "statistics_distance", "brightness_distance", "contrast_distance",
                 "high_frequency_distance", "grey_level_change", "label_shift"):
        values = scalars(events, f"probe/{name}")
        assert [step for step, _ in values] == [2, 4, 6], name
        assert all(np.isfinite(value) and value >= 0 for _, value in values), name
    assert all(0 <= value <= 1 for _, value in scalars(events, "probe/realism_accuracy"))
    (baseline,) = scalars(events, "probe/realism_accuracy_synthetic")  # once, with the first probe
    assert baseline[0] == 2


def test_a_resumed_run_continues_the_probes_on_the_same_images(probed):
    _, _, events, _ = probed
    assert [step for step, _ in scalars(events, "probe/realism_accuracy")] == [2, 4, 6, 8]
    first, again = scalars(events, "probe/realism_accuracy_synthetic")  # each launch's first probe: its baseline
    assert again[0] == 8 and again[1] == first[1]  # the same held-out images, the same classifier's folds


def test_the_refiner_of_the_best_estimation_probe_is_kept_across_a_resume_and_refines_with_refiner_best(probed,
                                                                                                       sample_folders):
    first, _, events, resumed = probed
    root, folders = sample_folders
    assert "[*] Estimation probe every 4 refiner steps: small estimators trained on 20 held-out synthetic images, " \
           "refined, measured on 20 held-out real ones" in first.stdout
    assert "[*] Best refiner: refiner step 4, estimation error" in first.stdout and "--refiner=best" in first.stdout
    errors = dict(scalars(events, "probe/estimation_error"))
    assert list(errors) == [4, 8] and len(scalars(events, "probe/estimation_error_synthetic")) == 2  # each launch
    model_dir = root / "logs" / "generative_probed"
    best = read_best(str(model_dir))  # the resumed run compared its probe with the first run's best
    assert best["criterion"] == "estimation_error" and best["score"] == pytest.approx(min(errors.values()))
    assert best["step"] == min(errors, key=errors.get) and f"refiner step {best['step']}" in resumed.stdout
    refined = main_in_process(*folders, "--is_train=False", "--load_path=probed", "--refiner=best", "--batch_size=64")
    assert refined.returncode == 0, refined.stderr[-3000:]
    assert f"refiner_best.keras (the best probe's: refiner step {best['step']}" in refined.stdout
    crops = sorted((root / "data" / "gaze" / "UnityEyes").glob("*_cropped.png"))[:3]
    written = [root / "outputs" / "generative_probed" / crop.name.replace("_cropped", "_refined") for crop in crops]
    assert_written_by(keras.models.load_model(model_dir / "refiner_best.keras"), crops, written)


def test_the_run_writes_its_hparams_and_the_probes_as_their_metrics(probed):
    _, _, events, _ = probed
    tags = set(events.Tags()["tensors"])
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= tags
    plugin = events.SummaryMetadata("_hparams_/session_start_info").plugin_data
    info = plugin_data_pb2.HParamsPluginData.FromString(plugin.content).session_start_info
    assert {"reg_scale", "optimizer", "learning_rate", "K_g", "K_d", "batch_size", "buffer_size", "data_set",
            "precision", "affine_correction", "noise_channels", "coordinate_channels", "final_reg_scale",
            "self_regularization"} <= set(info.hparams)
    assert info.hparams["batch_size"].number_value == 4 and info.hparams["precision"].string_value == "float32"
    assert info.hparams["final_reg_scale"].number_value == 0.5  # none given: the constant --reg_scale
    assert info.hparams["affine_correction"].bool_value is False
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/experiment").plugin_data.content).experiment
    assert {metric.name.tag for metric in experiment.metric_infos} >= {"probe/realism_accuracy",
                                                                      "probe/statistics_distance"}


def test_eval_step_zero_holds_nothing_out_and_writes_no_probe(sample_folders):
    root, folders = sample_folders
    result = main_in_process(*folders, *SCHEDULE, "--eval_step=0", "--max_step=1", "--load_path=unprobed",
                             "--estimation_probe_step=100")  # more refiner steps than the run's 5: said, not run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Probes" not in result.stdout and "Best refiner" not in result.stdout
    assert "[!] --estimation_probe_step=100: no estimation probe" in result.stdout
    tags = events_of(root / "logs" / "generative_unprobed").Tags()["tensors"]
    assert tags and not [tag for tag in tags if tag.startswith("probe/")]


# ---- the probes' images never reach training

def _gaze(root):
    from config import get_config
    from data.gaze_data import load_gaze_data
    write_sample(root / "gaze", num_synthetic=50, num_real=50, seed=4, workers=1)
    return load_gaze_data(get_config([f"--data_dir={root}"])), (35, 55, 1)


def _hand(root):
    from config import get_config
    from data.hand_data import load_hand_data
    from data.hand_sample import write_hand_sample
    write_hand_sample(root / "hand", num_train=50, num_test=2, seed=2, workers=1)
    return load_hand_data(get_config(["--data_set=hand", f"--data_dir={root}", "--input_height=16",
                                      "--input_width=16"])), (16, 16, 1)


def _folders(root):
    from config import get_config
    from data.folder_data import load_folder_data
    from test_folder_data import write_images
    write_images(root / "synthetic", 50, size=(12, 12))
    write_images(root / "real", 50, size=(12, 12), seed=1)
    return load_folder_data(get_config(["--data_set=folders", f"--synthetic_image_dir={root / 'synthetic'}",
                                        f"--real_image_dir={root / 'real'}", f"--data_dir={root}"])), (12, 12, 3)


@pytest.mark.parametrize("load", [_gaze, _hand, _folders])
def test_the_held_out_images_never_reach_a_training_stream(load, tmp_path):
    """Every stream the trainer opens (synthetic, the discriminator's fresh half, real), read by one input
    pipeline or by two (a cluster's shards), for an epoch: each image drawn is a kept one, and every kept
    one is drawn (so the check is not empty)."""
    data, shape = load(tmp_path)
    held = dict(zip(("synthetic", "real"), (denormalize(images) for images in data.hold_out(10, shape, seed=7))))
    labelled = data.hold_out_labelled(5, 5, shape, seed=8)  # the estimation probe's, where there are labels
    if labelled is not None:
        assert len(labelled.synthetic_labels) == len(labelled.real_labels) == 5
        assert labelled.synthetic.shape[1:] == shape
        held = {kind: np.concatenate([held[kind], getattr(labelled, kind)]) for kind in held}
    assert (labelled is None) == (load is _folders)
    kept = {"synthetic": 50 - len(held["synthetic"]), "real": len(data.real_images)}
    for pipelines in (1, 2):
        for kind in ("synthetic", "real"):
            drawn = set()
            for index in range(pipelines):
                batches = getattr(data, f"{kind}_batches")(shape, 4, seed=3, shard=(pipelines, index))
                for batch in batches.take(kept[kind] // (4 * pipelines)):
                    drawn |= {image.tobytes() for image in denormalize(batch)}
            assert not drawn & {image.tobytes() for image in held[kind]}, (kind, pipelines)
            assert len(drawn) == kept[kind] - kept[kind] % (4 * pipelines), (kind, pipelines)
