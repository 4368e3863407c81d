"""Exported refiners: a .keras file and a SavedModel that others load, written atomically, loaded back."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import export
from checkpoints import CheckpointError
from data.pipelines import crops_on_disk
from export import KERAS_FILE, SAVED_MODEL_DIR, RefinerExporter, load_any_refiner
from model import build_refiner
from utils import OutputError

SHAPE = (35, 55, 1)
# Run by a Python that has only Keras and TensorFlow: `-I` leaves the working folder and the
# environment's paths out, and the working folder is not the repository.
OUTSIDE = """
import json, sys
import keras, numpy as np, tensorflow as tf
images = np.load(sys.argv[3])
model = keras.models.load_model(sys.argv[1])
serving = tf.saved_model.load(sys.argv[2]).signatures["serving_default"]
print(json.dumps({"keras": model(images).numpy().tolist(), "policy": model.dtype_policy.name,
                  "weights": sorted({w.dtype for w in model.weights}),
                  "saved_model": serving(images=tf.constant(images))["refined"].numpy().tolist()}))
"""


def inputs(count=3):
    return np.random.default_rng(0).uniform(-1, 1, (count, *SHAPE)).astype(np.float32)


def load_outside(keras_path, saved_model_path, folder):
    """What a plain Python (no project code importable) computes with the two exports."""
    np.save(folder / "images.npy", inputs())
    (folder / "load.py").write_text(OUTSIDE)
    result = subprocess.run([sys.executable, "-I", "load.py", str(keras_path), str(saved_model_path), "images.npy"],
                            cwd=folder, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def policy():
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def test_exports_load_outside_the_project_as_float32_with_the_refiners_numbers(tmp_path, policy):
    policy("mixed_bfloat16")  # trained in bfloat16: the exports still compute in float32
    refiner = build_refiner(SHAPE)
    RefinerExporter(refiner, tmp_path)()
    policy("float32")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    loaded = load_outside(tmp_path / KERAS_FILE, tmp_path / SAVED_MODEL_DIR, outside)
    assert loaded["policy"] == "float32" and loaded["weights"] == ["float32"]
    # The reference: the same weights in a refiner built in float32, not by the code under test.
    float32_refiner = build_refiner(SHAPE)
    float32_refiner.set_weights(refiner.get_weights())
    expected = float32_refiner(inputs()).numpy()
    np.testing.assert_allclose(loaded["keras"], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded["saved_model"], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(export.float32_refiner(refiner)(inputs()).numpy(), expected, rtol=0, atol=1e-6)
    # The bfloat16 refiner itself (pinned above, not `auto`'s): the same function up to bfloat16's
    # rounding, each layer's output to 8 significant bits: at most 0.0055 in 40 random initialisations.
    convolutions = [layer for layer in refiner.layers if isinstance(layer, keras.layers.Conv2D)]
    assert {layer.compute_dtype for layer in convolutions} == {"bfloat16"}
    np.testing.assert_allclose(expected, refiner(inputs()).numpy().astype(np.float32), rtol=0, atol=0.02)


@pytest.mark.parametrize("name", [KERAS_FILE, SAVED_MODEL_DIR])
def test_either_export_loads_back_as_a_refiner(tmp_path, name):
    refiner = build_refiner(SHAPE)
    RefinerExporter(refiner, tmp_path)()
    refine, loaded = load_any_refiner(str(tmp_path / name), "logs", SHAPE, "load_path")
    assert loaded == str(tmp_path / name)
    np.testing.assert_allclose(np.asarray(refine(tf.constant(inputs()))), refiner(inputs()).numpy(), atol=1e-6)
    with pytest.raises(CheckpointError, match=r"takes \(35, 55, 1\) images, the flags ask for \(36, 60, 1\)"):
        load_any_refiner(str(tmp_path / name), "logs", (36, 60, 1), "load_path")


def test_a_damaged_export_is_one_clear_error(tmp_path):
    RefinerExporter(build_refiner(SHAPE), tmp_path)()
    whole = (tmp_path / KERAS_FILE).read_bytes()
    (tmp_path / "cut.keras").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(CheckpointError, match=r"^--refiner_path=.*cut\.keras: not a whole \.keras file"):
        load_any_refiner(str(tmp_path / "cut.keras"), "logs", SHAPE, "refiner_path")
    graph = tmp_path / SAVED_MODEL_DIR / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"^--load_path=.*: cannot load the refiner \("):
        load_any_refiner(str(tmp_path / SAVED_MODEL_DIR), "logs", SHAPE, "load_path")
    with pytest.raises(CheckpointError, match=r"no such file"):
        load_any_refiner(str(tmp_path / "missing.keras"), "logs", SHAPE, "load_path")


def test_a_failed_export_keeps_the_previous_one_whole(tmp_path, monkeypatch):
    first = build_refiner(SHAPE)
    RefinerExporter(first, tmp_path)()
    before = sorted(os.listdir(tmp_path / SAVED_MODEL_DIR))

    def crash_midway(module, path, signatures):
        os.makedirs(os.path.join(path, "variables"))  # half a SavedModel, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", crash_midway)
    with pytest.raises(OutputError, match="No space left on device"):
        RefinerExporter(build_refiner(SHAPE), tmp_path)()
    assert sorted(os.listdir(tmp_path / SAVED_MODEL_DIR)) == before
    assert sorted(os.listdir(tmp_path)) == [KERAS_FILE, SAVED_MODEL_DIR]  # no temporary left behind
    refine, _ = load_any_refiner(str(tmp_path / SAVED_MODEL_DIR), "logs", SHAPE, "load_path")
    np.testing.assert_allclose(np.asarray(refine(tf.constant(inputs()))), first(inputs()).numpy(), atol=1e-6)


def test_a_saved_model_refines_inside_the_estimators_pipeline(tmp_path):
    # --refiner_path refines the estimator's crops inside tf.data: a loaded SavedModel must work there too.
    paths = []
    for index in range(5):
        paths.append(str(tmp_path / f"{index}_cropped.png"))
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (84, 140), dtype=np.uint8)).save(paths[-1])
    refiner = build_refiner(SHAPE)
    RefinerExporter(refiner, tmp_path)()
    refine, _ = load_any_refiner(str(tmp_path / SAVED_MODEL_DIR), "logs", SHAPE, "refiner_path")
    everything = np.arange(len(paths))
    through_export = crops_on_disk(paths, SHAPE, 2, str(tmp_path), refine)[everything]
    direct = crops_on_disk(paths, SHAPE, 2, str(tmp_path), lambda images: refiner(images, training=False))[everything]
    assert through_export.shape == (5, *SHAPE)
    assert np.abs(through_export.astype(int) - direct.astype(int)).max() <= 1  # quantised to uint8 alike
