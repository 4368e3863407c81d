"""Gaze labels: one convention for both data sets, the right eyes mirrored, the held-out split.

Every gaze vector this project handles is in MPIIGaze's normalised camera frame; UnityEyes'
`look_vec` is converted once, here.
"""
import json
import os

import numpy as np
from scipy.ndimage import gaussian_filter

from data import estimation_cache, unityeyes
from data.reports import DataError, summary


def read_look_vec(crop_path):
    """The gaze label `eye_details.look_vec` (x, y, z) of a crop's frame, in Unity's camera frame."""
    json_path = crop_path[: -len(unityeyes.CROP_SUFFIX)] + ".json"
    with open(json_path, "rb") as handle:
        look_vec = json.load(handle)["eye_details"]["look_vec"]
    return np.float32(unityeyes.parse_vector(look_vec)[:3])


def look_vec_to_gaze(look_vec):
    """UnityEyes `look_vec` (..., 3 or 4) -> unit gaze vectors (..., 3) in MPIIGaze's normalised camera frame.

    MPIIGaze's frame: x to the image right, y DOWN, z away from the camera (right-handed), the gaze
    pointing from the eye to the target, so looking into the camera is (0, 0, -1). UnityEyes writes
    `look_vec` in Unity's (left-handed) camera space: x to the image right, y UP, z away from the
    camera, looking into the camera (0, 0, -1) as well. Only y differs: (x, y, z) -> (x, -y, z). Both
    cameras look at the eye, so x needs no flip: a positive x moves the iris to the image right in both
    data sets (on the bundled sample the pupil's column follows look_vec x with r = 0.95 and MPIIGaze's
    gaze x with r = 0.99). UnityEyes' own visualize.py draws look_vec the same way (negating y only).
    """
    vectors = np.asarray(look_vec, np.float64)[..., :3] * np.array([1.0, -1.0, 1.0])
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise ValueError("look_vec must be finite and non-zero")
    return (vectors / norms).astype(np.float32)


def as_left_eyes(images, gaze, right_eye):
    """Mirror the right eyes into left eyes: images flipped left-right, gaze x negated; copies.

    MPIIGaze holds both eyes; UnityEyes renders one, laid out as a left eye (the inner corner on the
    image left). As Zhang et al. do for MPIIGaze, a right eye mirrored about the camera's vertical
    plane is a left eye whose gaze has the opposite x, so one estimator serves both eyes.
    """
    images, gaze, right_eye = np.array(images), np.array(gaze, np.float32), np.asarray(right_eye, bool)
    images[right_eye] = images[right_eye][:, :, ::-1]
    gaze[right_eye, 0] *= -1.0
    return images, gaze


def _gaze_of(json_path):
    """The gaze (3,) in MPIIGaze's frame of a frame's .json; None when it has no usable look_vec."""
    try:
        with open(json_path, "rb") as handle:
            look_vec = json.load(handle)["eye_details"]["look_vec"]
        return look_vec_to_gaze(np.float32(unityeyes.parse_vector(look_vec)[:3]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def label_crops(paths, index_dir=None):
    """(paths, gaze (N, 3) in MPIIGaze's frame) of the crops whose frame has a usable look_vec.

    index_dir: the folder of the crops (all of them), where a labels index (data/estimation_cache.py) keeps
    each .json's label with its size and mtime, so a later start reads only the .json files that changed.
    """
    json_paths = [path[: -len(unityeyes.CROP_SUFFIX)] + ".json" for path in paths]
    if index_dir is None:
        gaze = np.full((len(paths), 3), np.nan, np.float32)
        for row, path in enumerate(json_paths):
            label = _gaze_of(path)
            if label is not None:
                gaze[row] = label
    else:
        gaze = estimation_cache.cached_labels(json_paths, index_dir, _gaze_of)
    usable = np.isfinite(gaze).all(axis=1)
    skipped = [os.path.basename(path) for path, ok in zip(paths, usable) if not ok]
    if skipped:
        summary(f"Skipped {len(skipped)} crops without a usable eye_details.look_vec in their .json", skipped)
    if not usable.any():
        raise DataError(f"no UnityEyes crop with a gaze label (eye_details.look_vec) among {len(paths)}")
    return [path for path, ok in zip(paths, usable) if ok], gaze[usable]


def split_by_file(count, validation_share, seed):
    """(training, validation) index arrays over count files: a seeded share held out, at least one each."""
    order = np.random.default_rng(seed).permutation(count)
    held_out = min(max(1, round(count * validation_share)), count - 1)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def pupil_positions(pixels):
    """(N, 2) (x, y): the darkest spot of each grey eye image (N, H, W[, 1]) after a blur, away from the
    borders (dark eyelashes and shadows lie there): the pupil, a cheap proxy of where the eye looks."""
    images = np.asarray(pixels, np.float32)
    images = images.mean(axis=-1) if images.ndim == 4 else images
    height, width = images.shape[1:]
    top, left = height // 5, width // 6
    middle = gaussian_filter(images, sigma=(0, 1.5, 1.5))[:, top:height - top, left:width - left]
    rows, cols = np.unravel_index(np.argmin(middle.reshape(len(images), -1), axis=1), middle.shape[1:])
    return np.stack([cols + left, rows + top], axis=1).astype(np.float64)
