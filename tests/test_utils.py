"""Run folders, params.json, atomic writes, image scaling and grids: outputs are whole or absent, errors are one line."""
import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from config import get_config
from utils import (CPU_BF16_VARIABLE, OutputError, atomic_write, cpu_has_bf16, denormalize, img_tile, make_run_folders,
                   model_name, normalize, run_paths, save_image, save_params)
from worker_processes import default_workers


def test_model_name_follows_the_original():
    assert model_name(get_config(["--load_path=run"])) == "generative_run"
    assert model_name(get_config(["--load_path=logs/generative_run/"])) == "generative_run"
    assert model_name(get_config(["--task=estimation", "--load_path=x"])) == "estimation_x"
    assert model_name(get_config([])).startswith("generative_20")


def make_folders(flags):
    config = get_config(flags)
    make_run_folders(config, run_paths(config))


def test_run_folders_are_made_for_what_each_mode_writes(tmp_path):
    flags = [f"--log_dir={tmp_path / 'logs'}", f"--sample_dir={tmp_path / 'samples'}",
             f"--output_dir={tmp_path / 'outputs'}", "--load_path=run"]
    make_folders(flags)
    assert sorted(os.listdir(tmp_path)) == ["logs", "samples"]
    make_folders(flags + ["--is_train=False", "--task=estimation"])
    assert sorted(os.listdir(tmp_path)) == ["logs", "samples"]  # evaluation writes into the model folder only
    make_folders(flags + ["--is_train=False"])
    assert os.path.isdir(tmp_path / "outputs" / "generative_run")


def test_run_paths_accept_the_run_folder_itself_as_load_path(tmp_path):
    (tmp_path / "elsewhere" / "generative_old").mkdir(parents=True)
    paths = run_paths(get_config([f"--log_dir={tmp_path / 'logs'}", f"--load_path={tmp_path / 'elsewhere' / 'generative_old'}"]))
    assert paths.model_name == "generative_old" and paths.model_dir == str(tmp_path / "elsewhere" / "generative_old")
    assert paths.sample_dir == os.path.join("samples", "generative_old")


def test_params_json_holds_the_flags_and_nothing_else(tmp_path):
    config = get_config([f"--log_dir={tmp_path}", "--load_path=run", "--batch_size=6"])
    paths = run_paths(config)
    make_run_folders(config, paths)
    save_params(config, paths)
    params = json.loads((tmp_path / "generative_run" / "params.json").read_text())
    flags = vars(get_config([f"--log_dir={tmp_path}", "--load_path=run", "--batch_size=6"]))
    assert params == {flag: value for flag, value in flags.items() if flag != "given_flags"}  # not a flag
    assert not {"model_dir", "model_name", "sample_model_dir", "output_model_dir"} & set(params)
    assert list(params) == sorted(params)


def test_an_output_folder_that_cannot_be_made_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match="^cannot create folder .*file.*generative_run"):
        make_folders([f"--log_dir={tmp_path / 'file'}", "--load_path=run"])


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "params.json"
    path.write_bytes(b"previous")

    def write_until_full(handle):
        handle.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(str(path), write_until_full)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["params.json"]


def test_an_interrupted_write_leaves_no_temporary(tmp_path):
    def interrupted(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "grid.png"), interrupted)
    assert os.listdir(tmp_path) == []


def test_save_image_writes_a_grayscale_png(tmp_path):
    pixels = np.arange(35 * 55, dtype=np.uint8).reshape(35, 55, 1)
    save_image(pixels, str(tmp_path / "a.png"))
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), pixels[..., 0])


def test_img_tile_places_images_in_rows_with_a_white_border():
    images = np.stack([np.full((2, 3, 1), value, np.uint8) for value in (10, 20, 30)])
    grid = img_tile(images, rows=2, cols=2)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1, 1, 0] == 10 and grid[1, 5, 0] == 20 and grid[4, 1, 0] == 30
    assert grid[4, 5, 0] == 255 and grid[0, :, 0].min() == 255 and grid[3, :, 0].min() == 255


@pytest.mark.parametrize("flags,expected", [("fpu sse avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True),
                                            ("fpu sse avx2 avx512f", False)])
def test_cpu_has_bf16_reads_the_cpu_flags(tmp_path, monkeypatch, flags, expected):
    monkeypatch.delenv(CPU_BF16_VARIABLE, raising=False)
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(str(tmp_path / "cpuinfo")) is expected
    assert cpu_has_bf16(str(tmp_path / "missing")) is False


def test_normalize_and_denormalize_are_inverse_and_explicit():
    pixels = np.arange(256, dtype=np.uint8)
    scaled = normalize(pixels.astype(np.float32))
    assert scaled.min() == -1.0 and scaled.max() == 1.0
    np.testing.assert_array_equal(denormalize(scaled), pixels)
    np.testing.assert_array_equal(denormalize(np.array([-3.0, 3.0])), [0, 255])


def test_default_workers_is_between_two_and_the_cap():
    assert 2 <= default_workers() <= 32


@pytest.mark.parametrize("value,expected", [("1", True), ("0", False)])
def test_the_variable_overrides_what_the_cpu_says(tmp_path, monkeypatch, value, expected):
    (tmp_path / "cpuinfo").write_text(f"flags\t\t: fpu {'' if expected else 'avx512_bf16'}\n")
    monkeypatch.setenv(CPU_BF16_VARIABLE, value)
    assert cpu_has_bf16(str(tmp_path / "cpuinfo")) is expected
