"""data/sample_staging.py, and what both bundled samples (gaze, hand) promise through it."""
import json
import multiprocessing
import runpy
import shutil
import sys

import pytest

from data import gaze_sample, hand_sample
from data.sample_staging import SampleLayout, check_counts, command_line, run_tasks

LAYOUT = SampleLayout("tests.writer", ("first", "last"), marker_name=".marker.json", staging_name=".partial")
# Each sample's writer, the fewest frames it takes, and the function of its that writes the files.
WRITERS = {"gaze": (gaze_sample.write_sample, dict(num_synthetic=1, num_real=2), gaze_sample, "write_synthetic"),
           "hand": (hand_sample.write_hand_sample, dict(num_train=1, num_test=1), hand_sample, "write_frames")}


def stage(root, text="sample", **marker):
    """Write the layout into root, a file holding text in each folder."""
    with LAYOUT.staged(root, **marker) as staging:
        for name in LAYOUT.folders:
            (staging / name / "data.txt").write_text(text)


def names(folder):
    return sorted(path.name for path in folder.iterdir())


def file_contents(root):
    """{relative path: bytes} of every file under root."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_every_folder_is_installed_with_its_marker(tmp_path):
    stage(tmp_path, seed=3)
    assert names(tmp_path) == ["first", "last"]  # the staging folder is gone
    for name in LAYOUT.folders:
        assert LAYOUT.is_sample(tmp_path / name)
        assert json.loads((tmp_path / name / ".marker.json").read_text()) == {"written_by": "tests.writer", "seed": 3}
    (tmp_path / "last" / ".marker.json").unlink()
    assert not LAYOUT.is_sample(tmp_path / "last") and not LAYOUT.is_sample(tmp_path / "absent")


def test_an_interrupted_write_installs_nothing_and_the_next_one_cleans_up(tmp_path):
    with pytest.raises(KeyboardInterrupt), LAYOUT.staged(tmp_path) as staging:
        (staging / "first" / "data.txt").write_text("half")
        raise KeyboardInterrupt
    assert names(tmp_path) == [".partial"]
    stage(tmp_path)
    assert names(tmp_path) == ["first", "last"] and names(tmp_path / "first") == [".marker.json", "data.txt"]


def test_a_sample_and_an_empty_folder_are_replaced_whole(tmp_path):
    stage(tmp_path, "old")
    (tmp_path / "first" / "extra.txt").write_text("old")  # goes with its folder: a sample is never merged
    shutil.rmtree(tmp_path / "last")
    (tmp_path / "last").mkdir()
    stage(tmp_path, "new")
    marker = b'{\n "written_by": "tests.writer"\n}\n'
    assert file_contents(tmp_path) == {f"{name}/{file}": content for name in LAYOUT.folders
                                       for file, content in ((".marker.json", marker), ("data.txt", b"new"))}


@pytest.mark.parametrize("real", ["first/real.txt", "last"])  # in a folder without a marker; a file in its place
def test_data_it_did_not_write_is_never_touched(tmp_path, real):
    (tmp_path / "first").mkdir()
    (tmp_path / real).write_text("real data")
    with pytest.raises(FileExistsError, match="not written by tests.writer"):
        stage(tmp_path)
    assert (tmp_path / real).read_text() == "real data" and not (tmp_path / ".partial").exists()


@pytest.mark.parametrize("seed, count, named", [(0, 0, "num_frames"), (0, 1.0, "num_frames"), (0, "2", "num_frames"),
                                                (-1, 1, "seed"), (None, 1, "seed")])
def test_a_bad_count_or_seed_is_named(seed, count, named):
    with pytest.raises(ValueError, match=named):
        check_counts(seed, num_frames=count)


def fail(*args):
    """A task that fails in a worker: pickled by name, so module level."""
    raise OSError(28, "No space left on device")


def test_tasks_run_here_or_in_workers_give_the_same_results_in_order():
    tasks = [(pow, (2, n)) for n in range(5)]
    assert run_tasks(tasks, 1) == run_tasks(tasks, 2) == run_tasks(tasks, 2, worth_processes=False) == [1, 2, 4, 8, 16]


def test_a_failing_worker_is_raised_and_no_worker_is_left():
    with pytest.raises(OSError, match="No space left"):
        run_tasks([(pow, (2, 3)), (fail, ())] * 4, workers=2)
    assert multiprocessing.active_children() == []


def test_a_failure_on_the_command_line_is_one_line_and_status_2(capsys):
    def write(out, seed):
        raise FileExistsError(17, "x holds other data")

    with pytest.raises(SystemExit) as exit_:
        command_line(["--out", "x"], "Write.", "folder", {}, 0, write, "")
    assert exit_.value.code == 2 and capsys.readouterr().err == "[!] [Errno 17] x holds other data\n"


# ---- both samples


@pytest.mark.parametrize("kind", WRITERS)
def test_the_same_seed_writes_the_same_bytes_whatever_the_workers(kind, tmp_path, monkeypatch):
    write, counts, module, _ = WRITERS[kind]
    monkeypatch.setattr(module, "_PARALLEL_MIN", 0)  # so two processes write these few files
    for folder, seed, workers in (("here", 1, 1), ("in_workers", 1, 2), ("other_seed", 2, 1)):
        write(tmp_path / folder, **counts, seed=seed, workers=workers)
    here, other_seed = file_contents(tmp_path / "here"), file_contents(tmp_path / "other_seed")
    assert file_contents(tmp_path / "in_workers") == here
    assert here.keys() == other_seed.keys() and all(other_seed[name] != here[name] for name in here)


@pytest.mark.parametrize("kind", WRITERS)
def test_an_interrupted_sample_is_never_installed_and_is_redone(kind, tmp_path, monkeypatch):
    write, counts, module, worker = WRITERS[kind]

    def interrupted(*args):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C while the files were written

    monkeypatch.setattr(module, worker, interrupted)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "sample", **counts, seed=1, workers=1)
    assert names(tmp_path / "sample") == [module.LAYOUT.staging_name]
    monkeypatch.undo()
    for folder in ("sample", "fresh"):
        write(tmp_path / folder, **counts, seed=1, workers=1)
    assert file_contents(tmp_path / "sample") == file_contents(tmp_path / "fresh")
    assert all(module.LAYOUT.is_sample(tmp_path / "sample" / name) for name in module.LAYOUT.folders)


@pytest.mark.parametrize("kind, bad", [("gaze", dict(num_real=3)), ("gaze", dict(num_real=0)),
                                       ("gaze", dict(num_synthetic=0)), ("gaze", dict(seed=-1)),
                                       ("hand", dict(num_train=0)), ("hand", dict(num_test=0)),
                                       ("hand", dict(seed=-1)), ("hand", dict(size=(240, 320)))])
def test_bad_arguments_are_named_and_nothing_is_written(kind, bad, tmp_path):
    write, counts, _, _ = WRITERS[kind]
    with pytest.raises(ValueError, match=next(iter(bad))):
        write(tmp_path, **{**counts, **bad})
    assert names(tmp_path) == []


@pytest.mark.parametrize("kind, argv, printed", [
    ("gaze", ["--num_synthetic", "2", "--num_real", "4"], ("2 UnityEyes frames", "4 MPIIGaze images")),
    ("hand", ["--num_train", "2", "--num_test", "1"], ("2 train and 1 test frames",))])
def test_the_command_line_writes_the_sample_and_prints_one_line(kind, argv, printed, tmp_path, capsys):
    module = WRITERS[kind][2]
    module.main(["--out", str(tmp_path), *argv, "--seed", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and all(text in lines[0] for text in printed) and str(tmp_path) in lines[0]
    assert names(tmp_path) == sorted(module.LAYOUT.folders)


@pytest.mark.parametrize("module", ["data.gaze_sample", "data.hand_sample"])
def test_the_modules_run_as_the_readme_says(module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    monkeypatch.delitem(sys.modules, module)  # as `python -m` finds it: not imported yet
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(module, run_name="__main__")
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out
