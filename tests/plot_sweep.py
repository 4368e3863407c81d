"""The README's sweep figure: each run's probes against its refiner steps, and their last values as a table.

    pip install matplotlib   # for the figure only; not in requirements.txt
    python tests/plot_sweep.py --log_dir=logs --out=assets/sweep_probes.png RUN [RUN ...]

A script, not a test. The table (markdown, printed) holds what TensorBoard's HParams tab shows for the
same runs: the flags a sweep varies and the last value of each probe, with the synthetic baseline.
"""
import argparse
import os
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

PANELS = {"probe/realism_accuracy": "realism: classifier accuracy (0.5 = cannot tell)",
          "probe/statistics_distance": "statistics distance (real spreads)",
          "probe/grey_level_change": "mean grey-level change from input",
          "probe/label_shift": "pupil shift (pixels)"}
SWEPT = ("reg_scale", "optimizer")


def read_run(model_dir):
    """({tag: (steps, values)}, {hyperparameter: value}) of one run's events."""
    events = event_accumulator.EventAccumulator(model_dir, size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    scalars = {tag: ([event.step for event in events.Tensors(tag)],
                     [float(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)])
               for tag in tags if tag.startswith("probe/")}
    plugin = plugin_data_pb2.HParamsPluginData.FromString(
        events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content)
    hparams = {name: value.string_value or value.number_value
               for name, value in plugin.session_start_info.hparams.items()}
    return scalars, hparams


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run names under --log_dir")
    parser.add_argument("--log_dir", default="logs")
    parser.add_argument("--out", default="assets/sweep_probes.png")
    args = parser.parse_args()
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    runs = {name: read_run(os.path.join(args.log_dir, name)) for name in args.runs}
    figure, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4), constrained_layout=True)
    for axis, (tag, title) in zip(axes, PANELS.items()):
        for name, (scalars, hparams) in runs.items():
            steps, values = scalars[tag]
            axis.plot(steps, values, marker=".", linewidth=1.2,
                      label=", ".join(f"{flag}={hparams[flag]:g}" if isinstance(hparams[flag], float)
                                      else f"{flag}={hparams[flag]}" for flag in SWEPT))
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("refiner step")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.savefig(args.out, dpi=110)
    print(f"[*] Wrote {args.out}")
    print("| " + " | ".join([*SWEPT, "realism (synthetic: baseline)", *list(PANELS)[1:]]) + " |")
    print("|" + "---|" * (len(SWEPT) + len(PANELS)))
    for scalars, hparams in runs.values():
        baseline = scalars["probe/realism_accuracy_synthetic"][1][0]
        last = [scalars[tag][1][-1] for tag in PANELS]
        cells = [f"{hparams[flag]:g}" if isinstance(hparams[flag], float) else str(hparams[flag]) for flag in SWEPT]
        print("| " + " | ".join([*cells, f"{last[0]:.2f} ({baseline:.2f})", *(f"{value:.2f}" for value in last[1:])])
              + " |")


if __name__ == "__main__":
    main()
