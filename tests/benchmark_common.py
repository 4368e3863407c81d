"""What every part of tests/benchmark.py measures with: timing, printing, the run's config, the ceiling.

A module of the benchmark script, not a test (pytest collects test_*.py only); tests/benchmark.py puts
the repository root and tests/ on sys.path before importing it.
"""
import contextlib
import io
import os
import platform
import statistics
import time

import keras
import tensorflow as tf

from config import check_config, get_config
from utils import make_run_folders, run_paths

CEILING_CHANNELS = 64


# ---- measuring ----

def median(values):
    """The median of a list of measurements."""
    return statistics.median(values)


def timed(function, *arguments):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function(*arguments)
    return time.perf_counter() - start, result


@contextlib.contextmanager
def quiet():
    """Swallow the project's `[*]` progress lines while it is being measured."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def quietly(function, *arguments):
    """Call function without its progress lines."""
    with quiet():
        return function(*arguments)


def sync(values):
    """Bring losses to the host, as the training loop does after every iteration."""
    return [float(value) for value in values]


# ---- the machine ----

def cpu_name():
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags():
    """The CPU's feature flags (avx512_bf16, amx_bf16, ...); empty where /proc/cpuinfo is missing."""
    try:
        with open("/proc/cpuinfo") as handle:
            return set(next(line for line in handle if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def num_cpus():
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---- printing ----

def section(title):
    """Print a section heading."""
    print(f"\n== {title}", flush=True)


def show(label, value, unit="", detail=""):
    """Print one figure, its label aligned."""
    print(f"  {label:<46} {value}{(' ' + unit) if unit else ''}{('  ' + detail) if detail else ''}", flush=True)


# ---- the run ----

def make_config(args, tmp, *flags):
    """(config, paths): a checked config whose folders all lie in tmp, summaries and checkpoints out of the way.

    The folders this mode writes to (utils.make_run_folders) are created.
    """
    config = get_config([f"--data_dir={tmp}/data", f"--log_dir={tmp}/logs", f"--sample_dir={tmp}/samples",
                         f"--output_dir={tmp}/outputs", f"--batch_size={args.batch}", "--sample_image_grid=2,2",
                         "--log_step=1000000", "--checkpoint_secs=1000000", *flags])
    check_config(config)
    paths = run_paths(config)
    make_run_folders(config, paths)
    return config, paths


# ---- FLOPs from the layer shapes ----

def conv_flops(model):
    """Forward FLOPs per image of a Keras model's convolutions: 2 * H_out * W_out * k * k * C_in * C_out each."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += conv_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kernel_height, kernel_width, channels_in, channels_out = layer.kernel.shape
            total += 2 * height * width * kernel_height * kernel_width * channels_in * channels_out
    return total


# ---- the ceiling ----

def ceiling_flops(batch, height, width):
    """FLOPs of one 3x3 CEILING_CHANNELS->CEILING_CHANNELS 'SAME' convolution over a batch."""
    return 2 * batch * height * width * 9 * CEILING_CHANNELS * CEILING_CHANNELS


def gflops_meter(call, flops):
    """A measure(seconds) -> GFLOP/s that calls call() (at least twice) for that long."""
    def measure(seconds):
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < seconds:
            call()
            calls += 1
        return flops * calls / (time.perf_counter() - start) / 1e9

    return measure


def tf_ceiling(batch, height, width):
    """A measure(seconds) -> GFLOP/s of one 3x3 64->64 'SAME' convolution, forward, NHWC fp32, tf.function."""
    images = tf.random.normal((batch, height, width, CEILING_CHANNELS))
    kernel = tf.random.normal((3, 3, CEILING_CHANNELS, CEILING_CHANNELS), stddev=0.05)
    convolve = tf.function(lambda: tf.nn.conv2d(images, kernel, 1, "SAME"))
    measure = gflops_meter(lambda: float(convolve()[0, 0, 0, 0]), ceiling_flops(batch, height, width))
    measure(0)  # trace, and let oneDNN pick its kernel
    return measure
