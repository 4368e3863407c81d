"""`python main.py --data_set=hand` on NYU's layout (the tiny procedural sample): train, resume, refine."""
import json
import re

import pytest

from conftest import checkpoint_counters, folder_flags, main_in_process
from data import nyu
from data.hand_sample import write_hand_sample

NUM_TRAIN = 6
TINY_HAND = ["--data_set=hand", "--input_height=16", "--input_width=16", "--batch_size=4", "--buffer_size=16",
             "--initial_K_g=2", "--initial_K_d=2", "--log_step=1", "--sample_image_grid=2,2", "--max_image_summary=2",
             "--checkpoint_secs=3600", "--load_path=hand"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A hand run of one adversarial iteration: its folders and its result."""
    root = tmp_path_factory.mktemp("hand_run")
    write_hand_sample(root / "data" / "hand", num_train=NUM_TRAIN, num_test=2, seed=4)
    folders = folder_flags(root / "data", root)
    return root, folders, main_in_process(*folders, *TINY_HAND, "--max_step=1")


def test_training_on_hand_depth_writes_checkpoints_samples_and_exports(trained):
    root, _, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = root / "logs" / "generative_hand"
    assert checkpoint_counters(model_dir) == (2 + 2, 2 + 1, 1)
    assert (model_dir / "refiner.keras").exists() and (model_dir / "refiner_saved_model").is_dir()
    assert (root / "samples" / "generative_hand" / "4.png").exists()
    assert (root / "samples" / "real_0.png").exists()  # the real crops the refiner aims for
    hand = root / "data" / "hand"
    assert {path.name for path in hand.iterdir() if path.is_file()} == {
        "train_crops_16x16_synthetic.npy", "train_crops_16x16_real.npy", "train_crops_16x16_labels.npz"}


def test_a_hand_run_resumes_and_its_refiner_refines_every_synthetic_crop(trained):
    root, folders, _ = trained
    resumed = main_in_process(*folders, *TINY_HAND, "--max_step=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "refiner step 4, discriminator step 3, iteration 1" in resumed.stdout
    assert checkpoint_counters(root / "logs" / "generative_hand") == (2 + 4, 2 + 2, 2)
    refined = main_in_process(*folders, "--data_set=hand", "--input_height=16", "--input_width=16",
                              "--is_train=False", "--load_path=hand", "--batch_size=4")
    assert refined.returncode == 0, refined.stderr[-3000:]
    names = sorted(path.name for path in (root / "outputs" / "generative_hand").glob("*.png"))
    assert names == [f"{nyu.synthetic_depth_name(frame)[:-4]}_refined.png" for frame in range(1, NUM_TRAIN + 1)]


def test_the_pose_estimator_trains_on_the_refined_crops_and_is_measured_on_the_real_test_frames(trained):
    root, folders, _ = trained
    result = main_in_process(*folders, "--task=estimation", "--data_set=hand", "--input_height=16",
                             "--input_width=16", "--estimator_filters=8", "--estimator_depth=1", "--estimator_stacks=1",
                             "--batch_size=2", "--num_epochs=1", "--refiner_path=hand", "--load_path=hand_pose")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refined by" in result.stdout and "within d pixels" in result.stdout  # the table
    assert re.search(r"^ +5 .*<- the paper.s table$", result.stdout, re.MULTILINE)  # its d marked
    evaluation = json.loads((root / "logs" / "estimation_hand_pose" / "evaluation.json").read_text())
    assert evaluation["trained_on"] == "refined" and evaluation["real_images"] == 2 and evaluation["joints"] == 14
    assert evaluation["step"] == NUM_TRAIN // 2
    assert not list((root / "data" / "hand").glob(".*"))  # the refined crops' temporary file is gone

