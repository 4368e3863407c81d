"""SimGAN command line: `python main.py` trains, `--is_train=False --load_path=NAME` refines.

`--task=estimation` trains the paper's gaze estimator (on refined crops with `--refiner_path=NAME`)
and evaluates it on the real images; with `--is_train=False --load_path=NAME` it evaluates again.
"""
import os
import random
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not for users

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from checkpoints import CheckpointError  # noqa: E402
from config import ConfigError, check_config, check_config_against_data, get_config  # noqa: E402
from data.gaze_data import load_gaze_data, write_real_samples  # noqa: E402
from data.reports import DataError  # noqa: E402
from estimation import run_estimation  # noqa: E402
from refine import refine_folder  # noqa: E402
from trainer import Trainer  # noqa: E402
from training_loop import TrainingDiverged  # noqa: E402
from utils import OutputError, cpu_has_bf16, gpu_memory_mb, make_run_folders, run_paths, save_params  # noqa: E402

USER_ERRORS = (ConfigError, DataError, OutputError, CheckpointError, TrainingDiverged)


def set_seeds(seed):
    """Seed Python, numpy and TensorFlow so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


def configure_gpus(memory_fraction):
    """TF2's form of the original's per_process_gpu_memory_fraction: growth at 1.0, else a hard limit."""
    gpus = tf.config.list_physical_devices("GPU")
    totals = gpu_memory_mb() if gpus and memory_fraction < 1.0 else []
    for index, gpu in enumerate(gpus):
        if index < len(totals):
            limit = int(totals[index] * memory_fraction)
            tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
        else:
            tf.config.experimental.set_memory_growth(gpu, True)


def configure_precision(choice):
    """Set Keras' global dtype policy; returns the precision used. Variables stay float32 in every case."""
    if choice == "auto":
        # Measured by tests/benchmark.py: about 4x faster on a CPU with native bfloat16, same losses within 1.5%.
        choice = "bf16" if not tf.config.list_physical_devices("GPU") and cpu_has_bf16() else "fp32"
    policies = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
    keras.mixed_precision.set_global_policy(policies[choice])
    if choice != "fp32":
        print(f"[*] Mixed precision: {choice} compute, float32 weights (--mixed_precision=fp32 for full precision)")
    return choice


def run(config):
    """Check the flags, load the data, check the flags against it, then run the task in its mode."""
    check_config(config)
    configure_gpus(config.gpu_memory_fraction)
    configure_precision(config.mixed_precision)
    paths = run_paths(config)
    make_run_folders(config, paths)
    set_seeds(config.random_seed)
    data = load_gaze_data(config)
    check_config_against_data(config, data)  # the last check: no network exists yet
    if config.is_train:
        save_params(config, paths)
        write_real_samples(data, config.sample_dir, config.random_seed)  # what the refiner aims for
    if config.task == "estimation":
        run_estimation(config, paths, data)  # train and evaluate, or evaluate again
    elif config.is_train:
        Trainer(config, paths, data).train()
    else:
        refine_folder(config, paths, data)  # refine every synthetic image


def main(argv=None):
    """Entry point; user errors end in one `[!]` line and exit status 1."""
    config = get_config(argv)
    try:
        run(config)
    except USER_ERRORS as error:
        print(f"[!] {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[!] Interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
