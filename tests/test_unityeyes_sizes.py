"""UnityEyes frames of any size: the crop box scales with the frame's height; 640x480 crops stay as they were."""
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from data.unityeyes import CROP_SUFFIX, SCALED_BOX_KEY, parse_vector, prepare_crops

REAL_FRAMES = Path(ROOT).parent / "shared" / "real" / "unityeyes"  # 800x600 UnityEyes renders, when present


def write_frame(directory, stem, size, eye_box, seed=0):
    """A textured RGB frame of size (width, height) with 16 eyelid landmarks spanning eye_box (image rows)."""
    width, height = size
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)[:height, :width]
    Image.fromarray(pixels).save(os.path.join(directory, f"{stem}.jpg"), quality=95)
    left, top, right, bottom = eye_box
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    columns = (left + right) / 2 + (right - left) / 2 * np.cos(angles)
    rows = (top + bottom) / 2 + (bottom - top) / 2 * np.sin(angles)
    landmarks = [f"({col:.4f}, {height - row:.4f}, 9.8765)" for col, row in zip(columns, rows)]
    with open(os.path.join(directory, f"{stem}.json"), "w") as handle:
        json.dump({"interior_margin_2d": landmarks}, handle)


def scaled_box(crop_path):
    """(left, top, right, bottom) a crop was cut from, from its PNG text."""
    with Image.open(crop_path) as crop:
        assert crop.size == (140, 84)
        return tuple(int(value) for value in crop.info[SCALED_BOX_KEY].split(" of ")[0].split(","))


def test_a_640x480_crop_is_byte_identical_to_the_fixed_box_crop(tmp_path):
    write_frame(tmp_path, "1", (640, 480), (290.4, 228.7, 351.2, 251.9))
    (path,) = prepare_crops(tmp_path, workers=1).paths
    with Image.open(tmp_path / "1.jpg") as frame:  # what this program cut before frames of other sizes
        frame.draft("L", frame.size)
        left, top = math.floor(290.4 / 2 + 351.2 / 2) - 70, math.floor(228.7 / 2 + 251.9 / 2) - 42
        fixed = frame.convert("L").crop((left, top, left + 140, top + 84))
    expected = io.BytesIO()
    fixed.save(expected, format="PNG", compress_level=1)
    assert Path(path).read_bytes() == expected.getvalue()


@pytest.mark.parametrize("size, box", [((800, 600), (175, 105)), ((1280, 720), (210, 126)), ((320, 240), (70, 42))])
def test_the_box_scales_with_the_frame_height_whatever_the_aspect_ratio(tmp_path, size, box):
    scale = size[1] / 480
    eye = (300 * scale, 230 * scale, 400 * scale, 262 * scale)  # a wide eye: 100 x 32 at 480 rows
    write_frame(tmp_path, "1", size, eye)
    (path,) = prepare_crops(tmp_path, workers=1).paths
    left, top, right, bottom = scaled_box(path)
    assert (right - left, bottom - top) == box
    assert left <= eye[0] and right >= eye[2] and top <= eye[1] and bottom >= eye[3]


def test_a_crop_cut_by_the_fixed_box_from_another_size_is_remade(tmp_path):
    write_frame(tmp_path, "1", (800, 600), (350, 280, 480, 320))
    write_frame(tmp_path, "2", (640, 480), (280, 225, 384, 250))
    prepare_crops(tmp_path, workers=1)
    stale = Image.new("L", (140, 84))  # what earlier versions left: the right size, the fixed box, no text
    stale.save(tmp_path / f"1{CROP_SUFFIX}")
    kept = (tmp_path / f"2{CROP_SUFFIX}").stat().st_mtime_ns
    report = prepare_crops(tmp_path, workers=1)
    assert report.remade == [f"1{CROP_SUFFIX}"]
    left, top, right, bottom = scaled_box(tmp_path / f"1{CROP_SUFFIX}")
    assert (right - left, bottom - top) == (175, 105)
    assert (tmp_path / f"2{CROP_SUFFIX}").stat().st_mtime_ns == kept  # 640x480 crops need no text: left alone
    assert prepare_crops(tmp_path, workers=1).remade == []


@pytest.mark.skipif(not REAL_FRAMES.is_dir(), reason=f"real UnityEyes renders not found at {REAL_FRAMES}: the check "
                    "that the scaled crop box keeps the eyelids of real 800x600 frames is skipped")
def test_real_800x600_frames_keep_their_eyelids_in_the_crop(tmp_path):
    for json_path in REAL_FRAMES.glob("*/*.json"):
        stem = f"{json_path.parent.name}_{json_path.stem}"  # names repeat across the population folders
        shutil.copy(json_path, tmp_path / f"{stem}.json")
        shutil.copy(json_path.with_suffix(".jpg"), tmp_path / f"{stem}.jpg")
    report = prepare_crops(tmp_path)
    assert len(report.paths) == 120 and not report.skipped
    outside_fixed = 0
    for path in report.paths:
        info = json.loads(Path(path[: -len(CROP_SUFFIX)] + ".json").read_text())
        points = np.array([parse_vector(text)[:2] for text in info["interior_margin_2d"]])
        columns, rows = points[:, 0], 600 - points[:, 1]
        left, top, right, bottom = scaled_box(path)
        # One eye of the 120 is opened 106 px high, a pixel more than the 105-px box: 1.1 px of slack.
        assert columns.min() >= left and columns.max() <= right, path
        assert rows.min() >= top - 1.1 and rows.max() <= bottom + 1.1, path
        centre_x = math.floor(columns.min() / 2 + columns.max() / 2)
        centre_y = math.floor(rows.min() / 2 + rows.max() / 2)
        outside_fixed += (columns.min() < centre_x - 70 or columns.max() > centre_x + 70
                          or rows.min() < centre_y - 42 or rows.max() > centre_y + 42)
    assert outside_fixed > 60  # the 640x480 box these frames were cut with before
