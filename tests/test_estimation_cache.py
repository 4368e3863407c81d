"""The estimation task's caches beside the UnityEyes crops (data/estimation_cache.py): labels and crops at the
estimator's input size, taken unread on a second start, checked by each file's size and mtime."""
import json
import os
import shutil

import numpy as np
import pytest

from config import get_config
from data import estimation_cache, gaze_data, gaze_labels
from data.gaze_data import load_gaze_data
from data.gaze_labels import label_crops
from data.gaze_sample import write_sample
from data.pipelines import crops_on_disk
from utils import OutputError

SHAPE = (35, 55, 1)
NUM_SYNTHETIC = 24


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    write_sample(root / "gaze", num_synthetic=NUM_SYNTHETIC, num_real=8, seed=3, workers=1)
    return root


@pytest.fixture
def root(pristine, tmp_path):
    """A copy of the sample each test may change."""
    shutil.copytree(pristine, tmp_path / "data")
    return tmp_path / "data"


class Counters:
    """How many .json files were read and crops cut to the input size, by patching the functions that do it."""

    def __init__(self, monkeypatch):
        self.json, self.cut, self.temporary = [], [], 0
        read, cut, on_disk = gaze_labels._gaze_of, gaze_data._cut, gaze_data.crops_on_disk

        def counted_read(path):
            self.json.append(os.path.basename(path))
            return read(path)

        def counted_cut(paths, input_shape):
            self.cut.extend(os.path.basename(path) for path in paths)
            return cut(paths, input_shape)

        def counted_on_disk(*args, **kwargs):
            self.temporary += 1
            return on_disk(*args, **kwargs)

        monkeypatch.setattr(gaze_labels, "_gaze_of", counted_read)
        monkeypatch.setattr(gaze_data, "_cut", counted_cut)
        monkeypatch.setattr(gaze_data, "crops_on_disk", counted_on_disk)

    def reset(self):
        self.json, self.cut, self.temporary = [], [], 0


def start(root):
    """load_gaze_data and estimation_sets as an estimation run's start makes them: (data, sets)."""
    data = load_gaze_data(get_config([f"--data_dir={root}", "--task=estimation", "--validation_share=0.25"]))
    return data, data.estimation_sets(SHAPE, 4)


def every(rows):
    return rows[np.arange(len(rows))]


def assert_as_uncached(data, sets, tmp_path):
    """The sets hold what label_crops without an index and crops_on_disk give: the same labels, the same pixels."""
    paths, gaze = label_crops(data.synthetic_paths)
    split = data.split
    assert split.training_paths + split.validation_paths != [] and sorted(
        split.training_paths + split.validation_paths) == sorted(paths)
    by_path = dict(zip(paths, gaze))
    for (images, labels), names in ((sets.training, split.training_paths), (sets.validation, split.validation_paths)):
        np.testing.assert_array_equal(labels, np.stack([by_path[name] for name in names]))
        np.testing.assert_array_equal(every(images), every(crops_on_disk(names, SHAPE, 8, str(tmp_path))))


def test_a_second_start_reads_no_json_and_cuts_no_crop(root, tmp_path, monkeypatch, capsys):
    counters = Counters(monkeypatch)
    data, sets = start(root)
    assert len(counters.json) == NUM_SYNTHETIC and len(counters.cut) == NUM_SYNTHETIC and counters.temporary == 0
    assert_as_uncached(data, sets, tmp_path)
    unity = root / "gaze" / "UnityEyes"
    assert {estimation_cache.LABELS_NAME, *(os.path.basename(path) for path in estimation_cache.rows_files(
        str(unity), SHAPE))} <= set(os.listdir(unity))
    first = [every(images) for images, _ in (sets.training, sets.validation)]
    counters.reset()
    capsys.readouterr()
    data, sets = start(root)
    assert counters.json == [] and counters.cut == [] and counters.temporary == 0
    assert "[!]" not in capsys.readouterr().out
    for before, (images, _) in zip(first, (sets.training, sets.validation)):
        np.testing.assert_array_equal(every(images), before)
    assert_as_uncached(data, sets, tmp_path)


def test_a_changed_json_is_read_again_and_a_removed_frame_drops_out(root, tmp_path, monkeypatch):
    counters = Counters(monkeypatch)
    start(root)
    unity = root / "gaze" / "UnityEyes"
    path = unity / "3.json"
    info = json.loads(path.read_text())
    info["eye_details"]["look_vec"] = "(0.3, 0.2, -0.9, 0.0)"
    stat = os.stat(path)
    path.write_text(json.dumps(info))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime, whatever the clock's grain
    counters.reset()
    data, sets = start(root)
    assert counters.json == ["3.json"] and counters.cut == []
    paths = data.split.training_paths + data.split.validation_paths
    gaze = np.concatenate([sets.training[1], sets.validation[1]])
    changed = gaze[paths.index(str(unity / "3_cropped.png"))]
    np.testing.assert_allclose(changed, gaze_labels.look_vec_to_gaze([0.3, 0.2, -0.9]), atol=1e-6)
    assert_as_uncached(data, sets, tmp_path)
    for suffix in (".jpg", ".json", "_cropped.png"):
        os.remove(unity / f"5{suffix}")
    counters.reset()
    data, sets = start(root)
    assert counters.json == [] and counters.cut == []  # the others' labels and rows copied
    paths = data.split.training_paths + data.split.validation_paths
    assert len(paths) == NUM_SYNTHETIC - 1 and str(unity / "5_cropped.png") not in paths
    assert_as_uncached(data, sets, tmp_path)
    assert_next_start_reads_nothing(root, counters)


def assert_next_start_reads_nothing(root, counters):
    counters.reset()
    start(root)
    assert counters.json == [] and counters.cut == []


def test_a_changed_crop_is_cut_again_and_the_others_copied(root, tmp_path, monkeypatch, capsys):
    counters = Counters(monkeypatch)
    start(root)
    unity = root / "gaze" / "UnityEyes"
    target = unity / "4_cropped.png"
    stat = os.stat(target)
    shutil.copyfile(unity / "9_cropped.png", target)  # another valid crop: the crop index takes it as it is
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    counters.reset()
    capsys.readouterr()
    data, sets = start(root)
    assert counters.cut == ["4_cropped.png"] and counters.json == []
    assert f"({NUM_SYNTHETIC - 1} unchanged ones copied)" in capsys.readouterr().out
    assert_as_uncached(data, sets, tmp_path)
    split = data.split
    images = np.concatenate([every(sets.training[0]), every(sets.validation[0])])
    paths = split.training_paths + split.validation_paths
    np.testing.assert_array_equal(images[paths.index(str(target))], images[paths.index(str(unity / "9_cropped.png"))])


def test_a_damaged_cache_is_made_again_with_a_line(root, tmp_path, monkeypatch, capsys):
    counters = Counters(monkeypatch)
    start(root)
    unity = str(root / "gaze" / "UnityEyes")
    rows_path, manifest_path = estimation_cache.rows_files(unity, SHAPE)
    with open(os.path.join(unity, estimation_cache.LABELS_NAME), "wb") as handle:
        handle.write(b"not a zip")
    with open(rows_path, "r+b") as handle:
        handle.truncate(1000)
    counters.reset()
    capsys.readouterr()
    data, sets = start(root)
    out = capsys.readouterr().out
    assert f"Ignoring {os.path.join(unity, estimation_cache.LABELS_NAME)}" in out and "reading every .json" in out
    assert f"Cutting the UnityEyes crops again: {rows_path} is truncated" in out
    assert len(counters.json) == NUM_SYNTHETIC and len(counters.cut) == NUM_SYNTHETIC
    assert_as_uncached(data, sets, tmp_path)
    with open(manifest_path, "wb") as handle:
        handle.write(b"PK\x03\x04 damaged")
    counters.reset()
    data, sets = start(root)
    assert f"Ignoring {manifest_path}" in capsys.readouterr().out and counters.json == []
    assert len(counters.cut) == NUM_SYNTHETIC
    assert_as_uncached(data, sets, tmp_path)
    assert_next_start_reads_nothing(root, counters)


def test_an_unwritable_folder_costs_one_line_each_and_the_sets_are_the_same(root, tmp_path, monkeypatch, capsys):
    counters = Counters(monkeypatch)

    def refused(path, *args, **kwargs):
        raise OutputError(f"cannot write in {os.path.dirname(path)}: Read-only file system")

    monkeypatch.setattr(estimation_cache, "atomic_write", refused)
    monkeypatch.setattr(estimation_cache, "write_rows", refused)
    capsys.readouterr()
    data, sets = start(root)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[!]")]
    assert len(lines) == 2, lines
    assert "Cannot write" in lines[0] and "every .json is read again next start" in lines[0]
    assert "Cannot cache the UnityEyes crops at the input size" in lines[1]
    assert counters.temporary == 2  # the training and validation crops cut into temporary files, as before
    assert_as_uncached(data, sets, tmp_path)
    assert not [name for name in os.listdir(root / "gaze" / "UnityEyes") if name.startswith(".tmp")]


def test_refined_crops_are_refined_at_each_start(root, monkeypatch):
    counters = Counters(monkeypatch)
    data = load_gaze_data(get_config([f"--data_dir={root}", "--task=estimation", "--validation_share=0.25"]))
    sets = data.estimation_sets(SHAPE, 4, refine=lambda images: images * 0)
    assert counters.temporary == 2 and counters.cut == []
    assert np.all(every(sets.training[0]) == 128)
    assert not os.path.exists(estimation_cache.rows_files(str(root / "gaze" / "UnityEyes"), SHAPE)[0])


def test_a_json_without_look_vec_is_skipped_at_each_start_unread(root, monkeypatch, capsys):
    counters = Counters(monkeypatch)
    unity = root / "gaze" / "UnityEyes"
    (unity / "7.json").write_text(json.dumps({"interior_margin_2d": json.loads(
        (unity / "7.json").read_text())["interior_margin_2d"]}))
    data, _ = start(root)
    assert "Skipped 1 crops without a usable eye_details.look_vec" in capsys.readouterr().out
    assert len(data.split.training_paths + data.split.validation_paths) == NUM_SYNTHETIC - 1
    index = unity / estimation_cache.LABELS_NAME
    written = os.stat(index).st_mtime_ns
    counters.reset()
    data, _ = start(root)
    assert "Skipped 1 crops" in capsys.readouterr().out and counters.json == [] and counters.cut == []
    assert os.stat(index).st_mtime_ns == written
