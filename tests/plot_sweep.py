"""A sweep's figure and table: each run's probes against its refiner steps, and their last values.

    pip install matplotlib   # for the figure only; not in requirements.txt
    python tests/plot_sweep.py --log_dir=logs --out=assets/sweep_probes.png RUN [RUN ...]
    python tests/plot_sweep.py --swept=affine_correction,noise_channels --out=assets/realism_sweep.png RUN ...

A script, not a test. The table (markdown, printed: the README's tables are pasted from it) holds what
TensorBoard's HParams tab shows for the same runs: the swept flags and the last value of each probe, with
the synthetic images' realism mark in brackets; and where an estimation run in the same log folder trained
on a run's refined images (`--task=estimation --refiner_path=RUN`), its mean error on the real images,
beside that of an estimator trained on the unrefined images.
"""
import argparse
import glob
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from utils import load_params  # noqa: E402

PANELS = {"probe/realism_accuracy": ("realism: classifier accuracy (0.5 = cannot tell)",
                                     "realism accuracy (synthetic)"),
          "probe/statistics_distance": ("statistics distance (real spreads)", "statistics distance"),
          "probe/brightness_distance": ("brightness distance (real spreads)", "brightness distance"),
          "probe/grey_level_change": ("mean grey-level change from input", "grey-level change"),
          "probe/label_shift": ("label proxy shift (pixels)", "label shift (px)")}


def read_run(model_dir):
    """({tag: (steps, values)}, {hyperparameter or flag: value}) of one run."""
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
    return scalars, {**load_params(model_dir), **hparams}  # params.json: the flags HParams leaves out


def estimation_errors(log_dir):
    """{generative run folder: mean error of the estimator trained on its refined images}, with the key None
    for an estimator trained on the unrefined images; from every evaluation.json of log_dir."""
    errors = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "*", "evaluation.json"))):
        with open(path, encoding="utf-8") as handle:
            evaluation = json.load(handle)
        error = next(value for key, value in evaluation.items() if key.startswith("mean_"))
        source = evaluation.get("refiner_path") or None
        if source is not None:
            source = os.path.basename(os.path.normpath(source))
            source = source if source.startswith("generative_") else f"generative_{source}"
        errors[source] = error
    return errors


def shown(value):
    """A hyperparameter as the table and the legend show it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def draw(runs, swept, out):
    """The figure: a panel a probe, a line a run; the legend below names each run by the swept flags whose
    values differ from the first run's (the first by all that vary)."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    varied = [flag for flag in swept if len({shown(hparams[flag]) for _, hparams in runs.values()}) > 1] or swept
    first = next(iter(runs.values()))[1]
    labels = [", ".join(f"{flag}={shown(hparams[flag])}" for flag in varied
                        if index == 0 or shown(hparams[flag]) != shown(first[flag]))
              for index, (_, hparams) in enumerate(runs.values())]
    panels = [tag for tag in PANELS if any(tag in scalars for scalars, _ in runs.values())]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4 + 0.2 * len(runs)),
                                constrained_layout=True)
    for axis, tag in zip(axes, panels):
        for (scalars, _), label in zip(runs.values(), labels):
            if tag in scalars:
                axis.plot(*scalars[tag], marker=".", linewidth=1.2, label=label)
        axis.set_title(PANELS[tag][0], fontsize=9)
        axis.set_xlabel("refiner step")
        axis.grid(alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=8,
                  ncol=1 if len(runs) > 4 else len(runs))
    figure.savefig(out, dpi=110)
    print(f"[*] Wrote {out}")


def table(runs, swept, errors):
    """The markdown table: a row a run, its swept flags, each probe's last value and its estimator's error."""
    lines = ["| " + " | ".join([*swept, *(heading for _, heading in PANELS.values()), "estimator error"]) + " |",
             "|" + "---|" * (len(swept) + len(PANELS) + 1)]
    for name, (scalars, hparams) in runs.items():
        cells = [shown(hparams[flag]) for flag in swept]
        for tag in PANELS:
            last = f"{scalars[tag][1][-1]:.2f}" if tag in scalars else "-"
            if tag == "probe/realism_accuracy":
                last += f" ({scalars['probe/realism_accuracy_synthetic'][1][0]:.2f})"
            cells.append(last)
        cells.append(f"{errors[name]:.2f}" if name in errors else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if None in errors:
        lines.append(f"\nEstimator trained on the unrefined images: {errors[None]:.2f}")
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
    print(table(runs, swept, estimation_errors(args.log_dir)))


if __name__ == "__main__":
    main()
