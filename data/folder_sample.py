"""A procedural pair of image folders for ``--data_set=folders``: simulator renders and camera images.

``--data_set=folders`` trains on any folder of synthetic images and any folder of real ones. This module
draws a small pair of such folders, so the mode can be tried (and tested) without a data set:

- ``OUT/synthetic/part_K/render_NNNNN.png``: clean simulator renders, RGB PNG, 72x96 (height x width) by
  default, a new part folder every IMAGES_PER_PART images, so the loader's walk of a folder tree runs.
- ``OUT/real/camera_NNNNN.jpg``: camera images, RGB JPEG, 36x48 by default (a smaller camera crop), flat.

Both show the same kind of scene, drawn independently (not paired): a few shaded discs, ellipses and
rounded rectangles with soft shadows on a textured gradient background. The domain gap is what a small
fully convolutional refiner can learn to add, never geometry: the camera images have a warm colour cast
(white balance gains: red up, blue down, so the brightness barely moves while the colour balance does;
see colour_balance), blur, sensor noise, lower contrast and JPEG softness. The renders are sharp, noise
free and neutral on average.

``write_folder_pair`` is the entry point. Every image draws from its own random stream keyed by the
seed, its kind and its index, so the same arguments (with the same Pillow and SciPy) give the same files
however the work is split over processes. Each file is written atomically and files already there are
kept, so running the same command again completes an interrupted write. A marker in OUT records the
arguments; folders without it that hold anything are never written into.

Usage: ``python -m data.folder_sample --out DIR [--count N] [--seed S]``.
"""
import argparse
import json
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from data.sample_staging import check_counts, run_tasks
from utils import atomic_write, save_image, write_json
from worker_processes import WorkerLost

WRITER = "data.folder_sample"
MARKER_NAME = ".folder_sample"
SYNTHETIC, REAL = "synthetic", "real"
IMAGES_PER_PART = 500  # renders per part_K subfolder of synthetic/
JPEG_QUALITY = 90
CHUNK = 100  # images per task: enough to outweigh a task's overhead, small enough to share out evenly
_PARALLEL_MIN = 400  # fewer images than this are not worth starting processes for
_KINDS = {SYNTHETIC: 0, REAL: 1}  # the kind's number in each image's random stream key
_LEFTOVER_PATTERN = ".tmp-*"  # utils.atomic_write's temporary names, left behind by a killed run

# The camera's side of the domain gap (ranges; each image draws its own value).
CAST_GAIN = (0.12, 0.16)  # red gain 1 + g, blue gain 1 - g: about +-18 grey levels of colour balance
BLUR_SIGMA = (0.8, 1.2)  # pixels at the real size
NOISE_SIGMA = (4.0, 6.0)  # grey levels
CONTRAST = (0.80, 0.90)  # the image's deviation from its mean is scaled by this
SHADOW_OFFSET, SHADOW_SOFTNESS = 0.04, 0.05  # in units of the image height
PNG_COMPRESSION = 1  # zlib's fastest: the renders are small, and level 6 took 3x the time for 10% less


@dataclass(frozen=True)
class Shape:
    """One object of a scene, in units of the image height (x right, y down)."""

    kind: str  # "ellipse" (a disc when the half axes are equal) or "box" (a rounded rectangle)
    centre: tuple
    half_size: tuple  # half width and half height before the rotation
    angle: float  # radians
    corner: float  # a box's corner radius
    colour: np.ndarray  # RGB in [0, 1]


@dataclass(frozen=True)
class Scene:
    """What an image shows, independent of its size: a background, a light and 2 to 4 objects."""

    aspect: float  # width over height
    top: np.ndarray  # background colours at the two ends of the gradient
    bottom: np.ndarray
    gradient_angle: float
    waves: np.ndarray  # (3, 4): frequency x, frequency y, phase, amplitude of the background's texture
    light: tuple  # unit vector (x, y, z), z toward the viewer
    shapes: tuple


@dataclass(frozen=True)
class FolderPair:
    """What write_folder_pair wrote: the two folders, the images in each, and how many files were new."""

    synthetic_dir: Path
    real_dir: Path
    count: int  # images in each folder
    written: int  # files this call wrote; the others were there already
    seconds: float


# ----------------------------------------------------------------------------------------------------
# The scene


def _hue_colour(rng):
    """A saturated colour of uniformly random hue, so the renders are neutral on average."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.35, 0.85), rng.uniform(0.55, 0.95)
    offsets = np.array([0.0, 2.0 / 3.0, 1.0 / 3.0])  # the red, green and blue peaks around the hue circle
    wave = np.clip(np.abs(((hue + offsets) % 1.0) * 6.0 - 3.0) - 1.0, 0.0, 1.0)  # HSV's hue ramps
    return (value * (1.0 - saturation + saturation * wave)).astype(np.float32)


def _draw_shape(rng, aspect):
    """A random object that fits in the frame: about a sixth to a third of the height across."""
    kind = "ellipse" if rng.uniform() < 0.6 else "box"
    size = rng.uniform(0.09, 0.18)
    stretch = 1.0 if rng.uniform() < 0.3 else rng.uniform(0.55, 1.0)  # a third are discs or squares
    half = (size, size * stretch)
    centre = (rng.uniform(0.2, aspect - 0.2), rng.uniform(0.2, 0.8))
    return Shape(kind=kind, centre=centre, half_size=half, angle=rng.uniform(0, np.pi),
                 corner=rng.uniform(0.2, 0.6) * min(half), colour=_hue_colour(rng))


def draw_scene(rng, aspect=4 / 3):
    """A random scene: the same distribution for renders and camera images."""
    grey = rng.uniform(0.35, 0.7)
    tint = rng.uniform(-0.06, 0.06, 3)  # symmetric around neutral
    top = np.clip(grey + tint, 0, 1).astype(np.float32)
    bottom = np.clip(top * rng.uniform(0.65, 1.1), 0, 1).astype(np.float32)
    waves = np.stack([rng.uniform(-9, 9, 3), rng.uniform(-9, 9, 3), rng.uniform(0, 2 * np.pi, 3),
                      rng.uniform(0.01, 0.035, 3)], axis=1)
    light_angle = rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(light_angle), np.sin(light_angle), 1.3])
    shapes = tuple(_draw_shape(rng, aspect) for _ in range(rng.integers(2, 5)))
    return Scene(aspect=aspect, top=top, bottom=bottom, gradient_angle=rng.uniform(0, 2 * np.pi),
                 waves=waves, light=tuple(light / np.linalg.norm(light)), shapes=shapes)


# ----------------------------------------------------------------------------------------------------
# Rendering
#
# Drawing is float32 on a row vector of pixel x and a column vector of pixel y, broadcast only where a
# quantity depends on both: the images are small, so the cost is in the number of numpy calls, and the
# scene's numbers are Python floats so that no call widens an array to float64.


def _axes(height, width):
    """Pixel centres in units of the height: x (1, width) and y (height, 1), float32."""
    y = (np.arange(height, dtype=np.float32) + 0.5) / height
    x = (np.arange(width, dtype=np.float32) + 0.5) / height
    return x[None, :], y[:, None]


def _background(scene, x, y):
    """The scene's gradient between its two colours, with a faint texture of crossed waves."""
    angle = float(scene.gradient_angle)
    t = np.clip(0.5 + (x - scene.aspect / 2) * math.cos(angle) + (y - 0.5) * math.sin(angle), 0, 1)[..., None]
    texture = 0.0
    for fx, fy, phase, amplitude in scene.waves.tolist():
        # sin(a + b) = sin a cos b + cos a sin b: four 1-D sines instead of one over the whole image
        along_x = fx * x + phase
        texture = texture + amplitude * (np.sin(along_x) * np.cos(fy * y) + np.cos(along_x) * np.sin(fy * y))
    return scene.top * (1 - t) + scene.bottom * t + texture[..., None]


def _local(shape, x, y):
    """Pixel centres in the shape's own frame: (along its width, along its height), broadcast to 2-D."""
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    dx, dy = x - float(shape.centre[0]), y - float(shape.centre[1])
    return dx * cos + dy * sin, dy * cos - dx * sin


def _distance(shape, u, v):
    """Signed distance (negative inside) from the shape's outline, in units of the height."""
    a, b = (float(half) for half in shape.half_size)
    if shape.kind == "ellipse":
        return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * min(a, b)  # exact for a disc, close for these
    corner = float(shape.corner)
    qu, qv = np.abs(u) - (a - corner), np.abs(v) - (b - corner)
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0) - corner


def _shading(shape, u, v, light):
    """Lambert shading of a dome (ellipse) or a pillow (box) lit from light, plus a dome's highlight."""
    a, b = (float(half) for half in shape.half_size)
    nu, nv = np.clip(u / a, -1, 1), np.clip(v / b, -1, 1)
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    lx, ly, lz = (float(component) for component in light)
    lu, lv = lx * cos + ly * sin, ly * cos - lx * sin  # the light in the shape's frame
    if shape.kind == "ellipse":
        nz = np.sqrt(np.clip(1 - nu * nu - nv * nv, 0, 1))
        lit = np.clip(-nu * lu - nv * lv + nz * lz, 0, 1)
        return 0.45 + 0.55 * lit, 0.35 * lit ** 24
    nu, nv = 0.45 * nu ** 3, 0.45 * nv ** 3  # flat in the middle, turning away at the edges
    lit = np.clip((-nu * lu - nv * lv + lz) / np.sqrt(1 + nu * nu + nv * nv), 0, 1)
    return 0.45 + 0.55 * lit, 0.0


def _window(shape, reach, height, width):
    """The rows and columns (slices) of the pixels within reach (units of the height) of the shape's bounds."""
    radius = math.hypot(*shape.half_size) + reach  # the shape's farthest point from its centre, at any angle
    cx, cy = shape.centre
    rows = slice(max(int((cy - radius) * height), 0), min(math.ceil((cy + radius) * height) + 1, height))
    columns = slice(max(int((cx - radius) * height), 0), min(math.ceil((cx + radius) * height) + 1, width))
    return rows, columns


def render(scene, height, width):
    """The scene as float32 (height, width, 3) RGB in [0, 1]: sharp, with anti-aliased outlines."""
    x, y = _axes(height, width)
    image = _background(scene, x, y)
    lx, ly = float(scene.light[0]), float(scene.light[1])
    shift_x, shift_y = (SHADOW_OFFSET * component / max(math.hypot(lx, ly), 1e-6) for component in (lx, ly))
    for shape in scene.shapes:
        # Only the pixels the shape or its shadow can reach are drawn: the same image, a fraction of the work.
        rows, columns = _window(shape, SHADOW_OFFSET + SHADOW_SOFTNESS + 1.0 / height, height, width)
        xs, ys, patch = x[:, columns], y[rows], image[rows, columns]
        # The shadow falls away from the light, soft over SHADOW_SOFTNESS.
        u, v = _local(shape, xs - shift_x, ys - shift_y)
        shadow = np.clip(0.5 - _distance(shape, u, v) / SHADOW_SOFTNESS, 0, 1)
        patch *= (1 - 0.35 * shadow)[..., None]
        u, v = _local(shape, xs, ys)
        cover = np.clip(0.5 - _distance(shape, u, v) * height, 0, 1)[..., None]  # a pixel wide edge
        shade, highlight = _shading(shape, u, v, scene.light)
        colour = shape.colour * shade[..., None] + np.asarray(highlight, np.float32)[..., None]
        image[rows, columns] = patch * (1 - cover) + colour * cover
    return np.clip(image, 0, 1)


def to_pixels(image):
    """float [0, 1] -> uint8 [0, 255], rounded and clipped."""
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def synthetic_image(rng, size):
    """A simulator render of a random scene: uint8 (height, width, 3), sharp and noise free."""
    height, width = size
    return to_pixels(render(draw_scene(rng, width / height), height, width))


def camera_image(rng, size):
    """A camera image of a random scene: uint8 (height, width, 3) with the camera's side of the gap."""
    height, width = size
    scene = draw_scene(rng, width / height)
    image = render(scene, height, width)
    sigma = rng.uniform(*BLUR_SIGMA)
    image = gaussian_filter(image, (sigma, sigma, 0), mode="nearest")
    mean = image.mean()
    image = mean + rng.uniform(*CONTRAST) * (image - mean)
    gain = rng.uniform(*CAST_GAIN)
    image = image * np.float32([1 + gain, 1, 1 - gain])  # warm white balance; red and blue move alike
    image = image + rng.normal(0, rng.uniform(*NOISE_SIGMA) / 255, image.shape)
    return to_pixels(image)


def colour_balance(pixels):
    """The colour balance of uint8 (N, H, W, 3) images: the mean over images of each channel's mean
    minus the mean over channels, a (3,) float in grey levels.

    Neutral images give (0, 0, 0); a warm cast gives red > 0 > blue. It sums to zero, so it says
    nothing of the brightness (the mean over channels), which is measured apart.
    """
    channel_means = np.asarray(pixels, np.float64).mean(axis=(1, 2))  # (N, 3)
    return (channel_means - channel_means.mean(axis=1, keepdims=True)).mean(axis=0)


# ----------------------------------------------------------------------------------------------------
# Writing


def synthetic_path(out, index):
    """Where render index goes: OUT/synthetic/part_K/render_NNNNN.png."""
    return Path(out, SYNTHETIC, f"part_{index // IMAGES_PER_PART}", f"render_{index:05d}.png")


def real_path(out, index):
    """Where camera image index goes: OUT/real/camera_NNNNN.jpg."""
    return Path(out, REAL, f"camera_{index:05d}.jpg")


def write_images(out, kind, seed, start, stop, size):
    """Write images start..stop-1 of kind (SYNTHETIC or REAL) that are not there yet; how many were written."""
    written = 0
    for index in range(start, stop):
        path = synthetic_path(out, index) if kind == SYNTHETIC else real_path(out, index)
        if path.exists():  # written atomically, so a file there is whole
            continue
        rng = np.random.default_rng([seed, _KINDS[kind], index])
        if kind == SYNTHETIC:
            save_image(synthetic_image(rng, size), path, compress_level=PNG_COMPRESSION)
        else:
            image = Image.fromarray(camera_image(rng, size))
            atomic_write(path, lambda handle: image.save(handle, format="JPEG", quality=JPEG_QUALITY))
        written += 1
    return written


def _check_size(name, size):
    """ValueError unless size is a (height, width) pair of whole numbers >= 8."""
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(side, int) and side >= 8 for side in size)):
        raise ValueError(f"{name} must be (height, width), whole numbers >= 8, not {size!r}")


def _claim(out, marker):
    """Make OUT ours to write into: its marker matches, or its synthetic/ and real/ are absent or empty.

    ValueError if another write's marker is there, or a folder holds data this module did not write.
    Temporary files a killed run left are removed: one writer per OUT at a time.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; choose another --out")
    marker_path = out / MARKER_NAME
    if marker_path.is_file():
        try:
            found = json.loads(marker_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != marker:
            raise ValueError(f"{out} holds a folder pair written with other arguments ({marker_path}: "
                             f"{json.dumps(found)}); pass the same ones to complete it, or choose another --out")
        for name in (SYNTHETIC, REAL):
            for leftover in (out / name).rglob(_LEFTOVER_PATTERN):
                leftover.unlink()
        return
    for name in (SYNTHETIC, REAL):
        folder = out / name
        if folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
            raise ValueError(f"{folder} holds files not written by {WRITER}; move them away or choose "
                             "another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker_path, marker)


def _tasks(out, seed, count, synthetic_size, real_size):
    """(function, args) of all the work, in chunks of CHUNK images."""
    return [(write_images, (out, kind, seed, start, min(start + CHUNK, count), size))
            for kind, size in ((REAL, real_size), (SYNTHETIC, synthetic_size))  # camera images cost more
            for start in range(0, count, CHUNK)]


def write_folder_pair(out, count=2000, seed=123, synthetic_size=(72, 96), real_size=(36, 48), workers=None):
    """Write count renders to OUT/synthetic and count camera images to OUT/real; a FolderPair.

    sizes are (height, width); workers: processes (None: one per usable CPU). Files already there are
    kept, so the same call again completes an interrupted one. ValueError on a bad argument, or if OUT
    holds data this module did not write or a pair written with other arguments.
    """
    check_counts(seed, count=count)
    _check_size("synthetic_size", synthetic_size)
    _check_size("real_size", real_size)
    started = time.perf_counter()
    out = Path(out)
    marker = {"written_by": WRITER, "seed": seed, "count": count, "synthetic_size": list(synthetic_size),
              "real_size": list(real_size)}
    _claim(out, marker)
    (out / REAL).mkdir(exist_ok=True)
    for part in range(math.ceil(count / IMAGES_PER_PART)):
        (out / SYNTHETIC / f"part_{part}").mkdir(parents=True, exist_ok=True)
    written = run_tasks(_tasks(out, seed, count, synthetic_size, real_size), workers,
                        2 * count >= _PARALLEL_MIN)
    return FolderPair(synthetic_dir=out / SYNTHETIC, real_dir=out / REAL, count=count, written=sum(written),
                      seconds=time.perf_counter() - started)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as the module's other errors: one [!] line on stderr and exit status 1."""

    def error(self, message):
        self.exit(1, f"[!] {message} (see --help)\n")


def main(argv=None):
    """The command line: write the pair to --out and print one line of what was written and how to train on it."""
    parser = _Parser(description="Write a procedural pair of image folders (simulator renders and camera "
                                 "images) for --data_set=folders.")
    parser.add_argument("--out", required=True, help="folder to write synthetic/ and real/ into")
    parser.add_argument("--count", type=int, default=2000, help="images in each folder")
    parser.add_argument("--seed", type=int, default=123, help="random seed; the same seed writes the same files")
    args = parser.parse_args(argv)
    try:
        pair = write_folder_pair(args.out, args.count, args.seed)
    except (ValueError, OSError, WorkerLost) as error:
        parser.exit(1, f"[!] {error}\n")
    kept = 2 * pair.count - pair.written
    done = (f"Wrote {pair.count} renders to {pair.synthetic_dir} and {pair.count} camera images to {pair.real_dir}"
            if not kept else f"Completed {pair.count} renders in {pair.synthetic_dir} and {pair.count} camera "
                             f"images in {pair.real_dir}: {pair.written} files written, {kept} were there already")
    train = (f"python main.py --data_set=folders --synthetic_image_dir={shlex.quote(str(pair.synthetic_dir))} "
             f"--real_image_dir={shlex.quote(str(pair.real_dir))}")
    print(f"[*] {done} in {pair.seconds:.1f} s; train on them with: {train}")


if __name__ == "__main__":
    main()
