"""Hand data: NYU depth frames cropped around the hand once, cached, and handed to each task.

`load_hand_data` reads DATA_DIR/hand/{train,test}/ in NYU's layout (data/nyu.py), or makes the
bundled sample (data/hand_sample.py) when that folder is missing and the flags name the default
one. Each frame is cropped around its hand: a square box around camera 1's joint (u, v) positions
with a margin, and a depth slab around the hand's median joint depth; depth outside the slab, the
sensor's holes and the synthetic renders' empty background all become one value (far). The crops,
at the network's input size, are cached beside the data as `{split}_crops_{H}x{W}.npz`, so later
runs read one file, not tens of thousands of PNGs.

The refiner trains on the training split's synthetic renders and real frames as two unlabelled sets;
the joint positions are used only to place the crops (and, for the pose estimator, as its labels
and to score it on the real test frames).
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import nyu
from data.hand_sample import ensure_hand_sample, is_hand_sample
from data.pipelines import named_images_dataset, real_dataset, to_network_input
from data.reports import DataError, report_skipped
from utils import OutputError, atomic_write, default_workers, denormalize

SAMPLE_HAND_DIR = Path(__file__).resolve().parent / "sample" / "hand"  # the bundled sample, apart from real data
BOX_MARGIN = 1.3       # the crop's side: the joints' larger extent times this (fingertip joints lie inside the skin)
HALF_SLAB_MM = 150     # depth kept around the hand's median joint depth, on either side
# Every pixel outside the slab, and every hole: the farthest value, but not 255. 255 is +1 in [-1, 1],
# the refiner's tanh asymptote: the L1 pull toward it never ends and saturates the whole output
# (measured on the sample: every refined pixel at 1.0 within 10 pre-training steps). 247 is 0.94.
BACKGROUND = 247
CACHE_VERSION = 2


@dataclass
class DepthCrops:
    """One kind of frame of one split, cropped: images with the evaluation joints in crop pixels."""
    images: np.ndarray   # (N, H, W) uint8: 0 nearest .. 246 farthest in the slab, 247 background
    joints: np.ndarray   # (N, 14, 2) float32: (u, v) of nyu.EVALUATION_JOINTS, in crop pixels
    frames: np.ndarray   # (N,) int32: NYU frame numbers (from 1)

    def __len__(self):
        return len(self.images)


@dataclass
class HandData:
    """The crops a task uses: the training split's renders and real frames; the test split's real frames."""
    folder: str                # DATA_DIR/hand, or the bundled sample's folder
    is_sample: bool            # the bundled sample, never mixed with real data
    synthetic: DepthCrops      # train/synthdepth_1_*: what the refiner refines
    real: DepthCrops           # train/depth_1_*: what refined images should look like (labels unused)
    test: DepthCrops = None    # test/depth_1_*: the pose estimator's real test set (estimation only)
    split = None               # the gaze estimator's file split; the hand estimator has none

    @property
    def num_synthetic(self):
        return len(self.synthetic)

    @property
    def real_images(self):
        return self.real.images

    def synthetic_batches(self, input_shape, batch_size, seed):
        """Synthetic crops in [-1, 1]: shuffled with seed, reshuffled each epoch, fixed-size batches."""
        return real_dataset(self.synthetic.images, input_shape, batch_size, seed)

    def real_batches(self, input_shape, batch_size, seed):
        """Real crops in [-1, 1], as synthetic_batches."""
        return real_dataset(self.real.images, input_shape, batch_size, seed)

    @property
    def synthetic_dir(self):
        return os.path.join(self.folder, "train")

    @property
    def synthetic_names(self):
        """What test mode names each synthetic crop by: its NYU file name."""
        return [nyu.synthetic_depth_name(frame) for frame in self.synthetic.frames]

    def named_synthetic_batches(self, names, input_shape, batch_size):
        """(crops in [-1, 1], names) of the synthetic crops named, in order, once: what test mode refines."""
        kept = np.isin(self.synthetic_names, names)
        return named_images_dataset(self.synthetic.images[kept], np.array(self.synthetic_names)[kept],
                                    input_shape, batch_size)

    def test_images(self, input_shape, count):
        """The first `count` synthetic crops in [-1, 1]: the sample grids' fixed inputs."""
        return to_network_input(self.synthetic.images[:count], input_shape)


def load_hand_data(config):
    """Find (or make) the hand data, crop what is not cached yet; print what was left out."""
    hand_dir = os.path.join(config.data_dir, "hand")
    if not os.path.isdir(os.path.join(hand_dir, "train")) and config.data_dir == "data":
        hand_dir = _prepare_sample(str(SAMPLE_HAND_DIR), config)  # its own folder: never mixed with NYU's
    size = (config.input_height, config.input_width)
    synthetic, real = load_split(hand_dir, "train", size)
    test = None
    if config.task == "estimation":
        _, test = load_split(hand_dir, "test", size, synthetic=False)
    return HandData(hand_dir, is_hand_sample(os.path.join(hand_dir, "train")), synthetic, real, test)


def _prepare_sample(hand_dir, config):
    """Generate the bundled hand sample once; returns its folder."""
    if not os.path.isdir(os.path.join(hand_dir, "train")):
        print(f"[*] No NYU hand data in {os.path.join(config.data_dir, 'hand')}: generating the bundled sample "
              f"in {hand_dir} (once). For real data see README.md, 'The hand experiment'.")
    try:
        ensure_hand_sample(hand_dir, seed=config.random_seed)
    except OSError as error:
        raise OutputError(f"cannot write the bundled hand sample in {hand_dir}: {error.strerror or error}") from None
    print(f"[*] Training on the bundled hand sample in {hand_dir}, not on NYU's frames")
    return hand_dir


def load_split(hand_dir, split, size, synthetic=True):
    """(synthetic crops or None, real crops) of hand_dir/split at size (H, W), from the cache when it is current."""
    folder = os.path.join(hand_dir, split)
    joint_file = os.path.join(folder, nyu.JOINT_FILE)
    if not os.path.isfile(joint_file):
        raise DataError(f"no NYU {split} split: {joint_file} is missing (expected DATA_DIR/hand/{split}/ with "
                        f"joint_data.mat and depth_1_*.png, synthdepth_1_*.png)")
    cache = os.path.join(hand_dir, f"{split}_crops_{size[0]}x{size[1]}.npz")
    stamp = _stamp(joint_file)
    cached = _read_cache(cache, stamp, size)
    if cached is None:
        cached = _crop_split(folder, joint_file, size)
        try:
            _write_cache(cache, stamp, cached)
        except OSError as error:
            print(f"[!] Cannot cache the hand crops ({error}); they will be made again next run")
    return (cached["synthetic"] if synthetic else None), cached["real"]


def _stamp(path):
    """What says a cache was made from this joint_data.mat: its size and modification time."""
    status = os.stat(path)
    return np.array([status.st_size, status.st_mtime_ns, CACHE_VERSION], np.int64)


def _read_cache(path, stamp, size):
    """The cached crops, or None when there are none, they are of other data or they do not read."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as arrays:
            if not np.array_equal(arrays["stamp"], stamp):
                return None
            crops = {kind: DepthCrops(arrays[f"{kind}_images"], arrays[f"{kind}_joints"], arrays[f"{kind}_frames"])
                     for kind in ("synthetic", "real")}
    except (OSError, ValueError, KeyError) as error:
        print(f"[!] Rebuilding {path}: {error}")
        return None
    if any(crop.images.shape[1:] != tuple(size) for crop in crops.values()):
        return None
    return crops


def _write_cache(path, stamp, crops):
    arrays = {"stamp": stamp}
    for kind, crop in crops.items():
        arrays.update({f"{kind}_images": crop.images, f"{kind}_joints": crop.joints, f"{kind}_frames": crop.frames})
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _crop_split(folder, joint_file, size):
    """Crop every frame of a split folder, both kinds; a file that is missing or does not decode is skipped."""
    try:
        _, joint_uvd, _ = nyu.read_joint_data(joint_file)
    except (OSError, ValueError) as error:
        raise DataError(str(error).splitlines()[0]) from None
    crops, skipped = {}, {}
    for kind, name in (("synthetic", nyu.synthetic_depth_name), ("real", nyu.depth_name)):
        crops[kind] = _crop_frames(folder, name, joint_uvd, size, skipped, kind)
    report_skipped(skipped, folder)
    for kind, crop in crops.items():
        if not len(crop):
            raise DataError(f"no usable {kind} depth frame in {folder} ({len(joint_uvd)} frames in "
                            f"{nyu.JOINT_FILE}, all skipped)")
    return crops


def _crop_frames(folder, name, joint_uvd, size, skipped, kind):
    """DepthCrops of the frames named name(frame) whose files decode; the others go into skipped by reason."""
    def crop(index):
        path = os.path.join(folder, name(index + 1))
        if not os.path.exists(path):
            return index, None, "missing"
        try:
            depth = nyu.read_depth(path)
        except (OSError, ValueError):
            return index, None, "unreadable or not an NYU depth PNG"
        return index, crop_hand(depth, joint_uvd[index], size), None

    images, joints, frames = [], [], []
    with ThreadPoolExecutor(default_workers()) as pool:  # PNG decoding releases the GIL
        for index, result, problem in tqdm(pool.map(crop, range(len(joint_uvd))), total=len(joint_uvd),
                                           desc=f"Crop {kind} hands of {os.path.basename(folder)}"):
            if problem:
                skipped.setdefault(f"{kind}: {problem}", []).append(name(index + 1))
                continue
            images.append(result[0])
            joints.append(result[1])
            frames.append(index + 1)
    height, width = size
    return DepthCrops(np.array(images, np.uint8).reshape(-1, height, width),
                      np.array(joints, np.float32).reshape(-1, len(nyu.EVALUATION_JOINTS), 2),
                      np.array(frames, np.int32))


def hand_box(uvd):
    """(centre u, centre v, side in pixels, centre depth in mm) of the square crop around one frame's joints."""
    u, v, d = uvd[:, 0], uvd[:, 1], uvd[:, 2]
    side = max(u.max() - u.min(), v.max() - v.min(), 1.0) * BOX_MARGIN
    return (u.min() + u.max()) / 2, (v.min() + v.max()) / 2, side, float(np.median(d))


def crop_hand(depth, uvd, size):
    """(uint8 crop of size (H, W), the evaluation joints' (u, v) in crop pixels) of one depth frame in mm.

    Nearest-neighbour sampling: interpolating depth would invent surfaces between the hand and the wall.
    Coordinates, as NYU's (u, v), put pixel centres at whole numbers, in the frame and in the crop.
    """
    centre_u, centre_v, side, centre_d = hand_box(uvd)
    height, width = size
    rows = np.rint(centre_v - side / 2 + (np.arange(height) + 0.5) * side / height).astype(np.int64)
    cols = np.rint(centre_u - side / 2 + (np.arange(width) + 0.5) * side / width).astype(np.int64)
    inside_rows = (rows >= 0) & (rows < depth.shape[0])
    inside_cols = (cols >= 0) & (cols < depth.shape[1])
    patch = np.zeros((height, width), np.float32)  # outside the frame: no depth, as a hole
    patch[np.ix_(inside_rows, inside_cols)] = depth[np.ix_(rows[inside_rows], cols[inside_cols])]
    near = centre_d - HALF_SLAB_MM
    in_slab = (patch > 0) & (patch >= near) & (patch <= centre_d + HALF_SLAB_MM)
    scaled = np.rint((patch - near) / (2 * HALF_SLAB_MM) * (BACKGROUND - 1))
    crop = np.where(in_slab, scaled, BACKGROUND).astype(np.uint8)
    joints = uvd[nyu.EVALUATION_JOINTS, :2]
    corner = np.array([centre_u - side / 2, centre_v - side / 2])
    scale = np.array([width / side, height / side])
    return crop, ((joints - corner) * scale - 0.5).astype(np.float32)


# ---- what the pose estimator trains and is tested on ----

@dataclass
class HandSets:
    """uint8 crops with their joints in input pixels, in memory; [-1, 1] floats per batch, on request."""
    training_images: np.ndarray   # (N, H, W) uint8: the synthetic crops, refined when `refined`
    training_joints: np.ndarray   # (N, 14, 2) float32
    test_images: np.ndarray       # (M, H, W) uint8: the real test crops
    test_joints: np.ndarray       # (M, 14, 2) float32
    input_shape: tuple
    refined: bool
    is_sample: bool               # the bundled sample, not NYU's frames


def hand_estimation_sets(data, input_shape, batch_size, refine=None):
    """The estimator's sets; the synthetic crops refined once, in memory, when refine (a refiner) is given."""
    training = data.synthetic.images
    if refine is not None:
        training = refine_crops(training, input_shape, batch_size, refine)
    test = data.test if data.test is not None else DepthCrops(np.zeros((0, *input_shape[:2]), np.uint8),
                                                              np.zeros((0, len(nyu.EVALUATION_JOINTS), 2), np.float32),
                                                              np.zeros(0, np.int32))
    print(f"[*] {len(training)} {'refined' if refine else 'synthetic'} hand crops to train on; "
          f"{len(test)} real test crops to evaluate on")
    return HandSets(training, data.synthetic.joints, test.images, test.joints, tuple(input_shape),
                    refine is not None, data.is_sample)


def refine_crops(images, input_shape, batch_size, refine):
    """uint8 crops refined batch by batch, quantised back to uint8 as test mode's PNGs are."""
    refined = np.empty_like(images)
    for start in tqdm(range(0, len(images), batch_size), desc="Refine training crops"):
        batch = to_network_input(images[start:start + batch_size], input_shape)
        refined[start:start + batch_size] = denormalize(refine(batch))[..., 0]
    return refined
