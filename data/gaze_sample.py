"""The bundled sample gaze data: procedurally drawn eyes in the exact UnityEyes and MPIIGaze formats.

No real data set can be downloaded on a fresh machine, so this module draws eye images and writes them
the way the two real data sets are laid out, and the real loaders (data/gaze_data.py) run on them
unchanged:

- ``UnityEyes/{i}.jpg`` + ``{i}.json``: 640x480 RGB frames with UnityEyes' JSON (eyelid, caruncle and
  iris landmarks in pixels with Unity's y counted from the bottom, ``eye_details.look_vec``, ...).
- ``MPIIGaze/Data/Normalized/pXX/dayYY.mat``: ``data.left`` / ``data.right`` with ``gaze`` (N x 3),
  ``image`` (N x 36 x 60 uint8) and ``pose`` (N x 3), plus ``filenames``; one day holds a single sample.

Both domains draw the same eye geometry, with the iris placed by the gaze so the label is in the
pixels. The domain gap is what a small fully convolutional refiner can learn to add, never geometry:
synthetic frames are clean renders (sharp, noise free, bright, flat skin), real images are camera
images (blur, sensor noise, uneven and darker lighting, skin blotches, lower contrast, JPEG softness).

Label conventions follow the real data sets, so the same code is right on real data:
- UnityEyes ``look_vec``: Unity camera space, x right, y UP, z away from the camera; looking at the
  camera is (0, 0, -1).
- MPIIGaze ``gaze``: x right, y DOWN, z away from the camera; looking at the camera is (0, 0, -1).
  A look_vec (x, y, z) is therefore the MPIIGaze gaze (x, -y, z).

``write_sample`` is the entry point. Every frame, day and image draws from its own random stream keyed
by the seed and its index, so the same arguments (with the same Pillow and SciPy) give byte-identical
files however the work is split over the worker processes. It writes into a staging folder and renames
the data sets into place, UnityEyes last, so an interrupted run never looks finished (see its docstring).

Usage: ``python -m data.gaze_sample --out DIR [--num_synthetic N] [--num_real N] [--seed S]``.
"""
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from scipy.ndimage import convolve, gaussian_filter
from scipy.spatial.transform import Rotation

from data.sample_staging import SampleLayout, check_counts, command_line, run_tasks

FRAME_WIDTH, FRAME_HEIGHT = 640, 480  # UnityEyes frames
CROP_WIDTH, CROP_HEIGHT = 140, 84  # the loader's crop around the eyelid bounding box
REAL_WIDTH, REAL_HEIGHT = 60, 36  # MPIIGaze normalised eye images
NUM_PERSONS = 15
# The eye's corner-to-corner width as a share of the image width: 98 px of the 140 px crop, and
# MPIIGaze's corners at about 15% / 85% of 60 px, so both domains frame the eye alike at 35x55.
EYE_WIDTH_SHARE = 0.70
REAL_SUPERSAMPLING = 2  # real eyes are drawn at 2x, blurred and averaged down, as a camera would
SYNTHETIC_JPEG_QUALITY = 90
EDGE_PLACEMENT_SHARE = 0.01  # frames whose crop box falls partly outside, as real UnityEyes has
# Where the eye's drawing fades into plain skin, in eye widths from the corner-line centre
# (left, right, top, bottom); only this patch of a synthetic frame is drawn at full detail.
PATCH_EXTENT = (-0.65, 0.65, -0.5, 0.45)
MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: data.gaze_sample"

# Sub-stream tags of the random generator, so every image's randomness is independent of the counts.
_SYNTHETIC, _PERSON, _DAY, _REAL, _LAYOUT, _SAMPLE = range(6)

# Gaze ranges in degrees (pitch positive up). Real: a seated laptop user looking at the screen;
# synthetic is wider so it covers the real range.
SYNTHETIC_YAW, SYNTHETIC_PITCH = (-35.0, 35.0), (-35.0, 20.0)
REAL_YAW, REAL_PITCH = (-25.0, 25.0), (-25.0, 10.0)
VERGENCE = 3.4  # degrees between the eyes' gaze at a screen 50 cm away (6 cm between the eyes)

SKIN_TONES = np.array([[0.96, 0.80, 0.70], [0.90, 0.72, 0.60], [0.82, 0.62, 0.50],
                       [0.70, 0.50, 0.38], [0.55, 0.38, 0.28], [0.42, 0.29, 0.22]])
IRIS_TEXTURES = {"eyeball_darkbrown": (0.20, 0.12, 0.07), "eyeball_brown": (0.36, 0.22, 0.12),
                 "eyeball_amber": (0.55, 0.38, 0.16), "eyeball_green": (0.36, 0.46, 0.30),
                 "eyeball_blue": (0.36, 0.50, 0.66), "eyeball_grey": (0.46, 0.49, 0.52)}
SKIN_TEXTURES = [f"f{i:02d}_color" for i in range(1, 6)] + [f"m{i:02d}_color" for i in range(1, 16)]  # UnityEyes'
SCLERA = np.float32([0.95, 0.93, 0.91])
PUPIL = np.float32([0.02, 0.02, 0.02])
LASHES = np.float32([0.10, 0.07, 0.06])
CARUNCLE = np.float32([0.86, 0.55, 0.52])
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's convert("L")


@dataclass(frozen=True)
class EyeShape:
    """One eye's geometry in image pixels (x right, y down); gaze in MPIIGaze's frame (y down)."""

    centre_x: float  # midpoint of the line between the eye corners
    centre_y: float
    width: float  # corner to corner
    tilt: float  # radians; positive raises the image-right corner
    upper_height: float  # upper lid's height above the corner line, at its peak
    lower_height: float
    inner_side: int  # +1: the inner corner (caruncle) is on the image right, -1: on the left
    eyeball_radius: float
    iris_radius: float
    pupil_radius: float
    gaze: tuple  # unit vector (x right, y down, z away from the camera)
    iris_phase: float  # turns the iris texture, so irises differ


@dataclass(frozen=True)
class EyeColours:
    """The RGB colours (floats in [0, 1]) an eye is drawn with."""

    skin: np.ndarray
    iris: np.ndarray
    glint: float  # brightness of the corneal reflection


# ----------------------------------------------------------------------------------------------------
# Gaze and geometry


def gaze_vector(pitch_deg, yaw_deg):
    """The MPIIGaze gaze (x right, y down, z away) for a pitch (up) and yaw (toward the image right)."""
    pitch, yaw = np.radians(pitch_deg), np.radians(yaw_deg)
    return np.array([np.cos(pitch) * np.sin(yaw), -np.sin(pitch), -np.cos(pitch) * np.cos(yaw)])


def make_eye_shape(centre, width, gaze, rng, openness=(0.20, 0.11), canthal_tilt=0.04, inner_side=1):
    """An eye of the given size and gaze; the lids follow the gaze up and down, as real lids do.

    openness: the upper and lower lid heights over the width, looking straight ahead; canthal_tilt:
    radians by which the outer corner sits above the inner one.
    """
    pitch_up = -float(gaze[1])  # Python floats throughout, so drawing stays in float32
    eyeball_radius = 0.42 * width  # an adult eyeball (12 mm) against a 28 mm palpebral fissure
    upper = (openness[0] + 0.5 * 0.42 * pitch_up) * width
    lower = (openness[1] - 0.12 * 0.42 * pitch_up) * width
    iris_radius = rng.uniform(0.19, 0.21) * width
    return EyeShape(centre_x=centre[0], centre_y=centre[1], width=width, tilt=-inner_side * canthal_tilt,
                    upper_height=max(upper, 0.05 * width), lower_height=max(lower, 0.05 * width),
                    inner_side=inner_side, eyeball_radius=eyeball_radius, iris_radius=iris_radius,
                    pupil_radius=rng.uniform(0.32, 0.48) * iris_radius, gaze=tuple(float(g) for g in gaze),
                    iris_phase=rng.uniform(0, 2 * np.pi))


def _lid_profile(t):
    """The almond shape of the lids along the corner line, t in [-1, 1] from corner to corner."""
    return np.clip(1.0 - t * t, 0.0, None) ** 0.85


def _lids(eye, t):
    """Upper and lower lid offsets (pixels, down positive) from the corner line at positions t."""
    # The upper lid peaks toward the nose, the lower lid dips toward the temple, as real eyelids.
    profile = _lid_profile(t)
    upper = -eye.upper_height * profile * (1.0 + 0.12 * eye.inner_side * t)
    lower = eye.lower_height * profile * (1.0 - 0.12 * eye.inner_side * t)
    return upper, lower


def _to_image(eye, u, v):
    """Image coordinates of eye-local points (u along the corner line, v across it, down positive)."""
    cos, sin = float(np.cos(eye.tilt)), float(np.sin(eye.tilt))
    return eye.centre_x + u * cos + v * sin, eye.centre_y - u * sin + v * cos


def _to_local(eye, x, y):
    """Eye-local coordinates (u, v) of image points; the inverse of _to_image."""
    cos, sin = float(np.cos(eye.tilt)), float(np.sin(eye.tilt))
    dx, dy = x - eye.centre_x, y - eye.centre_y
    return dx * cos - dy * sin, dx * sin + dy * cos


def _eyeball_centre(eye):
    """The eyeball centre in the image: a little above the corner line, mid-way between the corners."""
    return _to_image(eye, 0.0, -0.03 * eye.width)


def iris_centre(eye):
    """Where the iris centre projects: the eyeball centre plus its radius times the gaze's (x, y)."""
    ball_x, ball_y = _eyeball_centre(eye)
    return ball_x + eye.eyeball_radius * eye.gaze[0], ball_y + eye.eyeball_radius * eye.gaze[1]


def eyelid_margin(eye, num_points=16):
    """Points around the lid margin (image pixels): the upper lid corner to corner, the lower lid back."""
    num_upper = num_points // 2 + 1
    t_upper = np.linspace(-1.0, 1.0, num_upper)
    t_lower = np.linspace(1.0, -1.0, num_points - num_upper + 2)[1:-1]
    upper, _ = _lids(eye, t_upper)
    _, lower = _lids(eye, t_lower)
    t = np.concatenate([t_upper, t_lower])
    return np.stack(_to_image(eye, t * eye.width / 2, np.concatenate([upper, lower])), axis=1)


def iris_outline(eye, num_points=32):
    """Points around the iris outline (image pixels), an ellipse foreshortened along the gaze."""
    angles = np.linspace(0.0, 2 * np.pi, num_points, endpoint=False)
    along, across = _gaze_axes(eye)
    centre_x, centre_y = iris_centre(eye)
    major = eye.iris_radius * np.cos(angles)
    minor = eye.iris_radius * abs(eye.gaze[2]) * np.sin(angles)
    return np.stack([centre_x + minor * along[0] + major * across[0],
                     centre_y + minor * along[1] + major * across[1]], axis=1)


def _caruncle_centre_local(eye):
    """The caruncle (the pink corner of the eye) sits just inside the inner corner."""
    return eye.inner_side * 0.43 * eye.width, 0.01 * eye.width


def caruncle_outline(eye, num_points=7):
    """Points around the caruncle (image pixels)."""
    centre_u, centre_v = _caruncle_centre_local(eye)
    angles = np.linspace(0.0, 2 * np.pi, num_points, endpoint=False)
    u = centre_u + 0.06 * eye.width * np.cos(angles)
    v = centre_v + 0.04 * eye.width * np.sin(angles)
    return np.stack(_to_image(eye, u, v), axis=1)


def _gaze_axes(eye):
    """Unit image vectors along and across the gaze's image projection (the iris ellipse's axes)."""
    gaze_x, gaze_y = eye.gaze[0], eye.gaze[1]
    norm = float(np.hypot(gaze_x, gaze_y))
    along = (gaze_x / norm, gaze_y / norm) if norm > 1e-6 else (1.0, 0.0)
    return along, (-along[1], along[0])


def eyelid_bbox_centre(eye):
    """Centre of the bounding box of the lid landmarks: where the loader centres its crop."""
    margin = eyelid_margin(eye)
    return (margin.min(0) + margin.max(0)) / 2


def centred_on_bbox(eye, target_x, target_y):
    """The same eye moved so its lid landmarks' bounding box is centred on (target_x, target_y)."""
    bbox_x, bbox_y = eyelid_bbox_centre(eye)
    fields = dict(eye.__dict__, centre_x=float(eye.centre_x + target_x - bbox_x),
                  centre_y=float(eye.centre_y + target_y - bbox_y))
    return EyeShape(**fields)


# ----------------------------------------------------------------------------------------------------
# Drawing


def _coverage(signed_distance, pixel_size):
    """Anti-aliased inside-ness of a shape, from a signed distance in pixels (positive inside)."""
    return np.clip(signed_distance / pixel_size + 0.5, 0.0, 1.0)


def _smoothstep(edge0, edge1, value):
    """0 below edge0, 1 above edge1, a smooth ramp between."""
    ramp = np.clip((value - edge0) / (edge1 - edge0), 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def render_eye(cols, rows, eye, colours, skin, pixel_size=1.0):
    """Draw the eye on the pixel centres cols x rows; returns RGB floats and the eye-opening mask.

    skin is the RGB background, broadcastable to (rows, cols, 3); everything the eye adds fades out
    within PATCH_EXTENT of the corner-line centre, so a patch that size blends into a frame.
    """
    x, y = cols[None, :], rows[:, None]
    u, v = _to_local(eye, x, y)
    t = u / (eye.width / 2)
    upper, lower = _lids(eye, t)
    below_upper, above_lower = v - upper, lower - v
    # Past the corners both lids are on the corner line; the third term keeps the opening shut there.
    opening = _coverage(np.minimum(np.minimum(below_upper, above_lower), eye.width / 2 - np.abs(u)), pixel_size)
    rgb = _skin_around_eye(eye, t, v, upper, lower, skin, pixel_size)

    # The eyeball only where the opening is: most of the patch is skin.
    open_rows, open_cols = np.nonzero(opening.any(1))[0], np.nonzero(opening.any(0))[0]
    if len(open_rows):
        window = slice(open_rows[0], open_rows[-1] + 1), slice(open_cols[0], open_cols[-1] + 1)
        eyeball_rgb = _eyeball(eye, colours, x[:, window[1]], y[window[0]], t[window], u[window], v[window],
                               below_upper[window], pixel_size)
        inside = opening[window][..., None]
        rgb[window] = inside * eyeball_rgb + (1.0 - inside) * rgb[window]
    return rgb, opening


def _skin_around_eye(eye, t, v, upper, lower, skin, pixel_size):
    """The skin with the lash line, the lower lid margin, the lid crease and the under-eye shadow."""
    width = eye.width
    shade = np.ones(np.broadcast_shapes(t.shape, v.shape), np.float32)
    profile_wide = np.clip(1.0 - (t / 1.15) ** 2, 0.0, None)
    root_wide = np.sqrt(profile_wide)
    crease = v - (1.0 * upper - 0.10 * width * root_wide)
    shade -= 0.16 * profile_wide * np.exp(-0.5 * (crease / (0.025 * width)) ** 2)
    under_eye = v - (lower + 0.14 * width * root_wide)
    shade -= 0.07 * profile_wide * np.exp(-0.5 * (under_eye / (0.05 * width)) ** 2)
    below_lower = v - lower
    between_corners = t * t < 1.0
    shade -= 0.25 * (between_corners & (below_lower > -0.5)) * np.exp(-np.abs(below_lower) / (0.012 * width))
    rgb = skin * shade[..., None]

    # The lashes: a dark band above the upper lid, thinning toward the corners.
    lash_thickness = (0.035 * eye.width + pixel_size) * _lid_profile(t) ** 0.3
    lashes = _coverage(v - (upper - lash_thickness), pixel_size) * (between_corners & (v < upper + pixel_size))
    return rgb + lashes[..., None] * (LASHES - rgb)


def _eyeball(eye, colours, x, y, t, u, v, below_upper, pixel_size):
    """Sclera, caruncle, iris with limbus and texture, pupil and the glint, lit from the upper lid down."""
    width = eye.width
    rgb = np.broadcast_to(SCLERA, np.broadcast_shapes(x.shape, y.shape) + (3,)).copy()
    # The sclera darkens toward the corners, where the eyeball curves away from the light.
    rgb *= (1.0 - 0.28 * np.clip(np.abs(t), 0.0, 1.0) ** 3)[..., None]
    caruncle_u, caruncle_v = _caruncle_centre_local(eye)
    caruncle = np.hypot((u - caruncle_u) / (0.06 * width), (v - caruncle_v) / (0.04 * width))
    rgb += _smoothstep(1.3, 0.7, caruncle)[..., None] * (CARUNCLE - rgb)

    along, across = _gaze_axes(eye)
    centre_x, centre_y = iris_centre(eye)
    dx, dy = x - centre_x, y - centre_y
    along_dist = (dx * along[0] + dy * along[1]) / max(abs(eye.gaze[2]), 0.2)
    across_dist = dx * across[0] + dy * across[1]
    radius = np.hypot(along_dist, across_dist)
    angle = np.arctan2(across_dist, along_dist)
    relative = radius / eye.iris_radius
    texture = (1.0 + 0.10 * np.cos(23 * angle + eye.iris_phase) * np.cos(7 * angle)
               + 0.18 * np.exp(-0.5 * ((relative - 0.55) / 0.08) ** 2))
    limbus = 1.0 - 0.55 * _smoothstep(0.72, 1.0, relative)
    iris_rgb = colours.iris * (texture * limbus)[..., None]
    iris = _coverage(eye.iris_radius - radius, pixel_size)[..., None]
    rgb += iris * (iris_rgb - rgb)
    pupil = _coverage(eye.pupil_radius - radius, pixel_size)[..., None]
    rgb += pupil * (PUPIL - rgb)

    # The upper lid shades the top of the eyeball.
    rgb *= (1.0 - 0.40 * np.exp(-np.clip(below_upper, 0.0, None) / (0.05 * width)))[..., None]

    # A corneal reflection of a light above-left of the camera; it moves half as far as the iris.
    ball_x, ball_y = _eyeball_centre(eye)
    glint_x = (ball_x + centre_x) / 2 - 0.05 * width
    glint_y = (ball_y + centre_y) / 2 - 0.05 * width
    glint = _coverage(0.022 * width - np.hypot(x - glint_x, y - glint_y), pixel_size)
    return rgb + (colours.glint * glint)[..., None] * (1.0 - rgb)


# ----------------------------------------------------------------------------------------------------
# UnityEyes (synthetic)


def _unity_point(x, y, z):
    """A landmark as UnityEyes writes it: pixels, y counted from the frame's bottom."""
    return f"({x:.4f}, {FRAME_HEIGHT - y:.4f}, {z:.4f})"


def _unity_points(points, rng, depth):
    """UnityEyes landmark strings for image points, with a plausible camera-space depth each."""
    depths = depth + rng.normal(0.0, 0.05, len(points))
    return [_unity_point(x, y, z) for (x, y), z in zip(points, depths)]


def _synthetic_eye_centre(rng, eye):
    """Where the lid bounding box goes: around the frame centre, a few near an edge past the crop."""
    if rng.random() >= EDGE_PLACEMENT_SHARE:
        return (float(np.clip(rng.normal(FRAME_WIDTH / 2, 25), 200, 440)),
                float(np.clip(rng.normal(FRAME_HEIGHT / 2, 20), 170, 310)))
    # Near an edge: the landmarks stay in the frame, the loader's crop box does not.
    margin = eyelid_margin(eye)
    half_width, half_height = (margin.max(0) - margin.min(0)) / 2 + 3
    centre = [FRAME_WIDTH / 2, FRAME_HEIGHT / 2]
    side = rng.integers(4)
    if side < 2:
        near = rng.uniform(half_width, CROP_WIDTH / 2 - 2)
        centre[0] = near if side == 0 else FRAME_WIDTH - near
    else:
        near = rng.uniform(half_height, CROP_HEIGHT / 2 - 2)
        centre[1] = near if side == 2 else FRAME_HEIGHT - near
    return tuple(centre)


def _synthetic_skin_rows(skin):
    """The frame's skin colour per row: one clean tone, softly lit from above, as a smooth render."""
    return skin[None, :] * np.linspace(1.04, 0.92, FRAME_HEIGHT)[:, None]


def _to_uint8(rgb):
    """Floats in [0, 1] to uint8 pixels."""
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


def _draw_synthetic_frame(eye, colours, brightness):
    """The 640x480 RGB frame (a Pillow image): a cheap background everywhere, full detail only around the eye."""
    skin_rows = _synthetic_skin_rows(colours.skin)
    # Pillow widens the one-pixel column to the frame 3x faster than numpy broadcasting would.
    column = _to_uint8(skin_rows * brightness)[:, None, :]
    frame = Image.fromarray(column).resize((FRAME_WIDTH, FRAME_HEIGHT), Image.Resampling.NEAREST)
    left, right, top, bottom = (np.array(PATCH_EXTENT) * eye.width
                                + [eye.centre_x, eye.centre_x, eye.centre_y, eye.centre_y])
    col_start, col_stop = int(max(left, 0)), int(min(right, FRAME_WIDTH))
    row_start, row_stop = int(max(top, 0)), int(min(bottom, FRAME_HEIGHT))
    rgb, _ = render_eye(np.arange(col_start, col_stop, dtype=np.float32) + 0.5,
                        np.arange(row_start, row_stop, dtype=np.float32) + 0.5,
                        eye, colours, skin_rows[row_start:row_stop, None, :].astype(np.float32))
    frame.paste(Image.fromarray(_to_uint8(rgb * brightness)), (col_start, row_start))
    return frame


def _synthetic_eye(rng):
    """A random UnityEyes-like eye (one side, as UnityEyes renders one eye) and its look_vec."""
    pitch, yaw = rng.uniform(*SYNTHETIC_PITCH), rng.uniform(*SYNTHETIC_YAW)
    gaze = gaze_vector(pitch, yaw)
    eye = make_eye_shape((0.0, 0.0), EYE_WIDTH_SHARE * CROP_WIDTH * rng.uniform(0.9, 1.1), gaze, rng,
                         openness=(rng.uniform(0.17, 0.23), rng.uniform(0.09, 0.13)),
                         canthal_tilt=rng.normal(0.04, 0.03), inner_side=-1)
    eye = centred_on_bbox(eye, *_synthetic_eye_centre(rng, eye))
    look_vec = (gaze[0], -gaze[1], gaze[2])  # Unity's y points up, MPIIGaze's down
    return eye, look_vec


def _synthetic_colours(rng):
    """Render colours: any skin tone and iris texture, clean and bright."""
    iris_texture = str(rng.choice(sorted(IRIS_TEXTURES)))
    colours = EyeColours(skin=SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.97, 1.03),
                         iris=np.float32(IRIS_TEXTURES[iris_texture]) * np.float32(rng.uniform(0.9, 1.1)),
                         glint=0.9)
    return colours, iris_texture


def _unity_float(value):
    """A float as Unity writes it with C#'s default ToString(): 7 significant digits, E-notation below 1e-4."""
    return format(float(value), ".7G")


def _unity_json(rng, eye, look_vec, iris_texture):
    """The frame's JSON in UnityEyes' formats, checked against real UnityEyes files.

    Landmarks, look_vec and head_pose as "(x, y, z)" with 4 decimals; lighting and shape values as
    C# floats ("0.9527389", "1.683741E-17"); light_rotation with one decimal. The values follow the
    drawing (look_vec, landmarks) or real files' ranges: pupil_size in [-0.6, 0.6] (a dilation, not a
    radius), iris_size in [0.9, 1.0], 20 pca_shape_coeffs whose last is about 1e-17.
    """
    camera_pitch, camera_yaw = rng.uniform(-20.0, 20.0), rng.uniform(-40.0, 40.0)
    pca = np.append(np.clip(rng.normal(0.0, 0.025, 19), -0.085, 0.085), rng.uniform(5e-18, 2.5e-17))
    details = {
        "interior_margin_2d": _unity_points(eyelid_margin(eye), rng, 9.9),
        "caruncle_2d": _unity_points(caruncle_outline(eye), rng, 10.1),
        "iris_2d": _unity_points(iris_outline(eye), rng, 9.6),
        "eye_details": {
            "look_vec": "({:.4f}, {:.4f}, {:.4f}, 0.0000)".format(*look_vec),
            # pupil / iris radius 0.32 .. 0.48 (make_eye_shape) onto real files' -0.6 .. 0.6
            "pupil_size": _unity_float((eye.pupil_radius / eye.iris_radius - 0.40) / 0.08 * 0.6),
            "iris_size": _unity_float(0.9 + (eye.iris_radius / eye.width - 0.19) / 0.02 * 0.1),
            "iris_texture": iris_texture,
        },
        "lighting_details": {
            "skybox_texture": "bergen_2k",
            "skybox_exposure": _unity_float(rng.uniform(0.9, 1.2)),
            "skybox_rotation": str(int(rng.integers(0, 360))),
            "ambient_intensity": _unity_float(rng.uniform(0.8, 1.2)),
            "light_rotation": "({:.1f}, {:.1f}, 0.0)".format(rng.uniform(0, 360), rng.uniform(90, 270)),
            "light_intensity": _unity_float(rng.uniform(0.6, 1.2)),
        },
        "eye_region_details": {
            "pca_shape_coeffs": [_unity_float(c) for c in pca],
            "primary_skin_texture": str(rng.choice(SKIN_TEXTURES)),
        },
        "head_pose": f"({camera_pitch % 360:.4f}, {180 + camera_yaw:.4f}, 0.0000)",
    }
    return json.dumps(details, indent="\t")


def _jpeg_bytes(image, quality):
    """Pillow's JPEG encoding of an image, as bytes (deterministic for the same input)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def synthetic_sample(seed, index):
    """The JPEG bytes and JSON text of UnityEyes frame number index (its own random stream)."""
    rng = np.random.default_rng([seed, _SYNTHETIC, index])
    eye, look_vec = _synthetic_eye(rng)
    colours, iris_texture = _synthetic_colours(rng)
    frame = _draw_synthetic_frame(eye, colours, brightness=rng.uniform(0.97, 1.03))
    return _jpeg_bytes(frame, SYNTHETIC_JPEG_QUALITY), _unity_json(rng, eye, look_vec, iris_texture)


# ----------------------------------------------------------------------------------------------------
# MPIIGaze (real)


@dataclass(frozen=True)
class RealPerson:
    """What stays the same for one MPIIGaze participant: face, eyes, skin texture, gaze habits."""

    colours: EyeColours
    width_share: float  # corner-to-corner width over the image width
    openness: tuple
    canthal_tilt: float
    blotches: float  # strength of the low-frequency skin blotches
    pores: float  # strength of the fine skin texture
    yaw_bias: float  # degrees; where on the screen this person tends to look


@dataclass(frozen=True)
class RealDay:
    """What stays the same for one recording day: the room's lighting and the camera's settings."""

    brightness: float
    gradient: float  # relative change of the light from one side of the patch to the other
    gradient_angle: float
    contrast: float
    black_level: float
    blur_sigma: float  # pixels of the 60x36 image
    noise_sigma: float  # grey levels
    shot_noise: float  # grey levels of variance per grey level of signal
    jpeg_quality: int


def real_person(seed, person):
    """Participant person's fixed traits (its own random stream)."""
    rng = np.random.default_rng([seed, _PERSON, person])
    skin = SKIN_TONES[rng.choice(4, p=[0.2, 0.35, 0.3, 0.15])] * rng.uniform(0.95, 1.05)
    iris = ("eyeball_darkbrown", "eyeball_brown", "eyeball_blue", "eyeball_green")[
        rng.choice(4, p=[0.5, 0.3, 0.12, 0.08])]
    colours = EyeColours(skin=skin.astype(np.float32), iris=np.float32(IRIS_TEXTURES[iris]), glint=0.6)
    return RealPerson(colours=colours, width_share=EYE_WIDTH_SHARE * rng.normal(1.0, 0.04),
                      openness=(rng.uniform(0.17, 0.23), rng.uniform(0.09, 0.13)),
                      canthal_tilt=rng.normal(0.04, 0.03), blotches=rng.uniform(0.05, 0.12),
                      pores=rng.uniform(0.02, 0.05), yaw_bias=rng.normal(0.0, 4.0))


def real_day(seed, person, day):
    """Recording day's lighting and camera (its own random stream)."""
    rng = np.random.default_rng([seed, _DAY, person, day])
    return RealDay(brightness=rng.uniform(0.45, 0.8), gradient=rng.uniform(0.15, 0.5),
                   gradient_angle=rng.uniform(0, 2 * np.pi), contrast=rng.uniform(0.7, 0.9),
                   black_level=rng.uniform(0.03, 0.1), blur_sigma=rng.uniform(0.5, 1.1),
                   noise_sigma=rng.uniform(2.0, 5.0), shot_noise=rng.uniform(0.2, 0.8),
                   jpeg_quality=int(rng.integers(70, 91)))


def _smooth_noise(rng, shape, cells):
    """Zero-mean, unit-ish noise that varies over about shape / cells pixels (skin blotches)."""
    coarse = Image.fromarray(rng.standard_normal(cells, np.float32))  # mode F
    # Pillow's bicubic upsampling: smooth like scipy's cubic zoom, at a tenth of the time.
    return np.asarray(coarse.resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def _motion_blur_kernel(rng, length):
    """A normalised line kernel of the given length (pixels) in a random direction."""
    size = int(np.ceil(length)) | 1
    angle = rng.uniform(0, np.pi)
    offsets = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * size)
    kernel = np.zeros((size, size))
    rows = np.round(size // 2 + offsets * np.sin(angle)).astype(int)
    cols = np.round(size // 2 + offsets * np.cos(angle)).astype(int)
    np.add.at(kernel, (rows, cols), 1.0)
    return kernel / kernel.sum()


def _skin_texture(rng, person, shape):
    """Multiplicative skin texture: blotches over a few cells of the image, and fine pores."""
    blotches = _smooth_noise(rng, shape, (4, 6))
    pores = _smooth_noise(rng, shape, (REAL_HEIGHT, REAL_WIDTH))  # about one image pixel each
    return 1.0 + person.blotches * blotches + person.pores * pores


def _real_eye_shape(rng, person, gaze, inner_side):
    """The eye of one image, framed as the loader frames synthetic crops: same width share, same centre."""
    width = person.width_share * REAL_WIDTH * rng.normal(1.0, 0.02)
    openness = tuple(o * rng.normal(1.0, 0.05) for o in person.openness)
    eye = make_eye_shape((0.0, 0.0), width, gaze, rng, openness=openness,
                         canthal_tilt=person.canthal_tilt + rng.normal(0.0, 0.01), inner_side=inner_side)
    # The cropper puts the lid box centre at 70..71 of 140 px (it floors the centre): on average half
    # a crop pixel right of (and below) the middle. Landmark detection adds a little jitter.
    centre_x = REAL_WIDTH / 2 * (1 + 1 / CROP_WIDTH) + rng.normal(0.0, 0.4)
    centre_y = REAL_HEIGHT / 2 * (1 + 1 / CROP_HEIGHT) + rng.normal(0.0, 0.4)
    return centred_on_bbox(eye, centre_x, centre_y)


def _real_render(rng, person, eye):
    """The eye drawn at REAL_SUPERSAMPLING x the image size in RGB, on the person's textured skin."""
    scale = REAL_SUPERSAMPLING
    cols = (np.arange(REAL_WIDTH * scale, dtype=np.float32) + 0.5) / scale
    rows = (np.arange(REAL_HEIGHT * scale, dtype=np.float32) + 0.5) / scale
    texture = _skin_texture(rng, person, (len(rows), len(cols)))
    skin = texture[..., None] * person.colours.skin
    rgb, _ = render_eye(cols, rows, eye, person.colours, skin, pixel_size=1.0 / scale)
    return rgb


def _lighting(rng, day, shape):
    """The room's light over the patch: darker than a render, brighter on one side."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    angle = day.gradient_angle + rng.normal(0.0, 0.3)
    ramp = ((cols / shape[1] - 0.5) * np.cos(angle) + (rows / shape[0] - 0.5) * np.sin(angle))
    return day.brightness * rng.uniform(0.9, 1.1) * (1.0 + day.gradient * ramp)


def _camera(rng, day, gray):
    """What a laptop webcam makes of the supersampled light: blur, pixels, flare, noise, JPEG (uint8)."""
    scale = REAL_SUPERSAMPLING
    blurred = gaussian_filter(gray, day.blur_sigma * scale * rng.uniform(0.85, 1.15), mode="nearest")
    pixels = blurred.reshape(REAL_HEIGHT, scale, REAL_WIDTH, scale).mean(axis=(1, 3))
    if rng.random() < 0.15:  # a head moving during the exposure
        pixels = convolve(pixels, _motion_blur_kernel(rng, rng.uniform(1.5, 3.0)), mode="nearest")
    # Flare lifts the blacks and flattens the contrast.
    levels = 255.0 * (day.black_level + day.contrast * pixels)
    noise_sigma = np.sqrt(day.noise_sigma ** 2 + day.shot_noise * np.clip(levels, 0.0, None))
    levels = levels + noise_sigma * rng.standard_normal(levels.shape, np.float32)
    image = Image.fromarray(np.clip(levels + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(Image.open(io.BytesIO(_jpeg_bytes(image, day.jpeg_quality))))


def real_image(rng, person, day, gaze, inner_side):
    """One 36x60 uint8 MPIIGaze eye image of a RealPerson on a RealDay, gaze in MPIIGaze's frame."""
    eye = _real_eye_shape(rng, person, gaze, inner_side)
    rgb = _real_render(rng, person, eye)
    # A weighted sum, not rgb @ LUMA: BLAS threads would fight the worker processes for the cores.
    gray = np.einsum("ijk,k->ij", rgb, LUMA.astype(np.float32)) * _lighting(rng, day, rgb.shape[:2])
    return _camera(rng, day, gray)


def real_layout(seed, num_real):
    """[(person, day, samples)] of every day file; num_real images, two (left, right) per sample."""
    num_samples = num_real // 2
    rng = np.random.default_rng([seed, _LAYOUT, num_samples])
    # About four samples a participant at least, so even a tiny sample has days of several samples.
    num_persons = min(NUM_PERSONS, max(1, num_samples // 4))
    # Some participants recorded far more than others, as in MPIIGaze.
    shares = rng.dirichlet(np.full(num_persons, 4.0))
    per_person = 1 + rng.multinomial(num_samples - num_persons, shares)
    layout = []
    for person, count in enumerate(per_person):
        # Real MPIIGaze has days with a single sample, which loadmat squeezes to one image: keep one.
        sizes = [1] if person == 0 else []
        while sum(sizes) < count:
            sizes.append(min(count - sum(sizes), int(rng.integers(5, 60))))
        layout += [(person, day, int(size)) for day, size in enumerate(sizes, start=1)]
    return layout


def _real_sample(rng, person):
    """(pitch, yaw, head) of one sample: its gaze in degrees, and its head pose as Euler angles in degrees."""
    pitch = rng.uniform(*REAL_PITCH)
    yaw = float(np.clip(rng.uniform(*REAL_YAW) + person.yaw_bias, *REAL_YAW))
    return pitch, yaw, rng.normal(0.0, [8.0, 12.0, 4.0])


def real_day_content(seed, person_index, day_index, num_samples):
    """The variables of one dayYY.mat: data.left / data.right (gaze, image, pose) and filenames."""
    person, day = real_person(seed, person_index), real_day(seed, person_index, day_index)
    eyes = {side: {"gaze": [], "image": [], "pose": []} for side in ("left", "right")}
    for index in range(num_samples):
        rng = np.random.default_rng([seed, _SAMPLE, person_index, day_index, index])
        pitch, yaw, head = _real_sample(rng, person)
        # The left eye is on the image right, its inner corner on the image left; both eyes converge
        # on a screen about 50 cm away, so each turns VERGENCE / 2 toward the nose.
        for side, inner_side in (("left", -1), ("right", 1)):
            gaze = gaze_vector(pitch, yaw + inner_side * VERGENCE / 2)
            image_rng = np.random.default_rng([seed, _REAL, person_index, day_index, index, inner_side + 1])
            eyes[side]["image"].append(real_image(image_rng, person, day, gaze, inner_side))
            eyes[side]["gaze"].append(gaze)
            # Each eye's normalised camera sees the head from a slightly different angle.
            eyes[side]["pose"].append(Rotation.from_euler("xyz", head + rng.normal(0.0, 0.5, 3),
                                                          degrees=True).as_rotvec())
    data = {side: {"gaze": np.array(eye["gaze"], np.float64), "image": np.array(eye["image"], np.uint8),
                   "pose": np.array(eye["pose"], np.float64)} for side, eye in eyes.items()}
    filenames = np.array([f"day{day_index:02d}/{i + 1:04d}.jpg" for i in range(num_samples)], dtype=object)
    return {"data": data, "filenames": filenames.reshape(-1, 1)}


def _mat_bytes(variables):
    """A MATLAB 5 file of the variables, byte-identical for the same content (no creation date)."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, format="5", do_compression=False)
    content = bytearray(buffer.getvalue())
    content[:116] = MAT_HEADER.ljust(116, b" ")  # SciPy writes time.asctime() into this text field
    return bytes(content)


# ----------------------------------------------------------------------------------------------------
# Writing

# The names from before this module was renamed from data.sample_data, so a sample written then is still
# recognised as one and replaced.
LAYOUT = SampleLayout("data.gaze_sample", ("MPIIGaze", "UnityEyes"), marker_name=".sample_data.json",
                      staging_name=".sample_data.partial")
SYNTHETIC_CHUNK = 50  # frames per task: the hand-off is amortised, and the pool still ends evenly
_PARALLEL_MIN = 64  # fewer images than this are not worth starting processes for


@dataclass(frozen=True)
class SampleReport:
    """What write_sample wrote, and how long it took."""

    synthetic_dir: Path
    real_dir: Path
    num_synthetic: int  # UnityEyes frames
    num_real: int  # MPIIGaze images, both eyes
    num_days: int  # dayYY.mat files
    seconds: float


def write_synthetic(seed, start, stop, directory):
    """Write UnityEyes frames start..stop-1 as {i}.jpg + {i}.json; returns how many."""
    for index in range(start, stop):
        jpeg, text = synthetic_sample(seed, index)
        Path(directory, f"{index}.jpg").write_bytes(jpeg)
        Path(directory, f"{index}.json").write_text(text, encoding="utf-8")
    return stop - start


def write_real_day(seed, person, day, num_samples, directory):
    """Write MPIIGaze's Data/Normalized/pXX/dayYY.mat of one recording day; returns its images."""
    path = Path(directory, "Data", "Normalized", f"p{person:02d}", f"day{day:02d}.mat")
    path.parent.mkdir(parents=True, exist_ok=True)  # several workers may make the same person's folder
    path.write_bytes(_mat_bytes(real_day_content(seed, person, day, num_samples)))
    return 2 * num_samples


def _tasks(seed, num_synthetic, days, staging):
    """(function, args) of all the work, the biggest pieces first so the workers finish together."""
    real = [(write_real_day, (seed, *day, staging / "MPIIGaze")) for day in sorted(days, key=lambda day: -day[2])]
    # Frames are numbered from 1, as UnityEyes numbers them.
    synthetic = [(write_synthetic, (seed, start, min(start + SYNTHETIC_CHUNK, num_synthetic + 1),
                                    staging / "UnityEyes"))
                 for start in range(1, num_synthetic + 1, SYNTHETIC_CHUNK)]
    return real + synthetic


def write_sample(gaze_dir, num_synthetic=3000, num_real=3000, seed=123, workers=None):
    """Write gaze_dir/UnityEyes (num_synthetic frames) and gaze_dir/MPIIGaze (num_real images); a SampleReport.

    The same arguments give byte-identical files, whatever workers (processes; None: one per usable CPU).
    Staged as LAYOUT.staged stages (data/sample_staging.py): MPIIGaze is renamed into place first and
    UnityEyes last, so a gaze_dir/UnityEyes folder means the sample is complete, which data/gaze_data.py
    relies on; a UnityEyes or MPIIGaze folder of other data is never touched (FileExistsError).
    """
    if not isinstance(num_real, int) or num_real < 2 or num_real % 2:
        raise ValueError(f"num_real must be an even number >= 2 (each MPIIGaze sample is a left and "
                         f"a right eye image), not {num_real!r}")
    check_counts(seed, num_synthetic=num_synthetic)
    started = time.perf_counter()
    days = real_layout(seed, num_real)
    with LAYOUT.staged(gaze_dir, seed=seed, num_synthetic=num_synthetic, num_real=num_real) as staging:
        run_tasks(_tasks(seed, num_synthetic, days, staging), workers, num_synthetic + num_real >= _PARALLEL_MIN)
    return SampleReport(synthetic_dir=Path(gaze_dir, "UnityEyes"), real_dir=Path(gaze_dir, "MPIIGaze"),
                        num_synthetic=num_synthetic, num_real=num_real, num_days=len(days),
                        seconds=time.perf_counter() - started)


def main(argv=None):
    """The command line: write the sample to --out and print one line of what was written."""
    command_line(argv, "Write the bundled sample gaze data (UnityEyes + MPIIGaze layouts) to a folder.",
                 "folder to write UnityEyes/ and MPIIGaze/ into",
                 {"num_synthetic": (3000, "UnityEyes frames to write"),
                  "num_real": (3000, "MPIIGaze eye images to write (even)")}, 123, write_sample,
                 "[*] Wrote {num_synthetic} UnityEyes frames to {synthetic_dir} and {num_real} MPIIGaze images "
                 "({num_days} day files) to {real_dir} in {seconds:.1f} s")


if __name__ == "__main__":
    main()
