"""One long run on the bundled gaze sample: the estimation probe against the full estimation task (a script;
pytest does not collect it).

    pip install matplotlib   # for the figure only; not in requirements.txt
    python tests/benchmark_best_refiner.py [--segments=250,550,850,1150] [--out=/tmp/best_refiner] [FLAGS]
    python tests/benchmark_best_refiner.py --probe_seeds=3 [--out=/tmp/best_refiner]   # afterwards

Trains one run (the sample's schedule, longer) in segments: each segment resumes the run with a larger
--max_step, and the refiner of each segment's end (its refiner.keras) is copied aside. Then the full
estimation task (`--task=estimation --batch_size=128 --refiner_path=...`) trains on the unrefined images,
on each copy and on the run's refiner_best.keras (unless it is one of them), and the script prints a table
(refiner step, the probe's error, the full task's) and writes OUT/best_refiner.png: the estimation probe
against refiner steps, the best step marked, the full task's errors beside it. Other flags go to every
training segment.

With --probe_seeds=K it trains nothing: it measures the noise of one estimator of the probe, on the same
run's held-out images (drawn again as the trainer draws them) with K seeds (initial weights and batch
order), on the unrefined images and on each copy (the probe's error is the mean of SEEDS of them), and
adds them to the table and the figure.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from plot_sweep import read_run  # noqa: E402

RUN = "long"


def main_py(*flags):
    """Run main.py with flags; stop the script if it fails."""
    subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *flags], check=True, cwd=ROOT)


def train(out, segments, extra):
    """The run, segment by segment; {refiner step: the copy of its refiner.keras}."""
    model_dir = os.path.join(out, "logs", f"generative_{RUN}")
    copies = {}
    for max_step in segments:
        main_py(f"--log_dir={out}/logs", f"--sample_dir={out}/samples", f"--load_path={RUN}",
                f"--max_step={max_step}", "--estimation_probe_step=200", *extra)
        scalars, _ = read_run(model_dir)
        step = max(scalars["probe/realism_accuracy"][0])  # the refiner's step at the segment's end (a probe step)
        copies[step] = os.path.join(out, f"refiner_{step}.keras")
        shutil.copy(os.path.join(model_dir, "refiner.keras"), copies[step])
    return model_dir, copies


def probe_seed_errors(out, seeds):
    """{refiner step (None: unrefined): [the estimation probe's error with each seed]}, on the run's held-out
    images, for each copy of OUT."""
    import glob
    import re

    import tensorflow as tf

    from config import estimation_probe_images, get_config, image_shape, probe_images
    from data.gaze_data import load_gaze_data
    from distribution import configure_precision
    from estimation_probe import EstimationProbe
    from export import load_any_refiner
    from model import GAZE_ESTIMATION
    from utils import denormalize, normalize

    configure_precision("auto")
    config = get_config(["--estimation_probe_step=200", "--max_step=1000000"])
    data, shape = load_gaze_data(config), image_shape(config)
    count = probe_images(config, data.num_synthetic, len(data.real_images))
    data.hold_out(count, shape, config.random_seed)  # as the trainer does, so the next draw is the run's
    counts = estimation_probe_images(config, data.num_synthetic, len(data.real_images))
    labelled = data.hold_out_labelled(*counts, shape, config.random_seed + 2)
    images = {None: labelled.synthetic}
    for path in glob.glob(os.path.join(out, "refiner_*.keras")):
        refine, _ = load_any_refiner(path, None, shape, "refiner_path")
        images[int(re.findall(r"\d+", os.path.basename(path))[0])] = denormalize(
            tf.concat([refine(normalize(tf.cast(labelled.synthetic[start:start + 128], tf.float32)))
                       for start in range(0, len(labelled.synthetic), 128)], axis=0))
    errors = {step: [] for step in images}
    for seed in seeds:  # one estimator of each seed's probe: no two share weights or batch order
        probe = EstimationProbe(labelled, GAZE_ESTIMATION, config, 128, seed)
        for step, pixels in images.items():
            errors[step].append(probe.estimator_error(pixels, 0))
    return errors


def full_task_error(out, name, refiner_path=None):
    """The mean error of the full estimation task trained on refiner_path's images (the unrefined without one)."""
    flags = [f"--log_dir={out}/estimation", f"--load_path={name}", "--task=estimation", "--batch_size=128"]
    main_py(*flags, *([f"--refiner_path={refiner_path}"] if refiner_path else []))
    with open(os.path.join(out, "estimation", f"estimation_{name}", "evaluation.json"), encoding="utf-8") as handle:
        return json.load(handle)["mean_angular_error"]


def draw(scalars, full, seed_means, best_step, out):
    """OUT/best_refiner.png: the probe's error and the full task's against refiner steps, the best step marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, errors = scalars["probe/estimation_error"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, errors, "o-", label="estimation probe, as the run wrote it (one estimator)")
    left.axhline(scalars["probe/estimation_error_synthetic"][1][0], color="grey", ls="--",
                 label="probe, trained on unrefined images")
    if seed_means:
        seed_steps = sorted(step for step in seed_means if step is not None)
        left.plot(seed_steps, [seed_means[step] for step in seed_steps], "^", color="green", ms=8,
                  label="mean of three estimators of other seeds (--probe_seeds=3)")
    full_steps = sorted(step for step in full if step is not None)
    left.plot(full_steps, [full[step] for step in full_steps], "s-", label="full estimation task")
    left.axhline(full[None], color="black", ls=":", label="full task, trained on unrefined images")
    left.axvline(best_step, color="red", alpha=0.5, label=f"best refiner kept (step {best_step})")
    left.set(xlabel="refiner step", ylabel="mean gaze error on real eyes (degrees)")
    left.legend(fontsize=7)
    for tag, label in (("probe/label_shift", "label shift (px)"), ("probe/realism_accuracy", "realism accuracy"),
                       ("probe/statistics_distance", "statistics distance")):
        if tag in scalars:
            right.plot(*scalars[tag], label=label)
    right.axvline(best_step, color="red", alpha=0.5)
    right.set(xlabel="refiner step")
    right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(out, "best_refiner.png"), dpi=100)


def keyed(values):
    """JSON's string keys back to refiner steps (None: unrefined)."""
    return {None if key == "unrefined" else int(key): value for key, value in values.items()}


def unkeyed(values):
    return {"unrefined" if key is None else str(key): value for key, value in values.items()}


def report(out):
    """The table (and the figure) of what the stages measured: the run's probes, the full task, the seeds."""
    model_dir = os.path.join(out, "logs", f"generative_{RUN}")
    with open(os.path.join(model_dir, "refiner_best.json"), encoding="utf-8") as handle:
        best_step = json.load(handle)["step"]
    with open(os.path.join(out, "full_task.json"), encoding="utf-8") as handle:
        full = keyed(json.load(handle))
    seeds_path = os.path.join(out, "probe_seeds.json")
    seeds = {}
    if os.path.exists(seeds_path):
        with open(seeds_path, encoding="utf-8") as handle:
            seeds = keyed(json.load(handle))
    seed_means = {step: float(np.mean(values)) for step, values in seeds.items()}
    scalars, _ = read_run(model_dir)
    probe = {**dict(zip(*scalars["probe/estimation_error"])), None: scalars["probe/estimation_error_synthetic"][1][0]}
    print("refiner step  probe as run (deg)  full task (deg)  one estimator, each seed (deg)  their mean")
    for step in sorted(full, key=lambda step: -1 if step is None else step):
        each = "  ".join(f"{value:5.2f}" for value in seeds.get(step, []))
        mean = f"{seed_means[step]:10.2f}" if step in seed_means else ""
        mark = "  <- best" if step == best_step else ""
        print(f"{'unrefined' if step is None else step:>12}  {probe.get(step, np.nan):>17.2f}  {full[step]:>15.2f}  "
              f"{each:>30}  {mean}{mark}")
    draw(scalars, full, seed_means, best_step, out)
    print(f"wrote {os.path.join(out, 'best_refiner.png')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", default="250,550,850,1150", help="--max_step at each segment's end")
    parser.add_argument("--out", default="/tmp/best_refiner")
    parser.add_argument("--probe_seeds", type=int, default=0, help="measure the probe's noise with this many seeds")
    args, extra = parser.parse_known_args()
    if args.probe_seeds:
        errors = probe_seed_errors(args.out, range(1, args.probe_seeds + 1))
        with open(os.path.join(args.out, "probe_seeds.json"), "w", encoding="utf-8") as handle:
            json.dump(unkeyed(errors), handle, indent=2)
    else:
        model_dir, copies = train(args.out, [int(value) for value in args.segments.split(",")], extra)
        full = {None: full_task_error(args.out, "synthetic")}
        for step, path in copies.items():
            full[step] = full_task_error(args.out, f"step_{step}", path)
        with open(os.path.join(model_dir, "refiner_best.json"), encoding="utf-8") as handle:
            best_step = json.load(handle)["step"]
        if best_step not in full:
            full[best_step] = full_task_error(args.out, "best", os.path.join(model_dir, "refiner_best.keras"))
        with open(os.path.join(args.out, "full_task.json"), "w", encoding="utf-8") as handle:
            json.dump(unkeyed(full), handle, indent=2)
    report(args.out)


if __name__ == "__main__":
    main()
