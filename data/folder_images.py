"""The files of a folder tree that are images, and each one decoded to the network's input: Pillow and numpy only.

Any file Pillow opens is an image (PNG, JPEG, BMP, TIFF, WebP, GIF's first frame, ...); every other file,
and every image that cannot be used, is given a reason instead, which the caller counts. The work here
runs in worker processes (data/folder_data.py), so this module imports no TensorFlow.
"""
import os
import warnings

import numpy as np
from PIL import Image

from data.unityeyes import natural_key

# Pillow refuses images over twice its own limit mid-open with an exception of its own and warns over it;
# we check the header's size first, so a 20000x20000 file is one counted skip, never a 1.2 GB decode.
MAX_PIXELS = 8192 * 8192
MIN_SIDE = 8  # smaller images carry no texture a refiner could learn from
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
COLOUR_LEVELS = 3  # an RGB image is colour when a channel differs from another by more than this somewhere

UNREADABLE = "not an image Pillow can read, or damaged"
TOO_LARGE = f"over {MAX_PIXELS // 1_000_000} megapixels (decompression bomb guard)"
TOO_SMALL = f"under {MIN_SIDE} pixels a side"
LINK_LOOP = "a folder link that leads back into the tree"


def walk_files(root):
    """(relative posix paths in natural order, {reason: [relative path, ...]}) of the files under root.

    Follows links to folders, but never into a folder it is already inside or has already read (a link
    loop would otherwise never end); hidden files and folders (a leading dot: caches, staging) are left out.
    """
    files, skipped, seen = [], {}, set()

    def visit(folder, relative):
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in seen:
            skipped.setdefault(LINK_LOOP, []).append(relative or ".")
            return
        seen.add((status.st_dev, status.st_ino))
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda entry: natural_key(entry.name)):
                if entry.name.startswith("."):
                    continue
                path = f"{relative}/{entry.name}" if relative else entry.name
                try:
                    is_folder = entry.is_dir()
                except OSError:
                    is_folder = False
                if is_folder:
                    visit(entry.path, path)
                else:
                    files.append(path)

    visit(root, "")
    return files, skipped


def file_stamp(path):
    """(size, modification time in ns): what says a file is the one decoded before; None when it is gone."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def read_header(path):
    """(height, width, mode) of an image from its header alone, or a reason string when it cannot be used."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
    except Image.DecompressionBombError:
        return TOO_LARGE
    except (OSError, ValueError, SyntaxError, EOFError):
        return UNREADABLE
    if width * height > MAX_PIXELS:
        return TOO_LARGE
    if min(width, height) < MIN_SIDE:
        return TOO_SMALL
    return height, width, mode


def is_colour(path, mode):
    """True if the image's pixels hold colour: a colour mode whose channels differ (grey saved as RGB is grey)."""
    if mode in GREY_MODES:
        return False
    pixels = decode(path, 3)
    spread = np.max(pixels, axis=-1).astype(np.int16) - np.min(pixels, axis=-1)
    return bool(np.mean(spread > COLOUR_LEVELS) > 0.01)


def decode(path, channels):
    """uint8 (H, W, channels) pixels of the image at path: 16-bit grey scaled to 8 bits, alpha dropped,
    palettes expanded, grey repeated into RGB or colour averaged to grey (ITU-R 601 luma, as Pillow's 'L')."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
                pixels = np.asarray(image, np.float64)
                scale = 255.0 / 65535.0 if image.mode != "F" else 1.0
                grey = np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
                image = Image.fromarray(grey, "L")
            image = image.convert("RGB" if channels == 3 else "L")
            pixels = np.asarray(image, np.uint8)
    return pixels.reshape(*pixels.shape[:2], channels)


def crop_to_aspect(pixels, height, width):
    """The largest centred box of pixels with the aspect ratio height:width (keras' crop_to_aspect_ratio)."""
    rows, cols = pixels.shape[:2]
    keep_rows, keep_cols = min(rows, round(cols * height / width)), min(cols, round(rows * width / height))
    top, left = (rows - keep_rows) // 2, (cols - keep_cols) // 2
    return pixels[top:top + keep_rows, left:left + keep_cols]


def resize_as_original(pixels, height, width):
    """uint8 (H, W, C) -> uint8 (height, width, C), as TF 0.12's bilinear resize (no half-pixel centres, no
    antialiasing: data/pipelines.resize_as_original), in float32 and rounded to the nearest level."""
    rows, cols = pixels.shape[:2]
    if (rows, cols) == (height, width):
        return pixels

    def axis(size, new_size):
        position = np.arange(new_size, dtype=np.float32) * np.float32(size / new_size)
        lower = np.floor(position).astype(np.int64)
        return lower, np.minimum(lower + 1, size - 1), (position - lower).astype(np.float32)

    top, bottom, down = axis(rows, height)
    left, right, across = axis(cols, width)
    image = pixels.astype(np.float32)
    upper = image[top][:, left] + (image[top][:, right] - image[top][:, left]) * across[None, :, None]
    lower = image[bottom][:, left] + (image[bottom][:, right] - image[bottom][:, left]) * across[None, :, None]
    resized = upper + (lower - upper) * down[:, None, None]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def input_row(path, shape, crop):
    """The image at path as a uint8 row of shape (H, W, C), or a reason string when it cannot be used.

    crop: cut the largest centred box of the input's aspect ratio first; else the image is stretched.
    """
    height, width, channels = shape
    header = read_header(path)
    if isinstance(header, str):
        return header
    try:
        pixels = decode(path, channels)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return UNREADABLE
    if crop:
        pixels = crop_to_aspect(pixels, height, width)
    return resize_as_original(pixels, height, width)
