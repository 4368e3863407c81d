"""What the probes cost: training time with and without them, at the default flags.

    python tests/benchmark_probes.py [--batch 512] [--rounds 3] [--iterations 4] [--eval_step 500]
                                     [--estimation_probe_step 500]

Not a test. One adversarial iteration (K_g refiner steps, K_d discriminator steps, as the trainer runs
them), one probe (refining the held-out images, the realism classifier's five folds, the statistics,
the label proxy) and one estimation probe (refining its held-out images, training the small estimator,
measuring it on the held-out real images) are timed in interleaved rounds on the same Trainer; each
probe's share of training time is one probe per eval_step (estimation_probe_step) refiner steps, i.e.
per eval_step / K_g iterations.
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
from model import GAZE_ESTIMATION  # noqa: E402
from trainer import Trainer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="the training batch (the default flags': 512)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=4, help="adversarial iterations a round")
    parser.add_argument("--eval_step", type=int, default=500, help="refiner steps between probes")
    parser.add_argument("--estimation_probe_step", type=int, default=500,
                        help="refiner steps between estimation probes")
    parser.add_argument("--frames", type=int, default=6500,
                        help="synthetic and real sample images to write (6500: the estimation probe holds out its "
                             "1024 and 512, as at the published sizes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_sample(os.path.join(tmp, "data", "gaze"), num_synthetic=args.frames, num_real=args.frames, seed=5)
        config, paths = make_config(args, tmp, "--buffer_size=2560", f"--eval_step={args.eval_step}",
                                    f"--estimation_probe_step={args.estimation_probe_step}")
        trainer = Trainer(config, paths, load_gaze_data(config), estimation_task=GAZE_ESTIMATION)
        trainer._hold_out_for_probes()
        probes = {"probe": trainer.probes, "estimation probe": trainer.estimation_probe}
        iteration = tf_runner(trainer, Feeds(config, trainer.data, args.batch).memory, config.K_g, config.K_d)
        iteration(1)  # traces
        times = {"iteration": [], **{name: [] for name in probes}}
        with tf.summary.create_noop_writer().as_default():
            for probe in probes.values():
                probe.write(trainer.refine, 0)  # traces; the estimation probe's mark
            for _ in range(args.rounds):
                times["iteration"].append(iteration(args.iterations))
                for name, probe in probes.items():
                    start = time.perf_counter()
                    probe.write(trainer.refine, 0)
                    times[name].append(time.perf_counter() - start)
    per_iteration = median(times["iteration"])
    section(f"Probes at batch {args.batch}, {len(trainer.probes.synthetic)} images of each kind held out for the "
            f"probe, {len(trainer.estimation_probe.held_out.synthetic)} synthetic and "
            f"{len(trainer.estimation_probe.held_out.real)} real for the estimation probe, "
            f"{tf.keras.mixed_precision.global_policy().compute_dtype}")
    show("adversarial iteration", f"{per_iteration:.3f}", "s", f"K_g={config.K_g}, K_d={config.K_d}, "
         f"{args.rounds} rounds of {args.iterations}")
    for name, every in (("probe", args.eval_step), ("estimation probe", args.estimation_probe_step)):
        per_probe = median(times[name])
        without = per_iteration * every / config.K_g
        show(f"one {name}", f"{per_probe:.3f}", "s", f"{per_probe / per_iteration:.2f} iterations")
        show(f"training, {every} refiner steps with one {name}", f"{without + per_probe:.1f}", "s",
             f"{100 * per_probe / (per_probe + without):.2f}% of training time in it ({without:.1f} s without)")


if __name__ == "__main__":
    main()
