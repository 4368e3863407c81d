"""tf.distribute: two CPU replicas train as one device does, checkpoints move between strategies, bad batches."""
import json
import subprocess
import sys

import numpy as np
import pytest

import main
from conftest import ROOT, checkpoint_counters, checkpoint_values, folder_flags, main_in_process
from data.gaze_sample import write_sample

SCHEDULE = ["--initial_K_g=2", "--initial_K_d=2", "--K_g=2", "--K_d=1", "--batch_size=4", "--buffer_size=16",
            "--log_step=1", "--sample_image_grid=2,2", "--max_image_summary=2", "--checkpoint_secs=3600"]
MIRRORED = ["--distribution=mirrored", "--cpu_replicas=2"]
# In a fresh process (logical CPUs must be set before TensorFlow starts its devices): one refiner step
# and one discriminator step from the same weights and inputs, on one device and on two CPU replicas (fp32);
# then `python main.py` as a user runs it, mirrored over the same two CPUs in bfloat16: training, then the
# estimator.
MIRRORED_PROCESS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, tensorflow as tf
from config import get_config
from distribution import configure_devices, make_strategy
from utils import run_paths
# SGD at rate 1: the update is the clipped gradient itself, so a wrong sum or clip shows at full size
# (Adam's first step, g / (|g| + eps), blows float noise in tiny gradients up to a few % of a step).
config = get_config(["--batch_size=8", "--buffer_size=16", "--distribution=mirrored", "--cpu_replicas=2",
                     "--max_grad_norm=0.5", "--optimizer=sgd", "--learning_rate=1.0", "--log_dir=" + sys.argv[2]])
configure_devices(config)
tf.keras.utils.set_random_seed(0)  # the same starting weights in every run of the test
from trainer import Trainer
trainers = [Trainer(config, run_paths(config), None), Trainer(config, run_paths(config), None, make_strategy(config))]
for name in ("refiner", "discriminator"):
    getattr(trainers[1], name).set_weights(getattr(trainers[0], name).get_weights())
images = lambda seed, batch=8: tf.random.stateless_uniform((batch, 35, 55, 1), (seed, 0), -1, 1)
report = {key: {"replicas": trainer.strategy.num_replicas_in_sync} for trainer, key in zip(trainers, ("one", "two"))}
for trainer, key in zip(trainers, ("one", "two")):
    losses, refined = trainer.refiner_step(images(1))
    report[key].update(losses={k: float(v) for k, v in losses.items()}, refined=refined.numpy().tolist(),
                       weights=[w.tolist() for w in trainer.refiner.get_weights()[:2]])
# The discriminator step refines its fresh half with the refiner: both start it from one refiner, so the
# refiner step's float noise (1e-6) cannot flip a ReLU in the discriminator (a full unit's gradient, 1e-4).
trainers[1].refiner.set_weights(trainers[0].refiner.get_weights())
for trainer, key in zip(trainers, ("one", "two")):
    losses = trainer.discriminator_step(images(2, 4), images(3, 4), images(4))
    report[key]["losses"].update({k: float(v) for k, v in losses.items()})
    report[key]["weights"] += [w.tolist() for w in trainer.discriminator.get_weights()[:2]]
import main
runs = json.loads(sys.argv[3])
report["status"] = main.main(runs["generative"])
report["estimation_status"] = main.main(runs["estimation"])
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """The process above: its report, its stdout, and the folders of its mirrored run."""
    root = tmp_path_factory.mktemp("distribution")
    write_sample(root / "gaze", num_synthetic=16, num_real=12, seed=3)
    folders = folder_flags(root, root)
    runs = {"generative": [*folders, *SCHEDULE, *MIRRORED, "--max_step=1", "--load_path=mirrored",
                           "--mixed_precision=bf16"],
            "estimation": [*folders, *MIRRORED, "--task=estimation", "--batch_size=8", "--num_epochs=1",
                           "--log_step=1", "--sample_image_grid=2,2", "--load_path=estimator",
                           "--mixed_precision=bf16"]}
    result = subprocess.run([sys.executable, "-c", MIRRORED_PROCESS, ROOT, str(root / "equivalence"), json.dumps(runs)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout, folders, root


def test_two_replicas_take_the_same_steps_as_one_device(mirrored):
    one, two = mirrored[0]["one"], mirrored[0]["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert set(one["losses"]) == {"realism_loss", "regularization_loss", "loss", "synthetic_d_loss",
                                  "refiner_d_loss_with_history", "discrim_loss_with_history"}
    for name, value in one["losses"].items():
        assert two["losses"][name] == pytest.approx(value, rel=1e-5), name
    np.testing.assert_allclose(two["refined"], one["refined"], atol=1e-5)
    for before, after in zip(one["weights"], two["weights"]):  # clipped at 0.5: the sum is clipped, not each half
        np.testing.assert_allclose(after, before, atol=2e-5)


def test_a_mirrored_run_in_bfloat16_resumes_on_one_device_in_float32_and_is_refined(mirrored):
    report, stdout, folders, root = mirrored
    assert report["status"] == 0
    assert "device:CPU:1: 2 replicas, MirroredStrategy, bf16" in stdout  # the start line
    model_dir = root / "logs" / "generative_mirrored"
    assert checkpoint_counters(model_dir) == (2 + 2, 2 + 1, 1)
    history = next(value for key, value in checkpoint_values(model_dir).items() if key.startswith("history_buffer/images"))
    assert history.dtype == np.float32 and np.abs(history).max() > 0  # refined images crossed the replicas
    # A checkpoint of any strategy and precision restores under any other: resumed without one, in this process.
    resumed = main_in_process(*folders, *SCHEDULE, "--max_step=2", "--load_path=mirrored")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "refiner step 4, discriminator step 3, iteration 1" in resumed.stdout
    assert checkpoint_counters(model_dir) == (2 + 4, 2 + 2, 2)
    refined = main_in_process(*folders, "--is_train=False", "--load_path=mirrored")
    assert refined.returncode == 0, refined.stderr[-3000:]
    assert len(list((root / "outputs" / "generative_mirrored").glob("*_refined.png"))) == 16


def test_the_estimator_trains_and_is_evaluated_under_the_same_strategy(mirrored):
    report, stdout, _, root = mirrored
    assert report["estimation_status"] == 0
    assert stdout.count("2 replicas, MirroredStrategy, bf16") == 2  # the start lines of the training run and this one
    evaluation = json.loads((root / "logs" / "estimation_estimator" / "evaluation.json").read_text())
    assert len(evaluation["share_within_degrees"]) == 26


@pytest.mark.parametrize("flags, message", [
    (["--batch_size=6"], "--batch_size=6: each of the 2 replicas needs an even share (half refined, half history); "
                         "use a multiple of 4"),
    (["--task=estimation", "--batch_size=5"], "--batch_size=5: the 2 replicas need equal shares; use a multiple of 2"),
])
def test_a_batch_the_replicas_cannot_share_is_one_clear_error(tmp_path, capsys, flags, message):
    assert main.main([*MIRRORED, *flags, f"--log_dir={tmp_path}"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"[!] {message}"
