"""A run's flags and its numbers for TensorBoard's HParams dashboard: a sweep's runs in one table.

Each run writes, once, into its own folder: which flags matter for a sweep, with this run's values,
and which of its scalar tags are the numbers to compare (the dashboard shows each one's last value).
`tensorboard --logdir=logs` then lists every run of LOG_DIR as a row of the HParams tab.
"""
import keras
from tensorboard.plugins.hparams import api as hp

# The flags a sweep varies, for each task; the precision is the one the run computes in, not "auto".
GENERATIVE_FLAGS = ("data_set", "reg_scale", "self_regularization", "optimizer", "learning_rate", "K_g", "K_d",
                    "batch_size", "buffer_size", "affine_correction", "noise_channels", "coordinate_channels")
ESTIMATION_FLAGS = ("data_set", "refiner_path", "refiner", "optimizer", "learning_rate", "batch_size", "num_epochs")


def write_hparams(config, flags, metrics, **values):
    """Write the run's hyperparameters (the flags named, the precision, values) and the metric tags to compare
    into the default summary writer."""
    hyperparameters = {flag: getattr(config, flag) for flag in flags}
    hyperparameters["precision"] = keras.mixed_precision.global_policy().compute_dtype
    hyperparameters.update(values)
    hp.hparams_config(hparams=[hp.HParam(name) for name in hyperparameters],
                      metrics=[hp.Metric(tag) for tag in metrics])
    hp.hparams(hyperparameters)
