"""Host helpers: run folders, params.json, atomic file writes, image grids."""
import json
import os
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image


class OutputError(OSError):
    """An output that cannot be written (full disk, no permission); str(e) is one line."""


def model_name(config):
    """`{task}_{load_path}` when resuming (load_path may be a path), else `{task}_{timestamp}`."""
    if config.load_path:
        name = Path(config.load_path.rstrip("/\\")).name
        return name if name.startswith(config.task) else f"{config.task}_{name}"
    return f"{config.task}_{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"


def prepare_dirs(config):
    """Set config.model_name / model_dir / sample_model_dir / output_model_dir; create what this mode writes."""
    config.model_name = model_name(config)
    config.model_dir = os.path.join(config.log_dir, config.model_name)
    config.sample_model_dir = os.path.join(config.sample_dir, config.model_name)
    config.output_model_dir = os.path.join(config.output_dir, config.model_name)
    if config.load_path and os.path.isdir(config.load_path) and not os.path.isdir(config.model_dir):
        config.model_dir = config.load_path  # --load_path given as the run folder itself
    if config.is_train:
        written = (config.model_dir, config.sample_model_dir)
    else:  # refining writes images; evaluating an estimator writes only into its model folder
        written = (config.output_model_dir,) if config.task == "generative" else ()
    for path in written:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create folder {path}: {error.strerror}") from None


def save_config(config):
    """Write every flag, sorted and indented, to MODEL_DIR/params.json."""
    params = {key: value for key, value in vars(config).items()}
    atomic_write(os.path.join(config.model_dir, "params.json"),
                 lambda handle: handle.write(json.dumps(params, indent=4, sort_keys=True).encode()))


def atomic_write(path, write):
    """Call write(binary handle) on a temporary file beside path, then rename it to path.

    A crash or a full disk never leaves a half-written file under the final name.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    except OSError as error:
        raise OutputError(f"cannot write in {folder}: {error.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except OSError as error:
        _remove_quietly(temporary)
        raise OutputError(f"cannot write {path}: {error.strerror}") from None
    except BaseException:
        _remove_quietly(temporary)
        raise


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def save_image(pixels, path):
    """Write a uint8 (H, W) or (H, W, 1|3) array as a PNG, atomically."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    image = Image.fromarray(pixels)
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


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


def gpu_memory_mb():
    """Total memory of each NVIDIA GPU in MiB, from nvidia-smi; [] when it cannot tell."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10, check=True)
        return [int(line) for line in result.stdout.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """True if the CPU computes bfloat16 natively (AMX or AVX512-BF16); False when it cannot tell."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
