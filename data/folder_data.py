"""Any two folders of images (`--data_set=folders`): a simulator's renders and a camera's images, grey or colour.

`load_folder_data` reads `--synthetic_image_dir` and `--real_image_dir` (any depth, any image sizes,
mixed), sets the input the flags left open from the images (`input_size`: the real images' median size,
large photos scaled down; 3 channels when the real images are colour), and decodes each usable image once
into rows at that input (data/folder_cache.py), which training then reads a batch at a time. Test mode
needs only the synthetic folder; its input is the trained refiner's (main.py sets it first).

There are no labels: the estimation task refuses this data set (config.py) and the probes have no label
proxy to watch (`label_positions` gives None).
"""
import os
from dataclasses import dataclass

import numpy as np

from config import HAND_DESIGN_SIDE, MIN_FOLDER_INPUT, ConfigError, network_design, resolve_folder_flags
from data.data_set import DataSet, held_out_indices
from data.folder_cache import cache_dir_of, input_rows, scan_folder
from data.npy_file import RowSubset
from data.pipelines import array_batches, to_network_input
from data.reports import DataError, report_skipped

MAX_AUTO_SIDE = 256  # auto: the real images' median size scaled down to this longer side, keeping its aspect


@dataclass
class FolderData(DataSet):
    """Two folders' usable images as rows at the input size; the synthetic ones named by their path in the tree."""
    synthetic_dir: str
    synthetic_rows: object       # (N, H, W, C) uint8, an NpyRows read by row
    synthetic_paths: list        # relative posix paths, in the rows' order
    real_images: object          # (M, H, W, C) uint8, an NpyRows read by row; empty in test mode
    folder: str                  # the real folder's cache folder (the synthetic one's in test mode)
    is_sample: bool = False

    @property
    def synthetic_names(self):
        return self.synthetic_paths

    def output_name(self, name):
        """The folder tree and the file's stem kept: `renders/a/0001.jpg` -> `renders/a/0001.png`."""
        return os.path.splitext(name)[0] + ".png"

    def synthetic_batches(self, input_shape, batch_size, seed, shard=(1, 0)):
        return array_batches(self.synthetic_rows, input_shape, batch_size, seed, shard=shard)

    def named_synthetic_batches(self, names, input_shape, batch_size):
        wanted = set(names)
        kept = [index for index, path in enumerate(self.synthetic_paths) if path in wanted]
        return array_batches(RowSubset(self.synthetic_rows, kept), input_shape, batch_size,
                             names=np.array([self.synthetic_paths[index].encode() for index in kept], dtype=object))

    def test_images(self, input_shape, count):
        return to_network_input(self.synthetic_rows[np.arange(min(count, len(self.synthetic_rows)))], input_shape)

    def hold_out(self, count, input_shape, seed):
        held, kept = held_out_indices(len(self.synthetic_rows), count, seed)
        synthetic = to_network_input(self.synthetic_rows[held], input_shape)
        self.synthetic_rows = RowSubset(self.synthetic_rows, kept)
        self.synthetic_paths = [self.synthetic_paths[index] for index in kept]
        held, kept = held_out_indices(len(self.real_images), count, seed + 1)
        real = to_network_input(self.real_images[held], input_shape)
        self.real_images = RowSubset(self.real_images, kept)
        return np.asarray(synthetic), np.asarray(real)

    def label_positions(self, pixels):
        """None: plain folders carry no labels, so there is no proxy of one to watch."""
        return None

    @property
    def estimation_sizes(self):
        return None

    def estimation_sets(self, input_shape, batch_size, refine=None):
        raise DataError("--data_set=folders has no labels to train or evaluate an estimator on")


def input_size(real_entries):
    """(height, width, why) from the real images: their median size, scaled down to MAX_AUTO_SIDE on the longer
    side (keeping the aspect ratio) and up to MIN_FOLDER_INPUT on the shorter."""
    heights = np.array([entry[3] for entry in real_entries])
    widths = np.array([entry[4] for entry in real_entries])
    height, width = int(np.median(heights)), int(np.median(widths))
    why = f"the real images' median size {height}x{width}"
    scale = min(1.0, MAX_AUTO_SIDE / max(height, width))
    scale = max(scale, MIN_FOLDER_INPUT / min(height, width))
    if scale != 1.0:
        height, width = max(MIN_FOLDER_INPUT, round(height * scale)), max(MIN_FOLDER_INPUT, round(width * scale))
        why += f", scaled to {height}x{width}" + (f" (at most {MAX_AUTO_SIDE} a side)" if scale < 1 else "")
    return height, width, why


def input_channels(real_entries):
    """(1 or 3, why): 3 when an image of the real folder's colour sample holds colour."""
    told = [entry[6] for entry in real_entries if entry[6] is not None]
    colour = sum(told)
    return (3 if colour else 1), f"{colour} of {len(told)} real images checked hold colour"


def load_folder_data(config):
    """Read the folders, set the input and the defaults the flags left open, decode what is not cached yet."""
    training = config.is_train
    synthetic_dir = _existing_folder(config.synthetic_image_dir, "synthetic_image_dir")
    real_dir = _existing_folder(config.real_image_dir, "real_image_dir") if training else None
    if real_dir is not None:
        _check_apart(synthetic_dir, real_dir)
    synthetic = _listing(synthetic_dir, config.data_dir, "synthetic_image_dir", sample_colour=False)
    real = _listing(real_dir, config.data_dir, "real_image_dir", sample_colour=True) if training else None
    if training:
        height, width, size_why = input_size(real.entries)
        channels, channel_why = input_channels(real.entries)
        chosen = resolve_folder_flags(config, height, width, channels)
        _announce(config, synthetic, real, chosen, size_why, channel_why)
    shape = (config.input_height, config.input_width, config.input_channel)
    synthetic_rows, synthetic_paths = _rows(synthetic, shape, config.crop_to_aspect_ratio, "synthetic")
    if training:
        real_rows, _ = _rows(real, shape, config.crop_to_aspect_ratio, "real")
    else:
        real_rows = np.zeros((0, *shape), np.uint8)
    return FolderData(synthetic_dir, synthetic_rows, synthetic_paths, real_rows,
                      (real or synthetic).cache_dir)


def _existing_folder(folder, flag):
    if not os.path.isdir(folder):
        raise DataError(f"--{flag}={folder}: no such folder")
    return folder


def _check_apart(synthetic_dir, real_dir):
    """The two folders must be two: the same one twice, or one inside the other, would train on itself."""
    synthetic, real = os.path.realpath(synthetic_dir), os.path.realpath(real_dir)
    if synthetic == real:
        raise ConfigError(f"--synthetic_image_dir and --real_image_dir are the same folder, {synthetic}")
    for inner, outer in ((synthetic, real), (real, synthetic)):
        if inner.startswith(os.path.join(outer, "")):
            raise ConfigError(f"--synthetic_image_dir and --real_image_dir: {inner} is inside {outer}, so its "
                              f"images would be read as both")


def _listing(folder, data_dir, flag, sample_colour):
    """The folder's Listing, its skipped files reported; DataError when no image in it can be used."""
    listing = scan_folder(folder, cache_dir_of(data_dir, folder), sample_colour)
    report_skipped(listing.skipped, folder)
    if not listing.entries:
        found = sum(len(paths) for paths in listing.skipped.values())
        raise DataError(f"--{flag}={folder}: no readable image ({found} files, all skipped)" if found
                        else f"--{flag}={folder}: no image in it (an empty folder)")
    return listing


def _rows(listing, shape, crop, what):
    rows, paths, skipped = input_rows(listing, shape, crop, what)
    report_skipped(skipped, listing.root)
    if not len(rows):
        raise DataError(f"no image of {listing.root} could be decoded")
    return rows, paths


def _announce(config, synthetic, real, chosen, size_why, channel_why):
    """One line: the images found, the input and why, the networks it gets, the flags set from the images."""
    design = network_design("folders", config.input_height, config.input_width)
    networks = ("the eye networks (3x3 refiner, 4 blocks)" if design == "gaze" else
                "the hand networks (7x7 refiner, 10 blocks)")
    whys = {"input_height": size_why, "input_width": size_why, "input_channel": channel_why}
    reasons = "; ".join(dict.fromkeys(whys[flag] for flag in chosen if flag in whys))
    schedule = ", ".join(f"--{flag}={value}" for flag, value in chosen.items() if flag not in whys)
    print(f"[*] Folders: {len(synthetic.entries)} synthetic images in {synthetic.root}, {len(real.entries)} real in "
          f"{real.root}; input {config.input_height}x{config.input_width}x{config.input_channel}"
          f"{f' ({reasons})' if reasons else ''}; {networks}, shorter side "
          f"{'under' if design == 'gaze' else 'at least'} {HAND_DESIGN_SIDE}{f'; {schedule}' if schedule else ''}")
