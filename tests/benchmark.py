"""How fast SimGAN runs on this machine: training iteration, test mode, preprocessing, memory.

Run from anywhere: ``python tests/benchmark.py [--batch 64] [--steps N] [--repeats R] [--quick] [--hand]``.
A script, not a test: pytest collects test_*.py only. It writes everything into a temporary folder.
This file is the command line, the order of the sections and the summary line; the measurements are
in tests/benchmark_training.py (the ceiling and the training iteration, with the PyTorch reference of
tests/benchmark_torch.py) and tests/benchmark_pipeline.py (test mode, preprocessing, memory), on the
helpers of tests/benchmark_common.py.

What it prints, each figure a median with the number of repetitions beside it:
- the ceiling: fp32 GFLOP/s of one 3x3 64->64 convolution (forward, NHWC, in a tf.function);
- the training iteration (K_g refiner steps, each pushing to the history buffer, then K_d
  discriminator steps on a history sample), fed from tensors in memory and from the real tf.data
  pipelines, side by side with the same iteration written idiomatically in PyTorch (if installed),
  with XLA (jit_compile), with bfloat16 mixed precision, and under MirroredStrategy over two logical
  CPUs (what tf.distribute costs where it cannot speed anything up), and where its time goes;
- test mode (refine.refine_folder on a folder of crops: load the refiner, decode, refine, encode,
  write) against its compute bound, and each of its stages alone;
- UnityEyes preprocessing (640x480 jpg + json -> crop PNG) in frames/s;
- the peak resident memory of `python main.py` at the default flags for a few iterations;
- with --hand (or --hand_only), the hand experiment's refiner step at 224x224, batch 8, fp32 and bf16
  (tests/benchmark_hand.py);
- a last line `key=value ...` with every figure, for scripts.

The machine may be shared: the configurations are measured in interleaved rounds (each round runs
every one of them once, in an order rotated each round, and measures the ceiling between them), and
every ratio is the median of the per-round ratios, so a slow spell affects both sides of a ratio
alike; the ratio of the best rounds is printed beside it.

FLOPs count convolutions only (pooling, activations, losses and Adam are left out), from the Keras
layer shapes: 2 * H_out * W_out * k * k * C_in * C_out per convolution per image, and a backward
pass counts as 2x its forward pass for every network the gradient flows through.
"""
import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # the Trainer's and the cropper's progress bars
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
sys.path[:0] = [ROOT, TESTS]  # the program's modules, and the benchmark's own beside this file

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmark_common import cpu_flags, cpu_name, num_cpus, quiet  # noqa: E402
from benchmark_hand import measure_hand  # noqa: E402
from benchmark_pipeline import measure_memory, measure_preprocessing, measure_test_mode  # noqa: E402
from benchmark_torch import TORCH_INSTALL, torch  # noqa: E402
from benchmark_training import measure_training  # noqa: E402
from data.gaze_sample import write_sample  # noqa: E402


def parse_args(argv=None):
    """The flags, with the sizes that --quick shrinks filled in."""
    parser = argparse.ArgumentParser(description="Benchmark SimGAN's training, test mode, preprocessing and memory.")
    parser.add_argument("--batch", type=int, default=None, help="batch size of the training iteration and test mode "
                                                                "(default 64, --quick 16)")
    parser.add_argument("--steps", type=int, default=None, help="training iterations per configuration and round "
                                                                "(default 2, --quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds / repetitions of every measurement "
                                                                  "(default 3, --quick 2)")
    parser.add_argument("--hand", action="store_true", help="also the hand refiner's step at 224x224 (minutes on a CPU)")
    parser.add_argument("--hand_batch", type=int, default=8, help="batch of the hand refiner's step (default 8)")
    parser.add_argument("--hand_steps", type=int, default=2, help="timed hand refiner steps per precision")
    parser.add_argument("--hand_bf16", action="store_true", help="measure bf16 even where it is emulated")
    parser.add_argument("--hand_only", action="store_true", help="only the hand refiner's step")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a minute or two: fewer iterations, "
                                                             "smaller folders, a shorter memory run")
    args = parser.parse_args(argv)
    args.batch = args.batch or (16 if args.quick else 64)
    args.steps = args.steps or (1 if args.quick else 2)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.warmup = 1                                   # untimed: tracing, XLA compiling, the buffer in steady state
    args.ceiling_secs = 0.3 if args.quick else 0.6    # each measurement of the ceiling
    args.num_frames = 96 if args.quick else 384       # synthetic frames of the training / test-mode sample
    args.num_real = 64 if args.quick else 256
    args.preprocess_frames = 192 if args.quick else 800
    if args.batch < 2 or args.batch % 2:
        parser.error(f"--batch={args.batch}: must be even and at least 2")
    args.num_frames = max(args.num_frames, args.batch, 64)  # 64: main.py's default 8x8 sample grid
    return args


def header(args):
    """Print the run's sizes, the machine, the versions and the thread counts (and set torch's)."""
    flags = cpu_flags()
    print(f"SimGAN benchmark: batch {args.batch}, {args.repeats} rounds x {args.steps} iterations"
          f"{' (--quick)' if args.quick else ''}")
    print(f"machine: {cpu_name()}, {num_cpus()} CPUs, avx512_bf16: {'avx512_bf16' in flags}, "
          f"amx_bf16: {'amx_bf16' in flags}; load average at start {os.getloadavg()[0]:.2f}")
    versions = f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    print(f"software: {versions}, "
          + (f"torch {torch.__version__}" if torch else f"torch not installed ({TORCH_INSTALL})"))
    threads = num_cpus()
    if torch is not None:
        torch.set_num_threads(threads)
    intra = tf.config.threading.get_intra_op_parallelism_threads() or f"default = {threads}"
    inter = tf.config.threading.get_inter_op_parallelism_threads() or "default"
    print(f"threads: TensorFlow intra-op {intra} (one per CPU), inter-op {inter}; "
          + (f"torch.set_num_threads({threads})" if torch else "torch: -"))


def machine_line(results):
    """`key=value ...` of every figure, floats to 4 significant digits."""
    def text(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    return " ".join(f"{key}={text(value)}" for key, value in results.items())


def main(argv=None):
    """Run every measurement in a temporary folder and print the figures."""
    args = parse_args(argv)
    # Two logical CPUs for the mirrored configuration; one device alone still uses every core.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    header(args)
    started = time.monotonic()
    results = {"batch": args.batch, "steps": args.steps, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="simgan-benchmark-") as tmp:
        if not args.hand_only:
            with quiet():
                write_sample(os.path.join(tmp, "data", "gaze"), num_synthetic=args.num_frames,
                             num_real=args.num_real, seed=1)
            paths, refiner_flops, bf16 = measure_training(args, tmp, results)
            measure_test_mode(args, tmp, paths, refiner_flops, bf16, results)
            measure_preprocessing(args, tmp, results)
            measure_memory(args, tmp, results)
        if args.hand or args.hand_only:
            measure_hand(args, tmp, results)
    results["total_s"] = time.monotonic() - started
    print(f"\n[*] done in {results['total_s']:.0f} s")
    print(machine_line(results))


if __name__ == "__main__":
    main()
