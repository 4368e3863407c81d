"""Faults: kill -9 and resume, SIGTERM, a NaN loss, bad files, interrupted refining. Nothing is lost."""
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import refine as refine_module
from conftest import ROOT, checkpoint_counters, checkpoint_values, folder_flags, main_in_process
from config import get_config
from data.gaze_data import load_gaze_data
from data.gaze_sample import write_sample
from refine import refine_folder
from trainer import Trainer
from training_loop import TrainingDiverged
from utils import OutputError, make_run_folders, run_paths, save_image

SCHEDULE = ["--initial_K_g=2", "--initial_K_d=2", "--K_g=2", "--K_d=1", "--batch_size=4", "--buffer_size=16",
            "--log_step=1000", "--sample_image_grid=2,2", "--max_image_summary=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_sample(root / "gaze", num_synthetic=16, num_real=12, seed=2)
    return root


def start_training(data_dir, root, *flags, stderr=subprocess.PIPE):
    command = [sys.executable, "main.py", *folder_flags(data_dir, root), *SCHEDULE, "--load_path=run", *flags]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def checkpoint_files(model_dir):
    return sorted(f for f in os.listdir(model_dir) if f.endswith(".index")) if os.path.isdir(model_dir) else []


def wait_for_checkpoints(process, model_dir, count, timeout=180):
    """Block until the run has written `count` checkpoints (by their index files)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(checkpoint_files(model_dir)) >= count:
            return
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.kill()
    pytest.fail("no checkpoint in time")


def consistent(refiner_steps, discriminator_steps, iterations):
    """Counters a checkpoint between two whole steps can hold, with the SCHEDULE above."""
    if iterations == 0:
        return refiner_steps <= 2 and (discriminator_steps == 0 or refiner_steps == 2)
    return refiner_steps == 2 + 2 * iterations and discriminator_steps == 2 + iterations


def test_kill_9_then_resume_goes_on_from_the_last_checkpoint(data_dir, tmp_path):
    model_dir = tmp_path / "logs" / "generative_run"
    process = start_training(data_dir, tmp_path, "--max_step=100000", "--checkpoint_secs=1")
    wait_for_checkpoints(process, model_dir, 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = checkpoint_values(model_dir)  # the latest checkpoint is complete and readable
    before = checkpoint_counters(model_dir)
    assert consistent(*before)
    assert any(k.startswith("history_buffer/") for k in state)

    resumed = main_in_process(*folder_flags(data_dir, tmp_path), *SCHEDULE, "--load_path=run",
                              f"--max_step={before[2] + 2}", "--checkpoint_secs=3600")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (f"refiner step {before[0]}, discriminator step {before[1]}, iteration {before[2]}") in resumed.stdout
    after = checkpoint_counters(model_dir)
    assert after[2] == before[2] + 2 and consistent(*after)


def test_sigterm_saves_a_checkpoint_at_the_step_where_it_stopped(data_dir, tmp_path):
    # No periodic checkpoint within the test: the only one can come from the stop itself.
    model_dir = tmp_path / "logs" / "generative_run"
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        process = start_training(data_dir, tmp_path, "--max_step=100000", "--checkpoint_secs=3600", "--debug=True",
                                 stderr=stderr)
        printed = []
        for line in process.stdout:  # --debug prints `[*] step N: losses` after every step of each network
            printed.append(line)
            if re.match(r"\[\*\] step \d+: refiner/realism_loss", line):
                break  # in the adversarial phase
        assert checkpoint_files(model_dir) == []
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=120)
        stderr.seek(0)
        errors = stderr.read()
    assert process.returncode == 0, errors[-2000:]
    assert "SIGTERM" in stdout and "Traceback" not in errors
    output = "".join(printed) + stdout
    last = {network: int(re.findall(rf"^\[\*\] step (\d+): {tag}", output, re.MULTILINE)[-1])
            for network, tag in (("refiner", "refiner/"), ("discriminator", "synthetic_d_loss"))}
    refiner_steps, discriminator_steps, iterations = checkpoint_counters(model_dir)
    assert (refiner_steps, discriminator_steps) == (last["refiner"], last["discriminator"])
    assert checkpoint_files(model_dir) == [f"ckpt-{refiner_steps + discriminator_steps}.index"]
    assert iterations >= 1 and consistent(refiner_steps, discriminator_steps, iterations)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    config = get_config([*folder_flags(data_dir, tmp_path), *SCHEDULE, "--load_path=run", "--max_step=2",
                         "--log_step=1", "--checkpoint_secs=3600"])
    paths = run_paths(config)
    make_run_folders(config, paths)
    data = load_gaze_data(config)
    finished = Trainer(config, paths, data)
    finished.train()
    good = tf.train.latest_checkpoint(paths.model_dir)

    config.max_step = 4
    trainer = Trainer(config, paths, data)
    restore = trainer.restore

    def restore_then_poison():
        restored = restore()
        # A weight gone bad, as after an exploding update; the output layer's, as ReLU may swallow a NaN.
        bias = trainer.refiner.get_layer("conv_out").bias
        bias.assign(bias * np.nan)
        return restored

    trainer.restore = restore_then_poison
    with pytest.raises(TrainingDiverged, match=r"refiner/\w+ is nan at step 7; the last good checkpoint is .*ckpt-10"):
        trainer.train()
    assert tf.train.latest_checkpoint(paths.model_dir) == good
    assert checkpoint_counters(paths.model_dir) == (6, 4, 2)
    assert checkpoint_files(paths.model_dir) == ['ckpt-10.index']
    # The input streams are closed on either way out: left to the interpreter's exit, a distributed one held it
    # there for up to a minute.
    streams = ("synthetic_batches", "fresh_batches", "real_batches")
    assert not any(hasattr(run, stream) for run in (finished, trainer) for stream in streams)


# ---- bad input, as a user brings it ----

def corrupt(gaze_dir):
    """Break a few files of every kind in a copy of the sample; returns what the run must report."""
    unity = gaze_dir / "UnityEyes"
    (unity / "1.jpg").write_bytes(b"")
    (unity / "2.jpg").write_bytes((unity / "2.jpg").read_bytes()[:500])
    (unity / "3.json").write_text("{not json")
    (unity / "4.json").write_text(json.dumps({"interior_margin_2d": ["__import__('os').system('touch PWNED')"]}))
    (unity / "5.json").unlink()
    (unity / "notes.txt").write_text("a stray file")
    Image.new("L", (10, 10)).save(unity / "stray.png")
    day = sorted((gaze_dir / "MPIIGaze").rglob("*.mat"))[-1]
    day.write_bytes(day.read_bytes()[:200])
    return ["(truncated or unreadable image): 1.jpg, 2.jpg", "(invalid JSON): 3.json",
            "(non-numeric or malformed interior_margin_2d): 4.json", "(.jpg without its .json): 5.jpg",
            "not named {i}_cropped.png): stray.png", f"(truncated or unreadable .mat): Data/Normalized/{day.parent.name}/{day.name}"]


def test_a_tree_of_good_and_bad_files_trains_on_the_good_and_reports_the_bad(data_dir, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns("*_cropped.png", ".crops_index.npz", "mpiigaze_*", "samples"))
    expected = corrupt(copy / "gaze")
    result = main_in_process(*folder_flags(copy, tmp_path), *SCHEDULE, "--max_step=1", "--load_path=run")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in expected:
        assert line in result.stdout, (line, result.stdout)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "PWNED").exists() and not os.path.exists(os.path.join(ROOT, "PWNED"))
    assert tf.train.latest_checkpoint(str(tmp_path / "logs" / "generative_run"))


def test_no_eval_or_exec_in_the_program():
    # The tests hold attack strings on purpose; the program must hold no call that would run them.
    sources = [os.path.join(folder, name) for folder in (ROOT, os.path.join(ROOT, "data"))
               for name in os.listdir(folder) if name.endswith(".py")]  # the program: its two folders
    assert len(sources) >= 10
    for path in sources:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        calls = [node.func.id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
        assert not {"eval", "exec", "compile", "__import__"} & set(calls), path


# ---- test mode ----

@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A run trained for one iteration, in this process (test mode is what is tested here); its root folder."""
    root = tmp_path_factory.mktemp("trained")
    config = get_config([*folder_flags(data_dir, root), *SCHEDULE, "--max_step=1", "--load_path=run"])
    paths = run_paths(config)
    make_run_folders(config, paths)
    Trainer(config, paths, load_gaze_data(config)).train()
    return root


def refine(data_dir, root, *flags):
    return main_in_process(*folder_flags(data_dir, root), "--is_train=False", "--load_path=run", *flags)


def test_refining_again_after_an_interruption_finishes_only_the_rest(data_dir, trained):
    assert refine(data_dir, trained).returncode == 0
    outputs = trained / "outputs" / "generative_run"
    files = sorted(os.listdir(outputs))
    assert len(files) == 16
    kept = {name: os.stat(outputs / name).st_mtime_ns for name in files[5:]}
    for name in files[:5]:
        os.remove(outputs / name)  # as if the first run had been killed
    result = refine(data_dir, trained)
    assert result.returncode == 0 and "11 images already refined" in result.stdout
    assert sorted(os.listdir(outputs)) == files
    assert {name: os.stat(outputs / name).st_mtime_ns for name in files[5:]} == kept


def test_refining_never_writes_into_the_input_folder(data_dir, trained):
    inputs = trained / "outputs" / "generative_run"
    before = sorted(os.listdir(inputs))
    result = refine(data_dir, trained, f"--synthetic_image_dir={data_dir / 'gaze' / 'UnityEyes'}",
                    f"--output_dir={data_dir / 'gaze'}")
    assert result.returncode == 0  # the output folder differs from the input: allowed
    shutil.copytree(data_dir / "gaze" / "UnityEyes", trained / "in" / "generative_run")
    result = refine(data_dir, trained, f"--synthetic_image_dir={trained / 'in' / 'generative_run'}",
                    f"--output_dir={trained / 'in'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("[!] --output_dir would write into the input folder")
    assert sorted(os.listdir(inputs)) == before


def test_a_write_error_while_refining_is_one_clear_error(data_dir, trained, monkeypatch):
    config = get_config([*folder_flags(data_dir, trained), f"--output_dir={trained / 'full_disk'}",
                         "--is_train=False", "--load_path=run", "--batch_size=4"])
    paths = run_paths(config)
    make_run_folders(config, paths)
    calls = []

    def fill_up(pixels, path):
        calls.append(path)
        if len(calls) >= 6:
            raise OutputError(f"cannot write {path}: No space left on device")
        save_image(pixels, path)

    monkeypatch.setattr(refine_module, "save_image", fill_up)
    with pytest.raises(OutputError, match="No space left on device"):
        refine_folder(config, paths, load_gaze_data(config))
    written = os.listdir(trained / "full_disk" / "generative_run")
    assert len(written) == 5 and all(name.endswith("_refined.png") for name in written)  # whole files only
