"""Host helpers: run folders, params.json, atomic file writes, images, the machine (worker processes:
worker_processes.py).

The lowest layer of the program: numpy and Pillow only, no TensorFlow and no
other module of ours, so the data package's worker processes can import it.
"""
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin



class OutputError(OSError):
    """An output that cannot be written (full disk, no permission); str(e) is one line."""


# ---- run folders ----

@dataclass(frozen=True)
class RunPaths:
    """Where one run writes: derived from the flags, never stored on the config or in params.json."""
    model_name: str   # `{task}_{load_path}` or `{task}_{timestamp}`
    model_dir: str    # LOG_DIR/NAME: checkpoints, TensorBoard events, params.json
    sample_dir: str   # SAMPLE_DIR/NAME: sample grids
    output_dir: str   # OUTPUT_DIR/NAME: test mode's refined images


def model_name(config):
    """`{task}_{load_path}` when resuming (load_path may be a path), else `{task}_{timestamp}`.

    An exported refiner (a `.keras` file or a SavedModel folder) is named after itself, or after its
    run's folder when it has the name a run gives it (`refiner.keras`, `refiner_saved_model`).
    """
    if config.load_path:
        path = Path(config.load_path.rstrip("/\\"))
        name = path.name
        if name.endswith(".keras") or (path / "saved_model.pb").is_file():
            name = path.parent.name if path.stem in ("refiner", "refiner_saved_model") else path.stem
        return name if name.startswith(config.task) else f"{config.task}_{name}"
    return f"{config.task}_{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"


def run_paths(config):
    """The run's folders; --load_path may name the run folder itself rather than a name under LOG_DIR."""
    name = model_name(config)
    model_dir = os.path.join(config.log_dir, name)
    if config.load_path and os.path.isdir(config.load_path) and not os.path.isdir(model_dir):
        model_dir = config.load_path
    return RunPaths(name, model_dir, os.path.join(config.sample_dir, name), os.path.join(config.output_dir, name))


def make_run_folders(config, paths, chief=True):
    """Create the folders this mode writes to: training both (only the chief of a cluster), refining the output."""
    if config.is_train and not chief:
        folders = ()
    elif config.is_train:
        folders = (paths.model_dir, paths.sample_dir)
    else:
        folders = (paths.output_dir,) if config.task == "generative" else ()
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create folder {folder}: {error.strerror}") from None


def save_params(config, paths):
    """Write the flags (and only the flags), sorted and indented, to MODEL_DIR/params.json."""
    flags = {flag: value for flag, value in vars(config).items() if flag != "given_flags"}
    write_json(os.path.join(paths.model_dir, "params.json"), flags, sort_keys=True)


def load_params(model_dir):
    """The flags a run was started with (its params.json), or {} where there is none to read."""
    try:
        with open(os.path.join(model_dir, "params.json"), "rb") as handle:
            params = json.load(handle)
    except (OSError, ValueError):
        return {}
    return params if isinstance(params, dict) else {}


def write_json(path, values, sort_keys=False):
    """values as indented JSON at path, atomically."""
    text = json.dumps(values, indent=4, sort_keys=sort_keys)
    atomic_write(path, lambda handle: handle.write(text.encode()))


# ---- files ----

def atomic_write(path, write, to_path=False):
    """Call write(binary handle) on a hidden temporary file beside path, then rename it to path.

    to_path: write(temporary path) instead, for writers that need a name (a Keras file, a SavedModel
    folder); a folder replaces the previous one by two renames, so a crash in between leaves the
    previous folder complete under a hidden name, never a half-written one. A crash or a full disk
    never leaves a half-written output under the final name. Temporary names start with a dot, so
    folder scans that skip hidden files never take them for data.
    """
    folder = os.path.dirname(os.path.abspath(path))
    # Named before it exists, so a signal that ends the process right after the file is created
    # (a pool's terminate) still finds the name to clean up; mkstemp would not have returned it yet.
    temporary = os.path.join(folder, f".tmp-{uuid.uuid4().hex[:12]}{os.path.splitext(path)[1]}")
    try:
        if to_path:
            write(temporary)
        else:
            try:
                handle = open(temporary, "xb")
            except OSError as error:
                raise OutputError(f"cannot write in {folder}: {error.strerror}") from None
            with handle:
                write(handle)
        _replace(temporary, path)
    except OutputError:
        _remove_quietly(temporary)
        raise
    except OSError as error:
        _remove_quietly(temporary)
        raise OutputError(f"cannot write {path}: {error.strerror}") from None
    except BaseException:
        _remove_quietly(temporary)
        raise


def _replace(temporary, path):
    """Rename temporary to path; an existing folder is moved aside first and removed after."""
    if not (os.path.isdir(temporary) and os.path.isdir(path)):
        os.replace(temporary, path)
        return
    previous = f"{temporary}.previous"
    os.replace(path, previous)
    os.replace(temporary, path)
    shutil.rmtree(previous, ignore_errors=True)


def _remove_quietly(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        os.remove(path)
    except OSError:
        pass


# ---- images ----

def normalize(images):
    """uint8 pixels [0, 255] -> float [-1, 1] (works on numpy arrays and tensors)."""
    return images / 127.5 - 1.0


def denormalize(images):
    """float [-1, 1] -> uint8 [0, 255], clipped: the explicit inverse of normalize."""
    pixels = np.rint((np.asarray(images, dtype=np.float32) + 1.0) * 127.5)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def save_image(pixels, path, compress_level=6, text=None):
    """Write a uint8 (H, W) or (H, W, 1|3) array (or a PIL image) as a PNG, atomically; text: {key: value} chunks."""
    if isinstance(pixels, Image.Image):
        image = pixels
    else:
        pixels = np.asarray(pixels, dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    atomic_write(path, lambda handle: image.save(handle, format="PNG", compress_level=compress_level, pnginfo=info))


def img_tile(images, rows, cols, border=1):
    """Tile (N, H, W, C) uint8 images into a rows x cols grid with a `border`-pixel white border."""
    images = np.asarray(images, dtype=np.uint8)
    count, height, width, channels = images.shape
    grid = np.full((rows * (height + border) + border, cols * (width + border) + border, channels), 255, np.uint8)
    for index in range(min(count, rows * cols)):
        top = border + (index // cols) * (height + border)
        left = border + (index % cols) * (width + border)
        grid[top:top + height, left:left + width] = images[index]
    return grid


# ---- the machine ----

def gpu_memory_mb():
    """Total memory of each NVIDIA GPU in MiB, from nvidia-smi; [] when it cannot tell."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10, check=True)
        return [int(line) for line in result.stdout.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


CPU_BF16_VARIABLE = "SIMGAN_CPU_BF16"  # 1 or 0: what --mixed_precision=auto takes the CPU to have


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """True if the CPU computes bfloat16 natively (AMX or AVX512-BF16); False when it cannot tell.

    SIMGAN_CPU_BF16=1 (or 0) overrides what the CPU says: the test suite runs as on the other kind of CPU.
    """
    forced = os.environ.get(CPU_BF16_VARIABLE, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
