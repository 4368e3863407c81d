"""Flags: the original's defaults, parsing without eval, and the up-front checks."""
import types

import numpy as np
import pytest


from config import (ConfigError, check_config, check_config_against_data, estimation_probe_images, get_config,
                    probe_images)

ORIGINAL_DEFAULTS = {
    "kernel_dims": [], "stride_size": [], "channel_dims": [],
    "data_set": "gaze", "data_dir": "data", "input_height": 35, "input_width": 55, "input_channel": 1,
    "max_synthetic_num": -1, "real_image_dir": "MPIIGaze", "synthetic_image_dir": "UnityEyes",
    "task": "generative", "is_train": True, "max_step": 10000, "reg_scale": 0.5, "initial_K_g": 1000,
    "initial_K_d": 200, "K_g": 2, "K_d": 1, "batch_size": 512, "buffer_size": 25600, "num_epochs": 12,
    "random_seed": 123, "learning_rate": 0.001, "checkpoint_secs": 300, "max_grad_norm": 50,
    "optimizer": "adam", "log_step": 20, "log_dir": "logs", "sample_dir": "samples", "output_dir": "outputs",
    "load_path": "", "debug": False, "gpu_memory_fraction": 1.0, "max_image_summary": 7,
    "sample_image_grid": [8, 8],
}


def test_defaults_equal_the_original():
    config = vars(get_config([]))
    for flag, value in ORIGINAL_DEFAULTS.items():
        assert config[flag] == value, flag
    check_config(get_config([]))


@pytest.mark.parametrize("text,expected", [("False", False), ("false", False), ("0", False),
                                           ("True", True), ("TRUE", True), ("1", True)])
def test_booleans_in_the_original_spelling(text, expected):
    assert get_config([f"--is_train={text}", "--load_path=x"]).is_train is expected


@pytest.mark.parametrize("text", ["[8, 8]", "8,8", "8 8", "[4,6]"])
def test_list_flags_without_eval(text):
    grid = get_config([f"--sample_image_grid={text}"]).sample_image_grid
    assert grid == [int(n) for n in text.strip("[]").replace(",", " ").split()]


def test_list_flag_that_would_run_code_is_rejected(capsys, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(SystemExit) as exit_info:
        get_config([f"--sample_image_grid=__import__('os').system('touch {marker}')"])
    assert exit_info.value.code == 2
    assert not marker.exists()
    assert capsys.readouterr().err.startswith("[!] argument --sample_image_grid")


@pytest.mark.parametrize("argv,fragment", [
    (["--no_such_flag=1"], "unrecognized arguments: --no_such_flag=1"),
    (["--is_train=maybe"], "--is_train"),
    (["--batch_size=eight"], "--batch_size"),
    (["--task=dance"], "--task"),
])
def test_bad_command_line_is_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        get_config(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("[!]") and fragment in err


@pytest.mark.parametrize("argv,flag", [
    (["--batch_size=7"], "--batch_size=7"),
    (["--batch_size=0"], "--batch_size=0"),
    (["--batch_size=-2"], "--batch_size=-2"),
    (["--batch_size=64", "--buffer_size=32"], "--buffer_size=32"),
    (["--input_height=0"], "--input_height=0"),
    (["--input_width=-5"], "--input_width=-5"),
    (["--input_channel=2"], "--input_channel=2"),
    (["--optimizer=rmsprop"], "--optimizer=rmsprop"),
    (["--is_train=False"], "--is_train=False"),
    (["--learning_rate=0"], "--learning_rate=0.0"),
    (["--max_grad_norm=-1"], "--max_grad_norm=-1.0"),
    (["--reg_scale=-0.5"], "--reg_scale=-0.5"),
    (["--log_step=0"], "--log_step=0"),
    (["--checkpoint_secs=0"], "--checkpoint_secs=0"),
    (["--max_step=-1"], "--max_step=-1"),
    (["--initial_K_g=-1"], "--initial_K_g=-1"),
    (["--K_d=-1"], "--K_d=-1"),
    (["--max_synthetic_num=0"], "--max_synthetic_num=0"),
    (["--gpu_memory_fraction=1.5"], "--gpu_memory_fraction=1.5"),
    (["--sample_image_grid=8"], "--sample_image_grid=[8]"),
    (["--sample_image_grid=0,8"], "--sample_image_grid=[0, 8]"),
    (["--max_image_summary=0"], "--max_image_summary=0"),
    (["--num_epochs=0"], "--num_epochs=0"),
])
def test_checks_name_the_flag(argv, flag):
    with pytest.raises(ConfigError) as error:
        check_config(get_config(argv))
    assert str(error.value).startswith(flag)
    assert "\n" not in str(error.value)


def test_test_mode_with_a_load_path_is_valid():
    check_config(get_config(["--is_train=False", "--load_path=generative_run"]))


def test_test_mode_takes_any_batch_size():
    # Refining has no discriminator halves and no history buffer to fill.
    check_config(get_config(["--is_train=False", "--load_path=run", "--batch_size=5", "--buffer_size=1"]))


def data_counts(num_synthetic, *estimation_sizes):
    """What check_config_against_data reads of the data: its counts (estimation_sizes: training, validation)."""
    return types.SimpleNamespace(num_synthetic=num_synthetic, estimation_sizes=estimation_sizes or None,
                                 real_images=np.zeros((1000, 1)))


def test_a_sample_grid_larger_than_the_synthetic_set_is_caught():
    config = get_config(["--sample_image_grid=3,3", "--eval_step=0"])
    check_config_against_data(config, data_counts(9))
    with pytest.raises(ConfigError, match=r"^--sample_image_grid=3,3: needs 9 test images .* has 8$"):
        check_config_against_data(config, data_counts(8))


def test_an_estimation_split_without_a_full_batch_is_caught():
    config = get_config(["--task=estimation", "--batch_size=8"])
    check_config_against_data(config, data_counts(100, 8, 1))
    with pytest.raises(ConfigError, match=r"^--batch_size=8: the estimator's training split holds 7 labelled"):
        check_config_against_data(config, data_counts(100, 7, 1))
    with pytest.raises(ConfigError, match=r"^--batch_size=8: "):
        check_config_against_data(config, data_counts(100, 90, 0))
    hand = get_config(["--task=estimation", "--data_set=hand", "--batch_size=8"])  # no validation split
    check_config_against_data(hand, data_counts(100, 8, None))
    with pytest.raises(ConfigError, match=r"^--batch_size=8: the estimator's training set holds 7 images$"):
        check_config_against_data(hand, data_counts(100, 7, None))


def test_too_few_estimator_steps_are_announced_with_a_batch_size_that_trains(capsys):
    # The original's batch 512 on 2700 crops: 5 steps an epoch, 60 in 12 epochs; the estimator stays untrained.
    check_config_against_data(get_config(["--task=estimation"]), data_counts(3000, 2700, 300))
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("[!] --batch_size=512: 2700 training crops make only 60 optimizer steps in 12 epochs")
    assert line.endswith("--batch_size=64 gives 42 steps per epoch, 504 in all")
    check_config_against_data(get_config(["--task=estimation", "--batch_size=128"]), data_counts(3000, 2700, 300))
    assert capsys.readouterr().out == ""  # 21 steps an epoch, 252 in all: enough on the sample
    check_config_against_data(get_config(["--task=estimation", "--batch_size=1"]), data_counts(12, 10, 2))
    assert "use more synthetic images" in capsys.readouterr().out


def test_hand_defaults_follow_the_paper_and_a_given_flag_wins():
    hand = get_config(["--data_set=hand"])
    assert (hand.input_height, hand.input_width, hand.initial_K_g, hand.initial_K_d, hand.K_g, hand.K_d) == \
        (224, 224, 500, 200, 2, 1)
    assert (hand.batch_size, hand.buffer_size, hand.learning_rate) == (32, 3200, 1e-4)
    gaze = get_config([])
    assert (gaze.input_height, gaze.input_width, gaze.initial_K_g, gaze.learning_rate) == (35, 55, 1000, 0.001)
    given = get_config(["--data_set=hand", "--input_height=64", "--learning_rate=0.01", "--initial_K_g=7"])
    assert (given.input_height, given.input_width, given.learning_rate, given.initial_K_g) == (64, 224, 0.01, 7)


def test_the_hand_estimators_input_must_halve_evenly():
    config = get_config(["--data_set=hand", "--task=estimation", "--input_height=40", "--input_width=32"])
    with pytest.raises(ConfigError, match=r"--input_height=40: the hand estimator \(--estimator_depth=3\) needs a "
                                          r"multiple of 32"):
        check_config(config)


def test_the_estimation_probe_holds_out_a_fifth_of_what_is_left_at_most_and_only_when_it_will_run():
    assert estimation_probe_images(get_config([]), 10 ** 6, 200000) == (1024, 512)
    assert estimation_probe_images(get_config([]), 2744, 2744) == (548, 512)  # the bundled sample's
    assert estimation_probe_images(get_config([]), 99, 10000) == (0, 0)  # 19: too few
    for flags in (["--estimation_probe_step=0"], ["--task=estimation"], ["--data_set=folders"],
                  ["--initial_K_g=99", "--max_step=200"]):  # 499 refiner steps: a probe every 500 never runs
        assert estimation_probe_images(get_config(flags), 10 ** 6, 10 ** 6) == (0, 0), flags
    with pytest.raises(ConfigError, match="^--estimation_probe_step=-1: must not be negative$"):
        check_config(get_config(["--estimation_probe_step=-1"]))


def test_the_probes_hold_out_at_most_a_fifth_of_each_set_and_are_off_when_that_is_too_few(capsys):
    config = get_config(["--probe_images=256"])
    assert probe_images(config, 10000, 1000) == 200 and probe_images(config, 1000000, 1000000) == 256
    assert probe_images(config, 99, 1000) == 0 and probe_images(get_config(["--eval_step=0"]), 10000, 10000) == 0
    assert probe_images(get_config(["--task=estimation"]), 10000, 10000) == 0
    check_config_against_data(get_config(["--sample_image_grid=10,10"]), data_counts(600))  # 480 left
    with pytest.raises(ConfigError, match=r"^--sample_image_grid=10,10: needs 100 test images .* has 80$"):
        check_config_against_data(get_config(["--sample_image_grid=10,10"]), data_counts(100))
    assert capsys.readouterr().out == ""
    check_config_against_data(get_config(["--sample_image_grid=2,2"]), data_counts(50))  # 10 of each: too few
    assert capsys.readouterr().out.startswith("[!] --eval_step=500: no probes")
