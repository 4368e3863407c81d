"""Hand data: NYU depth frames cropped around the hand once, cached on disk, and handed to each task.

`load_hand_data` reads DATA_DIR/hand/{train,test}/ in NYU's layout (data/nyu.py), or makes the
bundled sample (data/hand_sample.py) when that folder is missing and the flags name the default
one. Each frame is cropped around its hand: a square box around camera 1's joint (u, v) positions
with a margin, and a depth slab around the hand's median joint depth; depth outside the slab, the
sensor's holes and the synthetic renders' empty background all become one value (far).

The crops, at the network's input size, are cached beside the data as `{split}_crops_{H}x{W}_synthetic.npy`
and `..._real.npy`, written as they are made, then `..._labels.npz` (joints, frames, what they were made
from), whose presence marks a complete cache. Runs read them a batch at a time (data/npy_file.py): NYU's
72757 training crops at 224x224 are 3.6 GB a kind. Earlier versions' `{split}_crops_{H}x{W}.npz` is converted once.

The refiner trains on the training split's synthetic renders and real frames as two unlabelled sets;
the joint positions are used only to place the crops (and, for the pose estimator, as its labels
and to score it on the real test frames).
"""
import collections
import contextlib
import functools
import os
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import nyu
from data.data_set import DataSet, EstimationSets, LabelledHoldOut, held_out_indices
from data.hand_sample import is_complete_hand_sample, is_hand_sample, write_hand_sample
from data.npy_file import RowSubset, npz_member_rows, read_rows, write_rows, write_temporary_rows
from data.pipelines import array_batches, rows_on_disk, to_network_input
from data.reports import DataError, report_skipped
from data.sample_staging import use_bundled_sample
from utils import atomic_write, denormalize
from worker_processes import default_workers

SAMPLE_HAND_DIR = Path(__file__).resolve().parent / "sample" / "hand"  # the bundled sample, apart from real data
BOX_MARGIN = 1.3       # the crop's side: the joints' larger extent times this (fingertip joints lie inside the skin)
HALF_SLAB_MM = 150     # depth kept around the hand's median joint depth, on either side
# Every pixel outside the slab, and every hole: the farthest value, but not 255. 255 is +1 in [-1, 1],
# the refiner's tanh asymptote: the L1 pull toward it never ends and saturates the whole output
# (measured on the sample: every refined pixel at 1.0 within 10 pre-training steps). 247 is 0.94.
BACKGROUND = 247
CACHE_VERSION = 3      # 3: a .npy of each kind and a labels .npz; 2: one .npz of everything (converted once)
OLD_CACHE_VERSION = 2
KINDS = {"synthetic": nyu.synthetic_depth_name, "real": nyu.depth_name}
CHUNK = 256            # crops in memory at a time while a cache is written: 12 MB at 224x224


@dataclass
class DepthCrops:
    """One kind of frame of one split, cropped: images with the evaluation joints in crop pixels."""
    images: object       # (N, H, W) uint8, an NpyRows on disk (or a numpy array): 0 nearest .. 246, 247 background
    joints: np.ndarray   # (N, 14, 2) float32: (u, v) of nyu.EVALUATION_JOINTS, in crop pixels
    frames: np.ndarray   # (N,) int32: NYU frame numbers (from 1)

    def __len__(self):
        return len(self.images)


@dataclass
class HandData(DataSet):
    """The crops a task uses: the training split's renders and real frames; the test split's real frames."""
    folder: str                # DATA_DIR/hand, or the bundled sample's folder
    is_sample: bool
    synthetic: DepthCrops      # train/synthdepth_1_*: what the refiner refines
    real: DepthCrops           # train/depth_1_*: what refined images should look like (labels unused)
    test: DepthCrops = None    # test/depth_1_*: the pose estimator's real test set (estimation only)
    training_estimator: bool = False  # the estimation task trains on the synthetic crops

    @property
    def real_images(self):
        return self.real.images

    @property
    def synthetic_dir(self):
        return os.path.join(self.folder, "train")

    @property
    def synthetic_names(self):
        """NYU's file names of the synthetic frames."""
        return [nyu.synthetic_depth_name(frame) for frame in self.synthetic.frames]

    def synthetic_batches(self, input_shape, batch_size, seed, shard=(1, 0)):
        return array_batches(self.synthetic.images, input_shape, batch_size, seed, shard=shard)

    def named_synthetic_batches(self, names, input_shape, batch_size):
        every_name, wanted = self.synthetic_names, set(names)
        kept = [index for index, name in enumerate(every_name) if name in wanted]
        return array_batches(RowSubset(self.synthetic.images, kept), input_shape, batch_size,  # no copy of the rows
                             names=np.array([every_name[index].encode() for index in kept], dtype=object))

    def test_images(self, input_shape, count):
        return to_network_input(self.synthetic.images[np.arange(min(count, len(self.synthetic)))], input_shape)

    def hold_out(self, count, input_shape, seed):
        return tuple(np.asarray(to_network_input(self._take_out(kind, count, kind_seed).images, input_shape))
                     for kind, kind_seed in (("synthetic", seed), ("real", seed + 1)))

    def hold_out_labelled(self, synthetic_count, real_count, input_shape, seed):
        held_out = []
        for kind, count, kind_seed in (("synthetic", synthetic_count, seed), ("real", real_count, seed + 1)):
            crops = self._take_out(kind, count, kind_seed)
            held_out += [denormalize(to_network_input(crops.images, input_shape)), crops.joints]
        return LabelledHoldOut(*held_out)

    def _take_out(self, kind, count, seed):
        """count crops of kind ("synthetic" or "real") chosen with seed, in memory, taken out of the kind's crops."""
        crops = getattr(self, kind)
        held, kept = held_out_indices(len(crops), count, seed)
        setattr(self, kind, DepthCrops(RowSubset(crops.images, kept), crops.joints[kept], crops.frames[kept]))
        return DepthCrops(crops.images[held], crops.joints[held], crops.frames[held])

    def label_positions(self, pixels):
        """The hand's centre: the mean position of the pixels nearer than the background."""
        depth = np.asarray(pixels, np.float32)
        hand = (depth.mean(axis=-1) if depth.ndim == 4 else depth) < BACKGROUND
        rows, cols = np.mgrid[:hand.shape[1], :hand.shape[2]]
        mass = np.maximum(hand.sum(axis=(1, 2)), 1)
        return np.stack([(hand * cols).sum(axis=(1, 2)) / mass, (hand * rows).sum(axis=(1, 2)) / mass], axis=1)

    @property
    def estimation_sizes(self):
        return (len(self.synthetic), None) if self.training_estimator else None  # no validation split

    def estimation_sets(self, input_shape, batch_size, refine=None):
        """The synthetic crops with their joints (refined once, batch_size at a time, into a temporary file, when
        refine is given); the real test crops with theirs."""
        training = self.synthetic.images
        if refine is not None:
            training = refine_crops(training, input_shape, batch_size, refine, self.folder)
        test = self.test if self.test is not None else DepthCrops(
            np.zeros((0, *input_shape[:2]), np.uint8), np.zeros((0, len(nyu.EVALUATION_JOINTS), 2), np.float32),
            np.zeros(0, np.int32))
        print(f"[*] {len(training)} {'refined' if refine else 'synthetic'} hand crops to train on; "
              f"{len(test)} real test crops to evaluate on")
        return EstimationSets((training, self.synthetic.joints), None, (test.images, test.joints), tuple(input_shape),
                              refine is not None, dict(is_sample=self.is_sample, joints=len(nyu.EVALUATION_JOINTS)))


def refine_crops(images, input_shape, batch_size, refine, folder):
    """uint8 crops (N, H, W) refined batch by batch into a temporary file, quantised as test mode's PNGs are."""
    return rows_on_disk(lambda: array_batches(images, input_shape, batch_size), len(images), batch_size,
                        tuple(input_shape[:2]), folder, refine, "Refine training crops")


def load_hand_data(config):
    """Find (or make) the hand data, crop what is not cached yet; print what was left out."""
    hand_dir = os.path.join(config.data_dir, "hand")
    if not os.path.isdir(os.path.join(hand_dir, "train")) and config.data_dir == "data":
        hand_dir = str(SAMPLE_HAND_DIR)  # its own folder: never mixed with NYU's
        use_bundled_sample(hand_dir, is_complete_hand_sample(hand_dir),
                           lambda folder: write_hand_sample(folder, seed=config.random_seed),
                           f"NYU hand data in {os.path.join(config.data_dir, 'hand')}", "NYU's frames",
                           "The hand experiment")
    size = (config.input_height, config.input_width)
    synthetic, real = load_split(hand_dir, "train", size)
    test = None
    if config.task == "estimation":
        _, test = load_split(hand_dir, "test", size, synthetic=False)
    return HandData(hand_dir, is_hand_sample(os.path.join(hand_dir, "train")), synthetic, real, test,
                    training_estimator=config.is_train and config.task == "estimation")


# ---- the crop cache ----

def cache_files(hand_dir, split, size):
    """{kind: its images' .npy, "labels": the .npz written last, "old": CACHE_VERSION 2's single .npz}."""
    stem = os.path.join(hand_dir, f"{split}_crops_{size[0]}x{size[1]}")
    return {**{kind: f"{stem}_{kind}.npy" for kind in KINDS}, "labels": f"{stem}_labels.npz", "old": f"{stem}.npz"}


def load_split(hand_dir, split, size, synthetic=True):
    """(synthetic crops or None, real crops) of hand_dir/split at size (H, W), from the cache when it is current."""
    folder = os.path.join(hand_dir, split)
    joint_file = os.path.join(folder, nyu.JOINT_FILE)
    if not os.path.isfile(joint_file):
        raise DataError(f"no NYU {split} split: {joint_file} is missing (expected DATA_DIR/hand/{split}/ with "
                        f"joint_data.mat and depth_1_*.png, synthdepth_1_*.png)")
    cache = cache_files(hand_dir, split, size)
    stamp = _stamp(joint_file)
    crops = _read_cache(cache, stamp, size)
    if crops is None and os.path.exists(cache["old"]):
        crops = _convert_old_cache(cache, stamp, size)
    if crops is None:
        crops = _crop_split(folder, joint_file, size, _CropStore(cache, stamp))
    if os.path.exists(cache["labels"]):
        _remove(cache["old"])  # superseded: converted, or stale or damaged and made again
    return (crops["synthetic"] if synthetic else None), crops["real"]


def _stamp(path):
    """What says a cache was made from this joint_data.mat: its size and modification time."""
    status = os.stat(path)
    return np.array([status.st_size, status.st_mtime_ns, CACHE_VERSION], np.int64)


def _read_cache(cache, stamp, size):
    """The cached crops (images on disk), or None when there are none, they are of other data or do not read."""
    if not os.path.exists(cache["labels"]):
        return None
    try:
        labels = _read_labels(cache["labels"], stamp)
        if labels is None:
            return None  # made from another joint_data.mat
        return {kind: DepthCrops(_cached_images(cache[kind], (len(frames), *size)), joints, frames)
                for kind, (joints, frames) in labels.items()}
    except ValueError as error:  # damaged, truncated, missing
        print(f"[!] Making the hand crops again: {error}")
        return None


def _cached_images(path, shape):
    """The NpyRows of a cached .npy; ValueError naming it when it does not read or holds other rows."""
    try:
        images = read_rows(path)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if images.shape != shape or images.dtype != np.uint8:
        raise ValueError(f"{path} holds {images.dtype} rows {images.shape}, not uint8 {shape}")
    return images


def _read_labels(path, stamp):
    """{kind: (joints, frames)} of a labels file (or an old cache) made with stamp, else None; ValueError if damaged."""
    try:
        with np.load(path) as arrays:  # an .npz reads its members on request: the labels, not the images
            if not np.array_equal(arrays["stamp"], stamp):
                return None
            return {kind: (arrays[f"{kind}_joints"], arrays[f"{kind}_frames"]) for kind in KINDS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} does not read ({error})") from None


def _remove(path):
    with contextlib.suppress(OSError):  # gone already, or a read-only folder: nothing to do
        os.remove(path)


class _CropStore:
    """Where one split's crops are written: its cache; a temporary file when that cannot be written; memory last."""

    def __init__(self, cache, stamp):
        self.cache, self.stamp, self.fallback = cache, stamp, None  # fallback: None, "temporary", "memory"
        _remove(cache["labels"])  # until new labels are written, the cache is incomplete

    def images(self, kind, make_batches, count, size):
        """The rows make_batches() yields, on disk (an NpyRows) where possible; a retry calls make_batches again."""
        temporary = tempfile.gettempdir()
        if self.fallback is None:
            try:
                write_rows(self.cache[kind], size, np.uint8, make_batches())
                return read_rows(self.cache[kind])
            except OSError as error:  # a read-only folder, a full disk: training goes on, uncached
                self.fallback = "temporary"
                print(f"[!] Cannot write the hand crop cache {self.cache[kind]} ({error}): the crops go to "
                      f"temporary files in {temporary}, made again next run")
        if self.fallback == "temporary":
            try:
                return write_temporary_rows(temporary, size, np.uint8, make_batches())
            except OSError as error:
                self.fallback = "memory"
                print(f"[!] Cannot write in {temporary} either ({error}): keeping the hand crops in memory "
                      f"(up to {count * size[0] * size[1] / 2 ** 20:.0f} MB a kind)")
        return _rows_in_memory(make_batches(), count, size)

    def finish(self, crops):
        """Write the labels, last, when the crops went into the cache: it is complete."""
        if self.fallback is not None:
            return
        arrays = {f"{kind}_{labels}": getattr(crop, labels) for kind, crop in crops.items()
                  for labels in ("joints", "frames")}
        try:
            atomic_write(self.cache["labels"], lambda handle: np.savez(handle, stamp=self.stamp, **arrays))
        except OSError as error:
            print(f"[!] Cannot cache the hand crops ({error}); they will be made again next run")


def _rows_in_memory(batches, count, size):
    """The last resort: the rows in one array of at most count rows, filled in place (no second copy)."""
    images = np.empty((count, *size), np.uint8)
    filled = 0
    for rows in batches:
        images[filled:filled + len(rows)] = rows
        filled += len(rows)
    return images[:filled]


# ---- converting a cache of CACHE_VERSION 2 ----

class _Unreadable(Exception):
    """An old cache that does not read: not an OSError, so the writer does not take it for a full disk."""


def _convert_old_cache(cache, stamp, size):
    """The crops of an old single-file cache, copied a chunk at a time into .npy files; None if stale or damaged."""
    try:
        labels = _read_labels(cache["old"], np.array([*stamp[:-1], OLD_CACHE_VERSION], np.int64))
    except ValueError as error:
        print(f"[!] Cannot convert an old hand crop cache: {error}; cropping the frames again")
        return None
    if labels is None:
        return None  # of another joint_data.mat: the frames are cropped again, and it is removed
    print(f"[*] Converting the hand crop cache {cache['old']} to .npy files, once (the old file is removed after)")
    store, crops = _CropStore(cache, stamp), {}
    try:
        for kind, (joints, frames) in labels.items():
            rows = functools.partial(_old_rows, cache["old"], kind, len(frames), size)
            crops[kind] = DepthCrops(store.images(kind, rows, len(frames), size), joints, frames)
    except _Unreadable as error:
        print(f"[!] Cannot convert {cache['old']} ({error}): cropping the frames again")
        return None
    store.finish(crops)
    return crops


def _old_rows(path, kind, count, size):
    """The uint8 images of kind in an old cache, CHUNK rows at a time, streamed from the .npz's zip member."""
    try:
        shape, dtype, chunks = npz_member_rows(path, f"{kind}_images", CHUNK, f"Convert {kind} hand crops")
        if shape != (count, *size) or dtype != np.uint8:
            raise ValueError(f"{kind}_images: {dtype} {shape}, not uint8 {(count, *size)}")
        yield from chunks
    except ValueError as error:
        raise _Unreadable(str(error)) from None


# ---- cropping the frames ----

def _crop_split(folder, joint_file, size, store):
    """Crop every frame of a split folder, both kinds, into store; a missing or undecodable file is skipped."""
    try:
        _, joint_uvd, _ = nyu.read_joint_data(joint_file)
    except (OSError, ValueError) as error:
        raise DataError(str(error).splitlines()[0]) from None
    crops, skipped = {}, {}
    for kind, name in KINDS.items():
        frames = _FrameCrops(folder, name, joint_uvd, size, kind)
        crops[kind] = DepthCrops(store.images(kind, frames.batches, len(joint_uvd), size), *frames.labels())
        skipped.update(frames.skipped)
    report_skipped(skipped, folder)
    for kind, crop in crops.items():
        if not len(crop):
            raise DataError(f"no usable {kind} depth frame in {folder} ({len(joint_uvd)} frames in "
                            f"{nyu.JOINT_FILE}, all skipped)")
    store.finish(crops)
    return crops


class _FrameCrops:
    """The frames name(frame) of a split folder, cropped in order as batches; their labels collected on the way."""

    def __init__(self, folder, name, joint_uvd, size, kind):
        self.folder, self.name, self.joint_uvd, self.size, self.kind = folder, name, joint_uvd, size, kind

    def crop(self, index):
        """(index, (crop, joints) or None, why the frame was skipped or None)."""
        path = os.path.join(self.folder, self.name(index + 1))
        if not os.path.exists(path):
            return index, None, "missing"
        try:
            depth = nyu.read_depth(path)
        except (OSError, ValueError):
            return index, None, "unreadable or not an NYU depth PNG"
        return index, crop_hand(depth, self.joint_uvd[index], self.size), None

    def batches(self):
        """uint8 crops, CHUNK at a time, as they are made: never all of them in memory. Each pass starts afresh."""
        self.joints = np.empty((len(self.joint_uvd), len(nyu.EVALUATION_JOINTS), 2), np.float32)
        self.frames, self.skipped, chunk = [], {}, []
        with ThreadPoolExecutor(default_workers()) as pool, \
                contextlib.closing(_in_order(pool, self.crop, range(len(self.joint_uvd)), CHUNK)) as results:
            for index, result, problem in tqdm(results, total=len(self.joint_uvd),
                                               desc=f"Crop {self.kind} hands of {os.path.basename(self.folder)}"):
                if problem:
                    self.skipped.setdefault(f"{self.kind}: {problem}", []).append(self.name(index + 1))
                    continue
                chunk.append(result[0])
                self.joints[len(self.frames)] = result[1]
                self.frames.append(index + 1)
                if len(chunk) == CHUNK:
                    yield np.stack(chunk)
                    chunk = []
        if chunk:
            yield np.stack(chunk)

    def labels(self):
        """(joints (N, 14, 2) float32, frames (N,) int32) of the last pass's crops."""
        return self.joints[:len(self.frames)].copy(), np.array(self.frames, np.int32)


def _in_order(pool, function, items, ahead):
    """pool.map's results, in order, with at most `ahead` tasks submitted and not yet taken: bounded memory."""
    pending = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:  # the consumer stopped (a write failed): drop what has not started
            future.cancel()


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
