"""The bundled gaze sample: determinism, the real data sets' formats, label conventions and the domain gap.

What it shares with the hand sample (determinism, staging, arguments, the command line) is tested in
test_sample_staging.py.
"""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image, ImageDraw
from scipy.ndimage import laplace, uniform_filter

from data import gaze_sample, mpiigaze, unityeyes
from data.gaze_sample import EYE_WIDTH_SHARE, LAYOUT, REAL_HEIGHT, REAL_WIDTH, write_sample

NUM_SYNTHETIC, NUM_REAL, SEED = 40, 30, 7
REAL_UNITYEYES = Path(__file__).resolve().parents[2] / "shared" / "real" / "unityeyes"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A tiny sample written once, with worker processes (70 images is above the parallel threshold)."""
    gaze_dir = tmp_path_factory.mktemp("sample") / "gaze"
    report = write_sample(gaze_dir, num_synthetic=NUM_SYNTHETIC, num_real=NUM_REAL, seed=SEED, workers=2)
    return gaze_dir, report


@pytest.fixture(scope="module")
def crops(sample):
    """The cropper's report on the sample's UnityEyes folder."""
    return unityeyes.prepare_crops(sample[1].synthetic_dir, workers=1)


def frame_landmarks(strings):
    """UnityEyes landmark strings as image (column, row) points: Unity's y counts from the bottom."""
    return np.array([unityeyes.parse_vector(text)[:2] for text in strings]) * [1, -1] + [0, 480]


def look_vec(info):
    return unityeyes.parse_vector(info["eye_details"]["look_vec"])


def real_images(gaze_dir):
    images, gaze, _, skipped = mpiigaze.read_days(mpiigaze.find_day_files(gaze_dir / "MPIIGaze"))
    assert not skipped
    return images, gaze


def synthetic_at_real_size(paths):
    """The crops as the loader sees them, brought to MPIIGaze's 36x60 for comparison."""
    return np.array([np.asarray(Image.open(p).resize((REAL_WIDTH, REAL_HEIGHT), Image.Resampling.BILINEAR),
                                np.float32) for p in paths])


# ---- writing: the layout, the report


def test_layout_on_disk(sample):
    gaze_dir, report = sample
    assert sorted(p.name for p in gaze_dir.iterdir()) == ["MPIIGaze", "UnityEyes"]  # no staging left
    frames = sorted(p.name for p in report.synthetic_dir.glob("*.jpg"))
    assert frames == sorted(f"{i}.jpg" for i in range(1, NUM_SYNTHETIC + 1))
    assert all((report.synthetic_dir / f"{i}.json").is_file() for i in range(1, NUM_SYNTHETIC + 1))
    days = mpiigaze.find_day_files(report.real_dir)
    assert len(days) == report.num_days
    assert all(re.fullmatch(r"p\d\d/day\d\d\.mat", f"{p.parent.name}/{p.name}") for p in days)
    assert json.loads((report.real_dir / LAYOUT.marker_name).read_text())["seed"] == SEED
    assert report.num_synthetic == NUM_SYNTHETIC and report.num_real == NUM_REAL and report.seconds > 0


# ---- formats: what the real loaders read


def test_unityeyes_frames_crop_with_nothing_skipped(crops):
    assert crops.skipped == {}
    assert len(crops.paths) == NUM_SYNTHETIC
    assert Image.open(crops.paths[0]).size == (unityeyes.CROP_WIDTH, unityeyes.CROP_HEIGHT)


def test_unityeyes_json_has_the_real_keys(sample):
    directory = sample[1].synthetic_dir
    with Image.open(directory / "1.jpg") as frame:
        assert frame.size == (640, 480) and frame.mode == "RGB" and frame.format == "JPEG"
    info = json.loads((directory / "1.json").read_text())
    for key in ("interior_margin_2d", "caruncle_2d", "iris_2d", "eye_details", "lighting_details", "head_pose"):
        assert key in info, key
    for key in ("look_vec", "pupil_size", "iris_size", "iris_texture"):
        assert key in info["eye_details"], key
    assert all(len(unityeyes.parse_vector(p)) == 3 for p in info["iris_2d"] + info["caruncle_2d"])
    assert len(look_vec(info)) == 4 and look_vec(info)[3] == 0


VECTOR_4DP = r"\(-?\d+\.\d{4}(, -?\d+\.\d{4}){2,3}\)"  # landmarks, look_vec, head_pose
CSHARP_FLOAT = r"-?\d+(\.\d+)?(E-\d\d)?"  # C#'s float ToString(): 0.9527389, 1.683741E-17, 231
UNITYEYES_FORMATS = {
    ("eye_details", "look_vec"): VECTOR_4DP, ("eye_details", "pupil_size"): CSHARP_FLOAT,
    ("eye_details", "iris_size"): CSHARP_FLOAT, ("eye_details", "iris_texture"): r"eyeball_[a-z_0-9]+",
    ("lighting_details", "skybox_texture"): r"[a-z]+_\dk", ("lighting_details", "skybox_exposure"): CSHARP_FLOAT,
    ("lighting_details", "skybox_rotation"): r"\d+", ("lighting_details", "ambient_intensity"): CSHARP_FLOAT,
    ("lighting_details", "light_rotation"): r"\(\d+\.\d, \d+\.\d, 0\.0\)",
    ("lighting_details", "light_intensity"): CSHARP_FLOAT,
    ("eye_region_details", "primary_skin_texture"): r"[fm]\d\d_color",
}


def unityeyes_format_errors(info):
    """Where a UnityEyes JSON differs from the formats real UnityEyes files have; [] if nowhere."""
    errors = [key for key, pattern in UNITYEYES_FORMATS.items() if not re.fullmatch(pattern, info[key[0]][key[1]])]
    errors += [key for key in ("interior_margin_2d", "caruncle_2d", "iris_2d")
               if not all(re.fullmatch(VECTOR_4DP, point) for point in info[key])]
    coefficients = info["eye_region_details"]["pca_shape_coeffs"]
    if len(coefficients) != 20 or not all(re.fullmatch(CSHARP_FLOAT, c) and len(c.lstrip("-").replace(".", "")
                                          .split("E")[0].lstrip("0")) <= 7 for c in coefficients):
        errors.append("pca_shape_coeffs")
    if not re.fullmatch(VECTOR_4DP, info["head_pose"]):
        errors.append("head_pose")
    return errors


@pytest.mark.skipif(not REAL_UNITYEYES.is_dir(), reason=f"real UnityEyes renders not found at {REAL_UNITYEYES}: "
                    "the check that the sample's JSON keeps their format is skipped")
def test_the_formats_hold_for_real_unityeyes_files():
    files = sorted(REAL_UNITYEYES.glob("*/*.json"))
    assert len(files) == 120
    for path in files:
        assert unityeyes_format_errors(json.loads(path.read_text())) == [], path


def test_unityeyes_json_has_the_formats_of_real_files(sample):
    infos = [json.loads(path.read_text()) for path in sorted(sample[1].synthetic_dir.glob("[0-9]*.json"))]
    for info in infos:
        assert unityeyes_format_errors(info) == []
    pupil_sizes = [float(info["eye_details"]["pupil_size"]) for info in infos]
    assert min(pupil_sizes) < 0 < max(pupil_sizes)  # a dilation in [-0.6, 0.6], as in real files
    last_coefficients = [float(info["eye_region_details"]["pca_shape_coeffs"][-1]) for info in infos]
    assert all(0 < value < 1e-16 for value in last_coefficients)
    assert any("E-" in coefficient for info in infos for coefficient in info["eye_region_details"]["pca_shape_coeffs"])


def test_edge_frames_are_padded_not_skipped(tmp_path):
    # Find frames whose crop box leaves the frame, from the same random streams write_sample uses.
    edge = []
    for index in range(1, 2001):
        eye, _ = gaze_sample._synthetic_eye(np.random.default_rng([SEED, gaze_sample._SYNTHETIC, index]))
        left, top, right, bottom = _crop_box(gaze_sample.eyelid_margin(eye))
        if left < 0 or top < 0 or right > 640 or bottom > 480:
            edge.append(index)
    assert 0.002 <= len(edge) / 2000 <= 0.03  # EDGE_PLACEMENT_SHARE is 1%
    gaze_sample.write_synthetic(SEED, edge[0], edge[0] + 1, tmp_path)
    report = unityeyes.prepare_crops(tmp_path, workers=1)
    assert report.skipped == {} and report.padded == [f"{edge[0]}.jpg"]


def _crop_box(margin):
    """The cropper's box: 140x84 around the floored centre of the landmarks' bounding box."""
    centre = (margin.min(0) + margin.max(0)) / 2
    left, top = math.floor(centre[0]) - 70, math.floor(centre[1]) - 42
    return left, top, left + 140, top + 84


def test_mpiigaze_days_load_with_the_reader(sample):
    gaze_dir, report = sample
    images, gaze = real_images(gaze_dir)
    assert images.shape == (NUM_REAL, 36, 60) and images.dtype == np.uint8
    sizes = []
    for path in mpiigaze.find_day_files(report.real_dir):
        mat = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)
        data = mat["data"][0, 0]
        left, right = data.left[0, 0], data.right[0, 0]
        assert left.image.dtype == np.uint8 and left.gaze.dtype == np.float64
        assert left.image.shape[1:] == (36, 60) and left.gaze.shape[1] == 3 and left.pose.shape[1] == 3
        assert left.image.shape == right.image.shape
        assert mat["filenames"].shape == (len(left.image), 1)
        assert len(mpiigaze.read_day(path)[0]) == 2 * len(left.image)
        sizes.append(len(left.image))
    assert 1 in sizes and max(sizes) > 1  # a one-sample day, which loadmat's squeeze_me flattens
    assert mat["__header__"].startswith(b"MATLAB 5.0 MAT-file")


# ---- labels: conventions and units


def test_gaze_vectors_are_unit_length(sample):
    gaze_dir, report = sample
    _, gaze = real_images(gaze_dir)
    np.testing.assert_allclose(np.linalg.norm(gaze, axis=1), 1.0, atol=1e-5)
    looks = [look_vec(json.loads((report.synthetic_dir / f"{i}.json").read_text()))
             for i in range(1, NUM_SYNTHETIC + 1)]
    np.testing.assert_allclose(np.linalg.norm(np.array(looks)[:, :3], axis=1), 1.0, atol=1e-3)


def test_look_vec_y_up_puts_the_pupil_above_the_eye_centre(sample):
    directory = sample[1].synthetic_dir
    agree, checked = 0, 0
    for i in range(1, NUM_SYNTHETIC + 1):
        info = json.loads((directory / f"{i}.json").read_text())
        if abs(look_vec(info)[1]) < 0.1:
            continue  # too close to level to tell
        margin = frame_landmarks(info["interior_margin_2d"])
        pupil_row = _pupil_row(np.asarray(Image.open(directory / f"{i}.jpg").convert("L"), np.float32), margin)
        centre_row = (margin[:, 1].min() + margin[:, 1].max()) / 2
        agree += (pupil_row < centre_row) == (look_vec(info)[1] > 0)  # rows count down, Unity's y up
        checked += 1
    assert checked >= 20 and agree >= 0.9 * checked


def _pupil_row(frame, margin):
    """Mean row of the darkest 3% of the eye opening (inside the lid landmarks): the pupil."""
    mask = Image.new("L", (frame.shape[1], frame.shape[0]))
    ImageDraw.Draw(mask).polygon([tuple(p) for p in margin], fill=1)
    rows = np.nonzero(np.asarray(mask, bool))[0]
    values = frame[np.asarray(mask, bool)]
    return rows[values <= np.percentile(values, 3)].mean()


def test_iris_landmarks_follow_the_look_vec(sample):
    directory = sample[1].synthetic_dir
    for i in range(1, NUM_SYNTHETIC + 1):
        info = json.loads((directory / f"{i}.json").read_text())
        iris = np.array([unityeyes.parse_vector(p)[:2] for p in info["iris_2d"]]).mean(0)
        margin = np.array([unityeyes.parse_vector(p)[:2] for p in info["interior_margin_2d"]])
        ball = (margin.min(0) + margin.max(0)) / 2  # within a few pixels of the eyeball centre
        offset = iris - ball  # Unity pixels: x right, y up, like look_vec
        look = look_vec(info)
        if abs(look[0]) > 0.15:
            assert np.sign(offset[0]) == np.sign(look[0]), i
        if abs(look[1]) > 0.2:
            assert np.sign(offset[1]) == np.sign(look[1]), i


def test_mpiigaze_gaze_y_down_moves_the_iris_down():
    person, day = gaze_sample.real_person(SEED, 0), gaze_sample.real_day(SEED, 0, 1)
    rows = {}
    for name, pitch in (("up", 10.0), ("down", -25.0)):
        gaze = gaze_sample.gaze_vector(pitch, 0.0)
        image = gaze_sample.real_image(np.random.default_rng(0), person, day, gaze, inner_side=1)
        rows[name] = _darkest_block_row(image.astype(np.float32))
        assert (gaze[1] < 0) == (name == "up")  # MPIIGaze's y points down
    assert rows["up"] < rows["down"] - 2


def _darkest_block_row(image):
    """Row of the darkest 5x5 block in the middle of a 36x60 eye image: the iris."""
    smoothed = uniform_filter(image, 5, mode="nearest")[10:28, 8:52]
    return np.unravel_index(np.argmin(smoothed), smoothed.shape)[0] + 10


def test_real_images_follow_their_gaze_labels(tmp_path):
    write_sample(tmp_path, num_synthetic=1, num_real=200, seed=SEED, workers=1)
    images, gaze = real_images(tmp_path)
    rows = np.array([_darkest_block_row(image.astype(np.float32)) for image in images])
    assert np.corrcoef(rows, gaze[:, 1])[0, 1] > 0.3
    assert (gaze[:, 2] < 0).all()  # toward the camera
    assert gaze[:, 1].mean() > 0  # mostly down: the laptop screen is below its camera


# ---- the two domains: same framing, different appearance


def test_both_domains_frame_the_eye_alike(sample):
    directory = sample[1].synthetic_dir
    synthetic_widths = []
    for i in range(1, NUM_SYNTHETIC + 1):
        margin = frame_landmarks(json.loads((directory / f"{i}.json").read_text())["interior_margin_2d"])
        synthetic_widths.append(np.ptp(margin[:, 0]) / unityeyes.CROP_WIDTH)
    real_widths, real_offsets = [], []
    for person in range(5):
        traits = gaze_sample.real_person(SEED, person)
        for index in range(8):
            rng = np.random.default_rng([person, index])
            eye = gaze_sample._real_eye_shape(rng, traits, gaze_sample.gaze_vector(-10.0, 5.0), inner_side=1)
            margin = gaze_sample.eyelid_margin(eye)
            real_widths.append(np.ptp(margin[:, 0]) / REAL_WIDTH)
            real_offsets.append((margin.min(0) + margin.max(0)) / 2 - [REAL_WIDTH / 2, REAL_HEIGHT / 2])
    assert abs(np.mean(synthetic_widths) - EYE_WIDTH_SHARE) < 0.02
    assert abs(np.mean(real_widths) - np.mean(synthetic_widths)) < 0.02
    assert np.abs(np.mean(real_offsets, axis=0)).max() < 0.5  # pixels of 60x36: centred as the crops


def test_real_images_are_darker_flatter_and_noisier(sample, crops):
    gaze_dir, _ = sample
    synthetic = synthetic_at_real_size(crops.paths)
    real = real_images(gaze_dir)[0].astype(np.float32)
    assert real.mean() < synthetic.mean() - 20  # darker
    assert real.std(axis=(1, 2)).mean() < 0.8 * synthetic.std(axis=(1, 2)).mean()  # lower contrast
    # Median |Laplacian|: near zero on clean renders (flat skin), the sensor noise on camera images.
    assert _noise(real) > 4 * _noise(synthetic)


def _noise(images):
    return np.mean([np.median(np.abs(laplace(image))) for image in images])
