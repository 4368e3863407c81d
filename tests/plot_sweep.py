"""A sweep's figure and table: each run's probes against its refiner steps, and their last values.

    pip install matplotlib   # for the figure only; not in requirements.txt
    python tests/plot_sweep.py --log_dir=logs --out=assets/sweep_probes.png RUN [RUN ...]
    python tests/plot_sweep.py --swept=affine_correction,noise_channels --out=assets/realism_sweep.png RUN ...

A script, not a test. The table (markdown, printed: the README's tables are pasted from it) holds what
TensorBoard's HParams tab shows for the same runs: the swept flags and the last value of each probe, with
the synthetic images' realism mark in brackets.
"""
import argparse
import os
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

PANELS = {"probe/realism_accuracy": ("realism: classifier accuracy (0.5 = cannot tell)", "realism accuracy (synthetic)"),
          "probe/statistics_distance": ("statistics distance (real spreads)", "statistics distance"),
          "probe/brightness_distance": ("brightness distance (real spreads)", "brightness distance"),
          "probe/grey_level_change": ("mean grey-level change from input", "grey-level change"),
          "probe/label_shift": ("label proxy shift (pixels)", "label shift (px)")}


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
    hparams = {name: getattr(value, value.WhichOneof("kind"))
               for name, value in plugin.session_start_info.hparams.items()}
    return scalars, hparams


def shown(value):
    """A hyperparameter as the table and the legend show it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def draw(runs, swept, out):
    """The figure: a panel a probe, a line a run, labelled by the swept flags whose values differ."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    varied = [flag for flag in swept if len({shown(hparams[flag]) for _, hparams in runs.values()}) > 1] or swept
    panels = [tag for tag in PANELS if any(tag in scalars for scalars, _ in runs.values())]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), constrained_layout=True)
    for axis, tag in zip(axes, panels):
        for scalars, hparams in runs.values():
            if tag in scalars:
                axis.plot(*scalars[tag], marker=".", linewidth=1.2,
                          label=", ".join(f"{flag}={shown(hparams[flag])}" for flag in varied))
        axis.set_title(PANELS[tag][0], fontsize=9)
        axis.set_xlabel("refiner step")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.savefig(out, dpi=110)
    print(f"[*] Wrote {out}")


def table(runs, swept):
    """The markdown table: a row a run, its swept flags and each probe's last value."""
    lines = ["| " + " | ".join([*swept, *(heading for _, heading in PANELS.values())]) + " |",
             "|" + "---|" * (len(swept) + len(PANELS))]
    for scalars, hparams in runs.values():
        cells = [shown(hparams[flag]) for flag in swept]
        for tag in PANELS:
            last = f"{scalars[tag][1][-1]:.2f}" if tag in scalars else "-"
            if tag == "probe/realism_accuracy":
                last += f" ({scalars['probe/realism_accuracy_synthetic'][1][0]:.2f})"
            cells.append(last)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run names under --log_dir")
    parser.add_argument("--log_dir", default="logs")
    parser.add_argument("--out", default="assets/sweep_probes.png")
    parser.add_argument("--swept", default="reg_scale,optimizer", help="the flags the runs differ in, comma-separated")
    args = parser.parse_args()
    swept = args.swept.split(",")
    runs = {name: read_run(os.path.join(args.log_dir, name)) for name in args.runs}
    draw(runs, swept, args.out)
    print(table(runs, swept))


if __name__ == "__main__":
    main()
