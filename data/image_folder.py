"""Folders of plain images: eye images (PNG or JPEG, any names, no UnityEyes JSON) for test mode to
refine, and the real samples a training run writes to show what its refiner aims for.

Every image is read once here to make sure it decodes: a file that does not is skipped and counted,
never a failure halfway through the refining.
"""
import os

import numpy as np
from PIL import Image

from data.unityeyes import natural_key
from utils import OutputError, save_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
UNREADABLE = "truncated or unreadable image"
SAME_NAME = "same name as another image, which is refined instead"
NUM_REAL_SAMPLES = 100


def is_image(name):
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def is_plain_image_folder(directory):
    """True if directory holds images but no UnityEyes JSON: plain eye images, not frames to crop."""
    names = os.listdir(directory)
    return any(is_image(name) for name in names) and not any(name.endswith(".json") for name in names)


def readable_images(directory):
    """(paths in natural order of the images that decode, {reason: [file name, ...]} of those left out).

    Refined images are named after their input's stem, so of two inputs with the same stem (a.png,
    a.jpg) only the first is used.
    """
    paths, skipped, stems = [], {}, set()
    for name in sorted((name for name in os.listdir(directory) if is_image(name)), key=natural_key):
        path = os.path.join(directory, name)
        stem = os.path.splitext(name)[0]
        if stem in stems:
            skipped.setdefault(SAME_NAME, []).append(name)
            continue
        try:
            with Image.open(path) as image:
                image.load()  # decodes: a truncated file fails here, not in the pipeline
        except Exception:  # Pillow raises many types for damaged files
            skipped.setdefault(UNREADABLE, []).append(name)
            continue
        stems.add(stem)
        paths.append(path)
    return paths, skipped


def write_real_samples(data, sample_dir, seed):
    """100 random real images of either data set as its folder/SAMPLE_DIR/real_{i}.png, once: what the refiner aims for."""
    folder = os.path.join(data.folder, sample_dir)
    if os.path.exists(os.path.join(folder, "real_0.png")):
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create folder {folder}: {error.strerror}") from None
    count = min(NUM_REAL_SAMPLES, len(data.real_images))
    chosen = np.random.default_rng(seed).choice(len(data.real_images), count, replace=False)
    for i, index in reversed(list(enumerate(chosen))):  # real_0 last: it marks the set complete
        save_image(data.real_images[index], os.path.join(folder, f"real_{i}.png"))
