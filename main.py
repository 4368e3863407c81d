"""SimGAN command line: `python main.py` trains, `--is_train=False --load_path=NAME` refines.

`--task=estimation` trains the paper's gaze estimator (on refined crops with `--refiner_path=NAME`)
and evaluates it on the real images; with `--is_train=False --load_path=NAME` it evaluates again.
"""
import os
import random
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not for users

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from checkpoints import CheckpointError, keep_run_networks  # noqa: E402
from config import (ConfigError, check_config, check_config_against_data, check_config_against_replicas,  # noqa: E402
                    get_config)
from data.folder_data import load_folder_data  # noqa: E402
from data.gaze_data import load_gaze_data  # noqa: E402
from data.hand_data import load_hand_data  # noqa: E402
from data.image_folder import write_real_samples  # noqa: E402
from data.pipelines import stream_failure  # noqa: E402
from data.reports import DataError  # noqa: E402
from distribution import (configure_devices, configure_precision, describe, is_chief, make_strategy,  # noqa: E402
                          planned_replicas)
from estimation import run_estimation  # noqa: E402
from model import GAZE_ESTIMATION  # noqa: E402
from pose_model import HAND_ESTIMATION  # noqa: E402
from refine import refine_folder, take_trained_input  # noqa: E402
from trainer import Trainer  # noqa: E402
from training_loop import TrainingDiverged  # noqa: E402
from utils import OutputError, make_run_folders, run_paths, save_params  # noqa: E402
from worker_processes import WorkerLost  # noqa: E402

USER_ERRORS = (ConfigError, DataError, OutputError, CheckpointError, TrainingDiverged, WorkerLost)
# --data_set: its loader (-> a data.data_set.DataSet) and its part of the estimation task.
DATA_SETS = {"gaze": (load_gaze_data, GAZE_ESTIMATION), "hand": (load_hand_data, HAND_ESTIMATION),
             "folders": (load_folder_data, None)}


def set_seeds(seed):
    """Seed Python, numpy and TensorFlow so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


def run(config):
    """Check the flags, set up the devices, load the data, check the flags against both, then run the task."""
    check_config(config)
    check_config_against_replicas(config, planned_replicas(config))
    configure_devices(config)
    precision = configure_precision(config.mixed_precision)
    refining = not config.is_train and config.task == "generative"
    strategy = tf.distribute.get_strategy() if refining else make_strategy(config)
    chief = is_chief(strategy)
    paths = run_paths(config)
    if config.is_train and config.task == "generative":
        keep_run_networks(config, paths.model_dir)
    make_run_folders(config, paths, chief)
    set_seeds(config.random_seed)
    load_data, estimation_task = DATA_SETS[config.data_set]
    if refining and config.data_set == "folders":
        take_trained_input(config)
    data = load_data(config)
    check_config(config)  # again: the data may have set flags (the sample's schedule, the folders' input)
    check_config_against_replicas(config, strategy.num_replicas_in_sync)
    check_config_against_data(config, data)  # the last check: no network exists yet
    if config.is_train:
        print(describe(strategy, precision))
    if config.is_train and chief:
        save_params(config, paths)
        write_real_samples(data, config.sample_dir, config.random_seed)  # what the refiner aims for
    if config.task == "estimation":  # train and evaluate, or evaluate again
        run_estimation(config, paths, data, estimation_task, strategy)
    elif config.is_train:
        Trainer(config, paths, data, strategy, estimation_task).train()
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
    except tf.errors.OpError as error:  # an input stream that can read nothing more: one line; else a bug
        if stream_failure(error) is None:
            raise
        print(f"[!] {stream_failure(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[!] Interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
