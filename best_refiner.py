"""The refiner that refined best so far: chosen at each probe, kept apart from the rotating checkpoints.

Training longer can make refined images worse training data (the labels drift while the losses do
not show it), so a run keeps, beside its latest refiner, the one its probes rated best:

- where the estimation probe runs (labelled real images: gaze, hand), the lowest
  `probe/estimation_error`: what refinement is for, measured;
- elsewhere (folders of plain images, or --estimation_probe_step=0), the lowest
  `probe/statistics_distance` among the probes whose `label_shift` (where the data set has a label
  proxy) is at most LABEL_SHIFT_TOLERANCE of the image's diagonal: closer to the real images on
  average while the proxy of the label stays within its noise. Only a proxy: nothing measured the labels.

It is exported as MODEL_DIR/refiner_best.keras and refiner_best_saved_model/ (as refiner.keras is),
described in MODEL_DIR/refiner_best.json (step, criterion, the probe's values), written after them, so
a resumed run goes on comparing with it. `--refiner=best` loads it in test mode and for --refiner_path.
"""
import json
import math
import os

from tqdm import tqdm

from utils import write_json

STATE_FILE = "refiner_best.json"
# The label proxy's shift allowed to the statistics criterion, a share of the image diagonal: 1.3 px on 35x55 eyes,
# where the faithful run's probes read 1.0-1.8 px and the drift of a long run reached 2.8 px (README).
LABEL_SHIFT_TOLERANCE = 0.02


def read_best(model_dir):
    """The best refiner's record of a run ({"step", "criterion", "score", "values"}), or None."""
    try:
        with open(os.path.join(model_dir, STATE_FILE), "rb") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and {"step", "criterion", "score"} <= set(state) else None


def describe_best(model_dir):
    """One phrase: the best refiner's step and score, from its record."""
    state = read_best(model_dir)
    if state is None:
        return "no record of its probe"
    criterion = state["criterion"].replace("_", " ")
    return f"refiner step {state['step']}, {criterion} {state['score']:.2f} {state.get('unit', '')}".rstrip()


class BestRefiner:
    """Compares each probe with the best so far; a better one is exported (exporter()) and recorded."""

    def __init__(self, exporter, criterion, image_shape, unit):
        """exporter: a RefinerExporter of the training refiner named export.BEST_NAME; criterion: the probe value
        to lower, "estimation_error" or "statistics_distance"; unit: the criterion's (degrees, real spreads)."""
        self.exporter, self.criterion, self.unit = exporter, criterion, unit
        self.model_dir = exporter.model_dir
        self.label_shift_limit = LABEL_SHIFT_TOLERANCE * math.hypot(*image_shape[:2])
        self.state = read_best(self.model_dir)
        if self.state is not None and self.state["criterion"] != criterion:
            tqdm.write(f"[*] The best refiner so far was chosen by {self.state['criterion']}; this run chooses by "
                       f"{criterion}: the next probe replaces it")
            self.state = None

    def consider(self, step, values):
        """Keep the refiner if its probe values (of refiner step `step`) are the best so far; True if kept."""
        score = values.get(self.criterion)
        if score is None or not math.isfinite(score) or (self.criterion == "statistics_distance"
                             and values.get("label_shift", 0.0) > self.label_shift_limit):
            return False
        if self.state is not None and score >= self.state["score"]:
            return False
        self.exporter()
        self.state = {"step": int(step), "criterion": self.criterion, "score": float(score), "unit": self.unit,
                      "values": {name: float(value) for name, value in values.items()}}
        write_json(os.path.join(self.model_dir, STATE_FILE), self.state)
        return True

    def report_line(self):
        """The run report's line on the best refiner."""
        if self.state is None:
            why = (f"no probe's label shift was under {self.label_shift_limit:.1f} px"
                   if self.criterion == "statistics_distance" else "no estimation probe ran")
            return f"[*] No best refiner kept ({why}); the latest is refiner.keras"
        values = self.state["values"]
        others = [f"{name.replace('_', ' ')} {values[name]:.2f}" for name in ("realism_accuracy", "statistics_distance",
                                                                            "label_shift")
                  if name in values and name != self.criterion]
        probes = f" ({', '.join(others)})" if others else ""
        return (f"[*] Best refiner: {describe_best(self.model_dir)}{probes}, exported as "
                f"{' and '.join(self.exporter.files)} (--refiner=best)")
