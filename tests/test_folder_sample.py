"""data/folder_sample.py: the folder pair's layout and formats, determinism, resuming, refusals, the command
line and the colour cast that makes the domain gap."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import folder_sample
from data.folder_sample import MARKER_NAME, colour_balance, write_folder_pair

COUNT, SEED, PART = 12, 7, 5  # PART images per part_K folder instead of 500, so 12 renders make a tree
ROOT = Path(__file__).resolve().parents[1]


def write_pair(out, count=COUNT, seed=SEED, **options):
    """write_folder_pair with PART renders per subfolder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(folder_sample, "IMAGES_PER_PART", PART)
        return write_folder_pair(out, count=count, seed=seed, **options)


def file_contents(root):
    """{relative path: bytes} of every file under root, hidden ones included."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def read_images(paths):
    return np.array([np.asarray(Image.open(path)) for path in paths])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair") / "out"
    return out, write_pair(out)


# ---- layout and formats


def test_renders_are_rgb_pngs_in_a_tree_and_camera_images_flat_rgb_jpegs(pair):
    out, report = pair
    renders = sorted(str(p.relative_to(out / "synthetic")) for p in (out / "synthetic").rglob("*") if p.is_file())
    assert renders == [f"part_{i // PART}/render_{i:05d}.png" for i in range(COUNT)]
    assert sorted(p.name for p in (out / "real").iterdir()) == [f"camera_{i:05d}.jpg" for i in range(COUNT)]
    for path in (out / "synthetic").rglob("*.png"):
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (96, 72))
    for path in (out / "real").iterdir():
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (48, 36))
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, "real", "synthetic"]
    assert json.loads((out / MARKER_NAME).read_text()) == {
        "written_by": "data.folder_sample", "seed": SEED, "count": COUNT, "synthetic_size": [72, 96],
        "real_size": [36, 48]}
    assert (report.synthetic_dir, report.real_dir) == (out / "synthetic", out / "real")
    assert (report.count, report.written) == (COUNT, 2 * COUNT)


def test_other_sizes_are_written_as_asked(tmp_path):
    write_pair(tmp_path, count=2, synthetic_size=(40, 50), real_size=(20, 30))
    assert Image.open(tmp_path / "synthetic" / "part_0" / "render_00001.png").size == (50, 40)
    assert Image.open(tmp_path / "real" / "camera_00001.jpg").size == (30, 20)


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    for options in (dict(count=0), dict(seed=-1), dict(synthetic_size=(4, 96)), dict(real_size=(36,))):
        with pytest.raises(ValueError):
            write_pair(tmp_path, **options)
    assert not any(tmp_path.iterdir())


# ---- determinism and resuming


def test_the_same_seed_writes_the_same_bytes_and_each_image_its_own_stream(pair, tmp_path):
    out, _ = pair
    write_pair(tmp_path / "again")
    assert file_contents(tmp_path / "again") == file_contents(out)
    write_pair(tmp_path / "fewer", count=3)  # image i does not depend on how many are written
    fewer = file_contents(tmp_path / "fewer")
    assert all(fewer[name] == file_contents(out)[name] for name in fewer if name != MARKER_NAME)
    write_pair(tmp_path / "other", seed=SEED + 1)
    other = file_contents(tmp_path / "other")
    assert all(other[name] != data for name, data in file_contents(out).items() if name != MARKER_NAME)


@pytest.mark.parametrize("whole_files", [3, COUNT + 2])  # in a camera image (written first), in a render
def test_an_interrupted_write_leaves_whole_files_and_the_same_call_completes_it(pair, tmp_path, monkeypatch,
                                                                                 whole_files):
    saved, real_save = [], Image.Image.save

    def save_then_fail(image, handle, *args, **kwargs):
        if len(saved) == whole_files:  # half a file, then the interrupt
            handle.write(b"half an image")
            raise KeyboardInterrupt
        saved.append(handle)
        return real_save(image, handle, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_pair(tmp_path)
    monkeypatch.undo()
    written = file_contents(tmp_path)
    reference = file_contents(pair[0])
    assert len(written) == 1 + whole_files  # the marker and the whole files, nothing under a hidden name
    assert all(reference[name] == data for name, data in written.items())
    (tmp_path / "synthetic" / "part_1" / ".tmp-0123456789ab.png").write_bytes(b"left by a killed run")
    report = write_pair(tmp_path)
    assert file_contents(tmp_path) == reference
    assert report.written == 2 * COUNT - whole_files


# ---- refusals


def test_a_folder_of_other_data_is_refused_and_left_alone(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "photo.jpg").write_bytes(b"someone's photo")
    with pytest.raises(ValueError, match="not written by data.folder_sample"):
        write_pair(tmp_path)
    assert file_contents(tmp_path) == {"real/photo.jpg": b"someone's photo"}
    (tmp_path / "real" / "photo.jpg").unlink()
    (tmp_path / "synthetic").write_text("a file where a folder goes")
    with pytest.raises(ValueError, match="not written by data.folder_sample"):
        write_pair(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        write_pair(tmp_path / "synthetic")


def test_empty_folders_are_written_into(tmp_path):
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "real").mkdir()
    assert write_pair(tmp_path, count=2).written == 4


def test_a_pair_written_with_other_arguments_is_refused_and_left_alone(pair, tmp_path):
    out, _ = pair
    before = file_contents(out)
    for options in (dict(seed=SEED + 1), dict(count=COUNT + 1), dict(real_size=(24, 32))):
        with pytest.raises(ValueError, match="other arguments"):
            write_pair(out, **options)
    assert file_contents(out) == before
    assert write_pair(out).written == 0  # the same arguments: complete already, nothing rewritten


# ---- the command line


def test_the_command_line_prints_where_and_how_to_train(tmp_path, capsys):
    folder_sample.main(["--out", str(tmp_path), "--count", "2", "--seed", "3"])
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("[*] Wrote 2 renders")
    assert line.endswith(f"python main.py --data_set=folders --synthetic_image_dir={tmp_path}/synthetic "
                         f"--real_image_dir={tmp_path}/real")
    assert json.loads((tmp_path / MARKER_NAME).read_text())["seed"] == 3


@pytest.mark.parametrize("arguments", [["--count", "0"], ["--count", "two"], ["--seed", "1"]])
def test_command_line_errors_are_one_line_and_status_1(tmp_path, capsys, arguments):
    folder_sample.main(["--out", str(tmp_path), "--count", "2"])  # so --seed 1 meets another pair
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        folder_sample.main(["--out", str(tmp_path), "--count", "2", *arguments])
    error = capsys.readouterr().err
    assert exit_.value.code == 1 and error.startswith("[!] ") and error.count("\n") == 1


def test_the_module_runs_as_a_command_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data.folder_sample", "--out", str(tmp_path), "--count", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == "[!] count must be a whole number >= 1, not 0\n" and result.stdout == ""


# ---- the domain gap


def test_colour_balance_is_each_channels_mean_minus_the_mean_over_channels():
    pixels = np.zeros((2, 4, 4, 3), np.uint8)
    pixels[0] = (110, 100, 90)
    pixels[1, :2] = (30, 60, 90)  # half the image: its channel means are (15, 30, 45)
    np.testing.assert_allclose(colour_balance(pixels), [(10 - 15) / 2, 0, (-10 + 15) / 2])


def test_camera_images_are_warmer_at_about_the_same_brightness(tmp_path):
    write_pair(tmp_path, count=60)
    synthetic = read_images(sorted((tmp_path / "synthetic").rglob("*.png")))
    real = read_images(sorted((tmp_path / "real").glob("*.jpg")))
    neutral, warm = colour_balance(synthetic), colour_balance(real)
    assert np.all(np.abs(neutral) < 5)
    shift = warm - neutral
    assert shift[0] - shift[2] >= 10, (neutral, warm)
    assert abs(real.mean() - synthetic.mean()) < 8, (real.mean(), synthetic.mean())
