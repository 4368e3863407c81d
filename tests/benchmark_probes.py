"""What the probes cost: training time with and without them, at the default flags.

    python tests/benchmark_probes.py [--batch 512] [--rounds 3] [--iterations 4] [--eval_step 500]

Not a test. One adversarial iteration (K_g refiner steps, K_d discriminator steps, as the trainer runs
them) and one probe (refining the held-out images, the realism classifier's five folds, the statistics,
the label proxy) are timed in interleaved rounds on the same Trainer; the probes' share of training
time is one probe per eval_step refiner steps, i.e. per eval_step / K_g iterations.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from benchmark_common import make_config, median, section, show  # noqa: E402
from benchmark_training import Feeds, tf_runner  # noqa: E402
from data.gaze_data import load_gaze_data  # noqa: E402
from data.gaze_sample import write_sample  # noqa: E402
from trainer import Trainer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="the training batch (the default flags': 512)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=4, help="adversarial iterations a round")
    parser.add_argument("--eval_step", type=int, default=500, help="refiner steps between probes")
    parser.add_argument("--frames", type=int, default=1500, help="synthetic and real sample images to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_sample(os.path.join(tmp, "data", "gaze"), num_synthetic=args.frames, num_real=args.frames, seed=5)
        config, paths = make_config(args, tmp, "--buffer_size=2560", f"--eval_step={args.eval_step}")
        trainer = Trainer(config, paths, load_gaze_data(config))
        probes = trainer._hold_out_for_probes()
        iteration = tf_runner(trainer, Feeds(config, trainer.data, args.batch).memory, config.K_g, config.K_d)
        iteration(1)  # traces
        probes.write(trainer.refine, 0)
        iterations, probe_times = [], []
        with tf.summary.create_noop_writer().as_default():
            for _ in range(args.rounds):
                iterations.append(iteration(args.iterations))
                start = time.perf_counter()
                probes.write(trainer.refine, 0)
                probe_times.append(time.perf_counter() - start)
    per_iteration, per_probe = median(iterations), median(probe_times)
    share = per_probe / (per_probe + per_iteration * args.eval_step / config.K_g)
    section(f"Probes at batch {args.batch}, {len(probes.synthetic)} images of each kind held out, "
            f"{tf.keras.mixed_precision.global_policy().compute_dtype}")
    show("adversarial iteration", f"{per_iteration:.3f}", "s", f"K_g={config.K_g}, K_d={config.K_d}, "
         f"{args.rounds} rounds of {args.iterations}")
    show("one probe", f"{per_probe:.3f}", "s", f"{per_probe / per_iteration:.2f} iterations")
    without = per_iteration * args.eval_step / config.K_g
    show(f"training, {args.eval_step} refiner steps without probes", f"{without:.1f}", "s")
    show(f"training, {args.eval_step} refiner steps with one probe", f"{without + per_probe:.1f}", "s",
         f"{100 * share:.2f}% of training time in probes")


if __name__ == "__main__":
    main()
