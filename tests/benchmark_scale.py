"""SimGAN at the published data sizes, in the real on-disk formats: start-up time, memory, input throughput.

Run from anywhere:

    python tests/benchmark_scale.py [--scale 1.0] [--reuse DIR] [--keep] [--cases gaze,estimation,hand,folders]
        [--skip-first-start] [--link-crops] [--stop-after estimation=20,folders=1] [--extra "hand=--batch_size=8"]
        [--seconds 10] [--timeout 14400] [--folder-images 100000] [--folder-real-images 20000]
        [--folder-batches 300]

    # a smoke run of about 20 minutes on 2 cores, the hand runs cut short (one 224x224 refiner step at the
    # hand's default batch 32 takes many minutes on a CPU):
    python tests/benchmark_scale.py --scale 0.002 --cases gaze,estimation,hand --stop-after estimation=20,hand=1 \
        --extra "hand=--batch_size=8 --buffer_size=64"

    # the issue's folders requirement alone (100,000 colour 256x256 images; 43 GB of disk for the caches, about
    # 35 minutes on 2 busy cores: 7 of decoding, and each start's first 256x256 batch-32 step 5 to 8 on a CPU),
    # or a quick one at 2,000 (about 20 minutes, nearly all of it those steps):
    python tests/benchmark_scale.py --cases folders
    python tests/benchmark_scale.py --cases folders --folder-images 2000

At --scale 1.0 on 2 cores expect hours, mostly the first start cutting 1.2 M crops (twice: the gaze and the
estimation cases each have a first start); --link-crops skips that, and --reuse DIR --skip-first-start
measures second starts again on a tree whose caches an earlier run made.

A script, not a test: pytest collects test_*.py only. The program's runs write into a temporary folder,
removed at the end unless --keep; the data tree too, unless --reuse DIR names where to keep it for later
runs (each data set's part reused when built with the same sizes; only a folder this script built is ever
emptied).

The tree (scaled by --scale; a few hundred distinct files each, hard-linked under every other name, so it
costs seconds and megabytes to build, while the caches the program makes from it are full size):
- DATA_DIR/gaze/UnityEyes: 1,200,000 frames `{i}.jpg` + `{i}.json` (data/gaze_sample.py's 640x480 renders);
  their crops `{i}_cropped.png` are cut by the program on its first start, or, with --link-crops, made
  once per distinct frame here and hard-linked too (the first start then finds them made);
- DATA_DIR/gaze/MPIIGaze/Data/Normalized/pXX/dayYY.mat: 15 people, 213,659 samples (427,318 eyes) in
  about 470 day files of up to 900 samples (data.left/right.image (N, 36, 60) uint8, .gaze, .pose; filenames);
- DATA_DIR/hand/{train,test}: 72,757 and 8,252 NYU frames (`depth_1_*.png`, `synthdepth_1_*.png`, drawn by
  data/hand_sample.py) and a joint_data.mat each, holding every frame (the few drawn poses, tiled);
- DATA_DIR/images/{synthetic,real} for --data_set=folders, the issue's size: 100,000 colour 256x256 renders
  `synthetic/part_KKK/render_NNNNNN.png` (1,000 a subfolder) and 20,000 colour 256x256 camera images
  `real/camera_NNNNNN.jpg` (data/folder_sample.py's, 200 distinct of each; --folder-images and
  --folder-real-images set other counts, at --scale by default). The program's caches of them land in
  DATA_DIR/folders: a rows file of 19.7 GB for the renders (256x256x3 bytes an image) and 3.9 GB for the
  camera images. The files' own reads are page-cache hot (a few hundred distinct files): the first start's
  decoding is measured as CPU work, the reading of 20 GB of image files from a cold disk left out.

Each case runs as `python main.py --data_dir=TREE --debug=True ...` in a child process, twice: a first
start (everything the program made beside that data set's files removed first: crops, MPIIGaze's cache,
the hand crops' cache) and a second start (they exist):
- gaze: `--max_step=2 --initial_K_g=2 --initial_K_d=2` (batch 512);
- estimation: `--task=estimation --batch_size=512 --num_epochs=1`, stopped with SIGINT once --stop-after
  training steps have printed (no flag cuts an epoch short; SIGINT saves a checkpoint and exits 0);
- hand: `--data_set=hand --max_step=2 --initial_K_g=2 --initial_K_d=2` (224x224, batch 32);
- folders: `--data_set=folders --synthetic_image_dir=DATA_DIR/images/synthetic --real_image_dir=...real
  --batch_size=32 --initial_K_g=2 --initial_K_d=1 --max_step=1 --eval_step=0` (the input set from the real
  images: 256x256x3, the hand networks), stopped with SIGINT after its first step (--stop-after folders=1),
  and started a third time ("changed") after one synthetic file is replaced by another image: the start
  must notice it and decode that one image again, not the folder. Its `decoded` column counts the images
  each start decoded (the program's `[*] Decoding N ... images` lines).
Figures of each run: exit status; seconds from launch to the first `[*] step ` line (Python's and
TensorFlow's import included), to the `[*] Training on` line (printed once load_*_data has returned: the
crops and caches made or checked; the estimator then takes its labels and its crops at the input size from
their caches beside the crops, data/estimation_cache.py, made on a first start), and in all; step lines
printed; peak RSS of main.py (VmHWM, polled); peak PSS of main.py with its worker processes (sampled;
proportional, so pages they share are not counted twice).

Then, in this process, the training input pipelines alone (load_gaze_data / load_hand_data on the tree,
then synthetic_batches and real_batches at the default batch for --seconds each): images/s, and the
first batch's latency. For folders, the two ways the issue asks to compare, each for --folder-batches
batches of 32 at 256x256x3: the decoded rows (FolderData.synthetic_batches / real_batches, positioned reads
of the rows files) and decoding the image files every batch with tf.data (data/pipelines.synthetic_dataset:
tf.io.read_file, tf.io.decode_image, resize_as_original, a parallel map), and the ratio. The last line is
`key=value ...` of every figure, for scripts.

Disk: the hard links cost nothing; the caches at --scale 1.0 about 11 GB of crops (none with
--link-crops), 0.9 GB of MPIIGaze cache, 2 GB of the estimator's crops at its input
size (.estimator_rows_35x55x1.npy beside the crops, with the labels' .labels_index.npz), 7.3 GB of hand
crops and, for folders, 23.6 GB of rows plus room for the 19.7 GB rows file written again beside the old one
when the changed start copies the unchanged rows (43 GB). The script checks the free space first.
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
sys.path[:0] = [ROOT, TESTS]  # the program's modules, and the benchmark's own beside this file

import numpy as np  # noqa: E402
import scipy.io  # noqa: E402

from data import nyu  # noqa: E402
from data.folder_sample import write_folder_pair  # noqa: E402
from data.hand_sample import write_frames  # noqa: E402
from data.gaze_sample import real_day_content, write_synthetic  # noqa: E402

# folders: the requirement (100,000 colour 256x256 images to train on) and a fifth as many real ones.
PUBLISHED = {"unityeyes_frames": 1_200_000, "mpiigaze_samples": 213_659, "hand_train": 72_757, "hand_test": 8_252,
             "folder_synthetic": 100_000, "folder_real": 20_000}
# The least that runs every case: the 8x8 sample grid, a batch of 512 in the estimator's 90% training split.
MINIMUM = {"unityeyes_frames": 640, "mpiigaze_samples": 15, "hand_train": 64, "hand_test": 1,
           "folder_synthetic": 64, "folder_real": 32}
# Files drawn; every other name is a hard link to one of them (ext4 allows 65,000 links to a file: 1.2 M frames
# over 300 make 4,000 each).
DISTINCT_FRAMES = 300        # UnityEyes frames drawn; the rest are hard links to them
DISTINCT_HAND_FRAMES = 64    # NYU frames drawn per split
DISTINCT_FOLDER_IMAGES = 200  # renders and camera images drawn (data/folder_sample.py); the rest are hard links
FOLDER_SIDE = 256            # the images' height and width: the folders' input (the auto rule's cap)
FOLDER_PART = 1000           # renders a synthetic subfolder
NUM_PERSONS = 15             # MPIIGaze's p00..p14
DAY_SIZES = (900, 500, 300, 100)  # samples of a person's day files in turn (the last day: what is left)
SEED = 7
TREE_VERSION = 2             # in the manifest: a tree of another version is built again
MANIFEST = ".benchmark_scale.json"
TEMPLATES = ".templates"     # in the tree: the distinct files every name links to
CASE_FLAGS = {
    "gaze": ["--max_step=2", "--initial_K_g=2", "--initial_K_d=2"],
    "estimation": ["--task=estimation", "--batch_size=512", "--num_epochs=1"],
    "hand": ["--data_set=hand", "--max_step=2", "--initial_K_g=2", "--initial_K_d=2"],
    # and the two folders (folder_flags): the input, the networks and the rest from the images
    "folders": ["--data_set=folders", "--batch_size=32", "--initial_K_g=2", "--initial_K_d=1", "--max_step=1",
                "--eval_step=0"],
}
CASE_DATA = {"gaze": "gaze", "estimation": "gaze", "hand": "hand", "folders": "folders"}
# What each part of the tree holds: its counts, and the folders (in the tree) it is built in.
PART_COUNTS = {"gaze": ("unityeyes_frames", "mpiigaze_samples"), "hand": ("hand_train", "hand_test"),
               "folders": ("folder_synthetic", "folder_real")}
PART_FOLDERS = {"gaze": ("gaze", f"{TEMPLATES}/unityeyes"),
                "hand": ("hand", f"{TEMPLATES}/hand_train", f"{TEMPLATES}/hand_test"),
                "folders": ("images", "folders", f"{TEMPLATES}/folders")}
FOLDER_IMAGES = "images"     # DATA_DIR/images/{synthetic,real}: the folders' images (DATA_DIR/folders: the caches)
DECODING_PREFIX = "[*] Decoding "  # data/folder_cache.py's `[*] Decoding N synthetic images at ...`
STEP_PREFIX, LOADED_PREFIX = "[*] step ", "[*] Training on"
# Bytes a cached item takes, for the disk check: a 140x84 crop PNG (compress level 1) is about 9 kB.
CROP_BYTES, EYE_BYTES, ESTIMATOR_CROP_BYTES = 9_000, 36 * 60, 35 * 55
FOLDER_ROW_BYTES = FOLDER_SIDE * FOLDER_SIDE * 3
POLL_SECS, SIGINT_GRACE_SECS = 0.5, 900


# ---- the command line ----

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="SimGAN's start-up, memory and input throughput at the published "
                                                 "data sizes (see the module docstring).")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the published sizes (default 1.0)")
    parser.add_argument("--reuse", metavar="DIR", help="build the data tree in DIR, or reuse the one there")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (the runs' logs and outputs, the tree without --reuse)")
    parser.add_argument("--cases", default="gaze,estimation,hand,folders",
                        help="comma list of gaze, estimation, hand, folders")
    parser.add_argument("--skip-first-start", action="store_true", help="run only the second start of each case")
    parser.add_argument("--link-crops", action="store_true",
                        help="hard-link one crop PNG per distinct frame instead of letting the first start cut them")
    parser.add_argument("--stop-after", default="estimation=20,folders=1", metavar="CASE=N,...",
                        help="send SIGINT once N step lines have printed (default estimation=20,folders=1)")
    parser.add_argument("--extra", action="append", default=[], metavar="CASE=FLAGS",
                        help='more flags for a case, e.g. "hand=--batch_size=8 --buffer_size=64" (repeatable)')
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each input pipeline measurement")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds before a run is killed")
    parser.add_argument("--folder-images", type=int, metavar="N",
                        help="folders: synthetic images (default 100,000 x --scale)")
    parser.add_argument("--folder-real-images", type=int, metavar="N",
                        help="folders: real images (default a fifth of the synthetic ones)")
    parser.add_argument("--folder-batches", type=int, default=300, metavar="N",
                        help="folders: batches of each input pipeline measurement (default 300)")
    args = parser.parse_args(argv)
    args.cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = set(args.cases) - set(CASE_FLAGS)
    if unknown or not args.cases:
        parser.error(f"--cases: choose from {', '.join(CASE_FLAGS)}, not {', '.join(sorted(unknown)) or 'nothing'}")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    for flag, least in (("folder_images", MINIMUM["folder_synthetic"]), ("folder_real_images", MINIMUM["folder_real"]),
                        ("folder_batches", 1)):
        if getattr(args, flag) is not None and getattr(args, flag) < least:
            parser.error(f"--{flag.replace('_', '-')} must be at least {least}")
    args.stop_after = dict(per_case(parser, "--stop-after", args.stop_after.split(",")))
    for case, steps in args.stop_after.items():
        if not steps.strip().isdigit():
            parser.error(f"--stop-after {case}={steps}: not a number of steps")
        args.stop_after[case] = int(steps)
    args.extra = {case: shlex.split(flags) for case, flags in per_case(parser, "--extra", args.extra)}
    return args


def per_case(parser, flag, items):
    """[(case, value)] of CASE=VALUE items (empty ones skipped); a usage error for anything else."""
    pairs = [item.split("=", 1) for item in items if item.strip()]
    for pair in pairs:
        if len(pair) != 2 or pair[0].strip() not in CASE_FLAGS:
            parser.error(f"{flag} {'='.join(pair)}: expected CASE=VALUE with CASE one of {', '.join(CASE_FLAGS)}")
    return [(case.strip(), value) for case, value in pairs]


def sizes(args):
    """The tree's counts at --scale (never below what runs every case), the folders' as their flags say."""
    counts = {key: max(MINIMUM[key], round(value * args.scale)) for key, value in PUBLISHED.items()}
    if args.folder_images is not None:
        counts["folder_synthetic"] = args.folder_images
        counts["folder_real"] = max(MINIMUM["folder_real"], args.folder_images // 5)
    if args.folder_real_images is not None:
        counts["folder_real"] = args.folder_real_images
    return counts


# ---- printing (benchmark_common's, without importing TensorFlow: this process stays small while main.py runs) ----

def section(title):
    print(f"\n== {title}", flush=True)


def show(label, value, unit="", detail=""):
    print(f"  {label:<46} {value}{(' ' + unit) if unit else ''}{('  ' + detail) if detail else ''}", flush=True)


def key_values(results):
    """`key=value ...` of every figure, floats to 4 significant digits."""
    return " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in results.items())


def gigabytes(count):
    return f"{count / 1e9:.1f} GB"


# ---- the data tree ----

def open_tree(args, tmp, counts):
    """The data tree's folder: the parts the cases read built, unless --reuse names one that holds them built with
    these counts (and crop links); the parts no case reads are left as they are."""
    tree = os.path.abspath(args.reuse) if args.reuse else os.path.join(tmp, "data")
    manifest_path = os.path.join(tree, MANIFEST)
    manifest = None
    if os.path.exists(manifest_path):
        with open(manifest_path) as handle:
            manifest = json.load(handle)
        if manifest.get("version") != TREE_VERSION:
            print(f"[*] {tree} holds a tree of another version of this script: building its parts again")
            for name in ("gaze", "hand", FOLDER_IMAGES, "folders", TEMPLATES):
                shutil.rmtree(os.path.join(tree, name), ignore_errors=True)
            manifest = None
    elif os.path.isdir(tree) and os.listdir(tree):
        sys.exit(f"[!] --reuse {tree}: not empty and not a tree of this script ({MANIFEST} missing)")
    os.makedirs(tree, exist_ok=True)
    manifest = manifest or {"version": TREE_VERSION, "parts": {}}
    for part in dict.fromkeys(CASE_DATA[case] for case in args.cases):
        wanted = {"counts": {key: counts[key] for key in PART_COUNTS[part]}}
        if part == "gaze":
            wanted["link_crops"] = args.link_crops
        if manifest["parts"].get(part) == {**wanted, "complete": True}:
            print(f"[*] Reusing the {part} part of the data tree in {tree}")
            continue
        if part in manifest["parts"]:
            print(f"[*] {tree}: its {part} part has other sizes, or is unfinished: building it again")
        for name in PART_FOLDERS[part]:  # with the caches the program made from them
            shutil.rmtree(os.path.join(tree, name), ignore_errors=True)
        manifest["parts"][part] = {**wanted, "complete": False}
        write_json(manifest_path, manifest)
        started = time.monotonic()
        BUILDERS[part](tree, counts, args.link_crops)
        manifest["parts"][part]["complete"] = True
        write_json(manifest_path, manifest)
        print(f"[*] Built the {part} part of the data tree in {tree} in {time.monotonic() - started:.0f} s")
    return tree


def write_json(path, value):
    with open(path, "w") as handle:
        json.dump(value, handle)


def build_gaze(tree, counts, link_crops):
    """UnityEyes frames from a few drawn under TREE/.templates, hard-linked under every published name; MPIIGaze."""
    build_unityeyes(os.path.join(tree, "gaze", "UnityEyes"), os.path.join(tree, TEMPLATES, "unityeyes"),
                    counts["unityeyes_frames"], link_crops)
    build_mpiigaze(os.path.join(tree, "gaze", "MPIIGaze"), counts["mpiigaze_samples"])


def build_hand(tree, counts, link_crops):
    """Both NYU splits, a few frames drawn under TREE/.templates, hard-linked under every published name."""
    for split_index, split in enumerate(("train", "test")):
        build_hand_split(os.path.join(tree, "hand", split), os.path.join(tree, TEMPLATES, f"hand_{split}"),
                         split_index, counts[f"hand_{split}"])


def build_folders(tree, counts, link_crops):
    """TREE/images/synthetic/part_KKK/render_NNNNNN.png and TREE/images/real/camera_NNNNNN.jpg, colour 256x256,
    hard-linked to DISTINCT_FOLDER_IMAGES of each drawn by data/folder_sample.py."""
    templates = os.path.join(tree, TEMPLATES, "folders")
    distinct = min(DISTINCT_FOLDER_IMAGES, max(counts["folder_synthetic"], counts["folder_real"]))
    pair = write_folder_pair(templates, distinct, SEED, (FOLDER_SIDE, FOLDER_SIDE), (FOLDER_SIDE, FOLDER_SIDE))
    drawn = {kind: sorted(os.path.join(parent, name) for parent, _, names in os.walk(folder) for name in names)
             for kind, folder in (("synthetic", pair.synthetic_dir), ("real", pair.real_dir))}
    for kind, count in (("synthetic", counts["folder_synthetic"]), ("real", counts["folder_real"])):
        for index in range(count):
            path = folder_image_path(tree, kind, index)
            if kind == "synthetic" and index % FOLDER_PART == 0 or kind == "real" and index == 0:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            os.link(drawn[kind][index % len(drawn[kind])], path)
    print(f"[*] Folders: {counts['folder_synthetic']:,} synthetic PNG and {counts['folder_real']:,} real JPEG images "
          f"of {FOLDER_SIDE}x{FOLDER_SIDE}x3, {distinct} distinct of each (drawn in {pair.seconds:.0f} s)")


def folder_image_path(tree, kind, index):
    """Where the folders case's image index of kind (synthetic, real) is: in 1,000s for the renders, flat for the others."""
    if kind == "synthetic":
        return os.path.join(tree, FOLDER_IMAGES, kind, f"part_{index // FOLDER_PART:03d}", f"render_{index:06d}.png")
    return os.path.join(tree, FOLDER_IMAGES, kind, f"camera_{index:06d}.jpg")


def link_cycle(source_dir, target_dir, count, distinct, names_of):
    """Hard-link the files names_of(i) of source_dir's items 1..distinct as items 1..count of target_dir, in turn."""
    os.makedirs(target_dir, exist_ok=True)
    for item in range(1, count + 1):
        source = (item - 1) % distinct + 1
        for source_name, name in zip(names_of(source), names_of(item)):
            os.link(os.path.join(source_dir, source_name), os.path.join(target_dir, name))


def build_unityeyes(folder, templates, count, link_crops):
    """count UnityEyes frames {i}.jpg + {i}.json (and, with link_crops, their crops) from DISTINCT_FRAMES drawn ones."""
    distinct = min(count, DISTINCT_FRAMES)
    os.makedirs(templates, exist_ok=True)
    write_synthetic(SEED, 1, distinct + 1, templates)  # numbered from 1, as UnityEyes numbers them
    suffixes = [".jpg", ".json"]
    if link_crops:
        from data.unityeyes import CROP_SUFFIX, prepare_crops  # the program's own cropper, on the few frames
        prepare_crops(templates)
        suffixes.append(CROP_SUFFIX)
        missing = [i for i in range(1, distinct + 1)
                   if not os.path.exists(os.path.join(templates, f"{i}{CROP_SUFFIX}"))]
        if missing:
            sys.exit(f"[!] the cropper skipped drawn frames {missing[:5]}: cannot link their crops")
    link_cycle(templates, folder, count, distinct, lambda item: [f"{item}{suffix}" for suffix in suffixes])
    print(f"[*] UnityEyes: {count:,} frames{' with their crops' if link_crops else ''}, {distinct} distinct")


def mpiigaze_layout(samples):
    """[(person, day, samples)]: the samples shared among 15 people, each person's days DAY_SIZES in turn."""
    layout = []
    for person in range(NUM_PERSONS):
        left, day = samples // NUM_PERSONS + (person < samples % NUM_PERSONS), 0
        while left > 0:
            size = min(left, DAY_SIZES[day % len(DAY_SIZES)])
            day, left = day + 1, left - size
            layout.append((person, day, size))
    return layout


def day_slice(content, size):
    """The first `size` samples of a day file's variables (real_day_content's layout)."""
    data = {side: {key: value[:size] for key, value in eye.items()} for side, eye in content["data"].items()}
    return {"data": data, "filenames": content["filenames"][:size]}


def build_mpiigaze(real_dir, samples):
    """MPIIGaze's Data/Normalized/pXX/dayYY.mat: one file drawn per distinct day size, hard-linked for the others."""
    layout = mpiigaze_layout(samples)
    root = os.path.join(real_dir, "Data", "Normalized")
    content = real_day_content(SEED, 0, 1, max(size for _, _, size in layout))
    first_of_size = {}
    for person, day, size in layout:
        path = os.path.join(root, f"p{person:02d}", f"day{day:02d}.mat")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if size in first_of_size:
            os.link(first_of_size[size], path)
        else:
            scipy.io.savemat(path, day_slice(content, size), format="5", do_compression=False)
            first_of_size[size] = path
    print(f"[*] MPIIGaze: {samples:,} samples ({2 * samples:,} eyes) in {len(layout)} day files of 15 people, "
          f"{len(first_of_size)} distinct")


def build_hand_split(folder, templates, split_index, count):
    """count NYU frames (depth and synthdepth of camera 1) from DISTINCT_HAND_FRAMES drawn ones, and joint_data.mat."""
    distinct = min(count, DISTINCT_HAND_FRAMES)
    os.makedirs(templates, exist_ok=True)
    xyz = write_frames(templates, SEED, split_index, 1, distinct + 1)
    link_cycle(templates, folder, count, distinct, lambda item: [nyu.depth_name(item), nyu.synthetic_depth_name(item)])
    tiled = xyz[np.arange(count) % distinct]  # frame i has the pose of the frame it links to
    nyu.write_joint_data(os.path.join(folder, nyu.JOINT_FILE), nyu.xyz_to_uvd(tiled), tiled)
    print(f"[*] NYU hand {os.path.basename(folder)}: {count:,} frames, {distinct} distinct")


BUILDERS = {"gaze": build_gaze, "hand": build_hand, "folders": build_folders}


def check_disk(tree, counts, args):
    """Exit with a message when the caches the cases make cannot fit beside the tree."""
    need = 0
    if {"gaze", "estimation"} & set(args.cases):
        need += (0 if args.link_crops else counts["unityeyes_frames"] * CROP_BYTES)
        need += 2 * counts["mpiigaze_samples"] * EYE_BYTES
    if "estimation" in args.cases:
        need += counts["unityeyes_frames"] * ESTIMATOR_CROP_BYTES
    if "hand" in args.cases:
        need += 2 * counts["hand_train"] * 224 * 224
    if "folders" in args.cases:  # both rows files, and the synthetic one again while the changed start writes it
        need += (2 * counts["folder_synthetic"] + counts["folder_real"]) * FOLDER_ROW_BYTES
    free = shutil.disk_usage(tree).free
    show("disk: the caches need about", gigabytes(need), "", f"({gigabytes(free)} free in {tree})")
    if need > free:
        sys.exit(f"[!] not enough disk for the caches at --scale {args.scale}: use a smaller --scale, --link-crops "
                 f"or a --reuse folder on a bigger disk")


def derived_paths(tree, data_set, link_crops):
    """What the program made beside a data set's own files: everything in DATA_DIR/gaze (or hand) but the data's
    folders, and in UnityEyes the hidden files and the crops, unless they were linked in as data; for the folders
    case all of DATA_DIR/folders (its images are in DATA_DIR/images)."""
    folder = os.path.join(tree, data_set)
    if data_set == "folders":
        return [folder] if os.path.exists(folder) else []
    keep = {"gaze": {"UnityEyes", "MPIIGaze"}, "hand": {"train", "test"}}[data_set]
    paths = [os.path.join(folder, name) for name in os.listdir(folder) if name not in keep]
    if data_set == "gaze":
        with os.scandir(os.path.join(folder, "UnityEyes")) as entries:
            paths += [entry.path for entry in entries if entry.name.startswith(".")
                      or (not link_crops and entry.name.endswith("_cropped.png"))]
    return paths


def clear_caches(tree, data_set, link_crops):
    """Remove what the program made from a data set, so the next run is a first start; (files, bytes) removed."""
    removed, size = 0, 0
    for path in derived_paths(tree, data_set, link_crops):
        if os.path.isdir(path) and not os.path.islink(path):
            files = [os.path.join(parent, name) for parent, _, names in os.walk(path) for name in names]
            size, removed = size + sum(os.lstat(file).st_size for file in files), removed + len(files)
            shutil.rmtree(path)
        else:
            size, removed = size + os.lstat(path).st_size, removed + 1
            os.remove(path)
    return removed, size


# ---- one run of main.py ----

@dataclass
class Run:
    """What one `python main.py` run did."""
    status: object = None        # exit status, or "timeout"
    first_step_s: float = None   # launch to the first `[*] step ` line
    loaded_s: float = None       # launch to `[*] Training on` (data loaded, devices set up)
    total_s: float = None
    steps: int = 0               # step lines printed
    stopped: bool = False        # SIGINT sent after --stop-after steps
    peak_rss_mb: float = 0.0     # main.py's VmHWM
    peak_pss_mb: float = 0.0     # main.py and its worker processes, summed PSS, sampled
    decoded: int = 0             # images the folders case decoded (its `[*] Decoding N ... images` lines)


class OutputWatcher(threading.Thread):
    """Copy the child's output to a log, noting when the first step and `Training on` lines came, and the steps."""

    def __init__(self, stream, log_path, started, result):
        super().__init__(daemon=True)
        self.stream, self.log_path, self.started, self.result = stream, log_path, started, result

    def run(self):
        with open(self.log_path, "w") as log:
            for line in self.stream:  # text mode: tqdm's carriage returns end lines too
                log.write(line)
                seconds = time.monotonic() - self.started
                if line.startswith(STEP_PREFIX):
                    self.result.steps += 1
                    self.result.first_step_s = self.result.first_step_s or seconds
                elif line.startswith(LOADED_PREFIX) and self.result.loaded_s is None:
                    self.result.loaded_s = seconds
                elif line.startswith(DECODING_PREFIX) and line[len(DECODING_PREFIX):].split(" ", 1)[0].isdigit():
                    self.result.decoded += int(line[len(DECODING_PREFIX):].split(" ", 1)[0])


def proc_field(pid, file, field):
    """A `Field:  N kB` value of /proc/PID/<file> in kB; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/{file}") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def process_tree(pid):
    """pid and every descendant's pid, from /proc/PID/task/*/children."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[index]}/task"):
                with open(f"/proc/{pids[index]}/task/{task}/children") as handle:
                    pids += [int(child) for child in handle.read().split()]
        except OSError:
            pass  # gone meanwhile
        index += 1
    return pids


def run_main(flags, log_path, stop_after, timeout):
    """Run `python main.py FLAGS` from the repository root; SIGINT after stop_after step lines; a Run."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", TQDM_MININTERVAL="30")
    run, started = Run(), time.monotonic()
    # A session of its own: a timeout kills its worker processes too, and a Ctrl-C here reaches it only through us.
    process = subprocess.Popen([sys.executable, "main.py", *flags], cwd=ROOT, env=env, text=True, errors="replace",
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    watcher = OutputWatcher(process.stdout, log_path, started, run)
    watcher.start()
    exit_code = None
    try:
        while (exit_code := exit_status(process.pid)) is None:
            poll_memory(process.pid, run)
            elapsed = time.monotonic() - started
            if stop_after and run.steps >= stop_after and not run.stopped:
                process.send_signal(signal.SIGINT)  # the run saves a checkpoint and exits 0
                run.stopped, stop_time = True, elapsed
            late = elapsed > timeout or (run.stopped and elapsed - stop_time > SIGINT_GRACE_SECS)
            if late and run.status is None:
                os.killpg(process.pid, signal.SIGKILL)  # its worker processes too
                run.status = "timeout"
            time.sleep(POLL_SECS)
    finally:
        if exit_code is None:  # this script was interrupted: leave nothing running
            os.killpg(process.pid, signal.SIGKILL)
            os.waitpid(process.pid, 0)
    process.returncode = exit_code  # reaped here, not by Popen
    run.status = run.status or exit_code
    run.total_s = time.monotonic() - started
    watcher.join(timeout=30)
    return run


def exit_status(pid):
    """A finished child's exit status (reaping it), or None while it runs."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def poll_memory(pid, run):
    """Note main.py's VmHWM and the summed PSS of its process tree, in MB."""
    run.peak_rss_mb = max(run.peak_rss_mb, proc_field(pid, "status", "VmHWM") / 1024)
    pss = sum(proc_field(member, "smaps_rollup", "Pss") for member in process_tree(pid))
    run.peak_pss_mb = max(run.peak_pss_mb, pss / 1024)


# ---- the cases ----

def run_case(case, tree, tmp, args, results):
    """A case's first start (its data set's caches removed) and second start, and for folders a third start after
    one image changed; [(case, start, Run)]."""
    rows = []
    starts = ["second"] if args.skip_first_start else ["first", "second"]
    for start in starts + (["changed"] if case == "folders" else []):
        if start == "first":
            removed, size = clear_caches(tree, CASE_DATA[case], args.link_crops)
            print(f"[*] {case}: removed {removed:,} files the program made ({gigabytes(size)}) for a first start")
        elif start == "changed":
            print(f"[*] {case}: replaced {replace_folder_image(tree)} by another image (a file of its own)")
        elif not derived_paths(tree, CASE_DATA[case], args.link_crops):
            print(f"[*] {case}: --skip-first-start, but no caches yet: this 'second' start makes them")
        name = f"{case}_{start}"
        out, log_path = os.path.join(tmp, "runs", name), os.path.join(tmp, f"{name}.log")
        case_flags = ["--debug=True", *CASE_FLAGS[case], *folder_flags(case, tree), *args.extra.get(case, [])]
        print(f"[*] {case}, {start} start: python main.py {' '.join(case_flags)}", flush=True)
        folders = [f"--data_dir={tree}", f"--log_dir={out}/logs", f"--sample_dir={out}/samples",
                   f"--output_dir={out}/outputs"]
        run = run_main(folders + case_flags, log_path, args.stop_after.get(case, 0), args.timeout)
        print(f"    {summary(run, case)}", flush=True)
        if run.status not in (0, "timeout") or not run.steps:
            print_log_tail(log_path)
        record(results, name, run)
        rows.append((case, start, run))
    return rows


def folder_flags(case, tree):
    """The folders case's two folders; nothing for the other cases."""
    if case != "folders":
        return []
    return [f"--synthetic_image_dir={os.path.join(tree, FOLDER_IMAGES, 'synthetic')}",
            f"--real_image_dir={os.path.join(tree, FOLDER_IMAGES, 'real')}"]


def replace_folder_image(tree):
    """Replace the middle synthetic image by a file of its own holding another image (a new size and modification
    time: touching it would change the hundreds of names linked to it); its path in the tree."""
    synthetic = os.path.join(tree, FOLDER_IMAGES, "synthetic")
    count = sum(len(names) for _, _, names in os.walk(synthetic))
    path, other = folder_image_path(tree, "synthetic", count // 2), folder_image_path(tree, "synthetic", count // 2 + 1)
    with open(other, "rb") as handle:
        content = handle.read()
    os.remove(path)
    with open(path, "wb") as handle:  # the next image's content, with a modification time of its own
        handle.write(content)
    return os.path.relpath(path, tree)


TABLE = "  {:<11} {:<7} {:>7} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>8}"


def print_table(rows):
    """One line per run: status (* stopped by SIGINT), seconds from launch, steps, memory in MB."""
    print(TABLE.format("case", "start", "status", "1st step", "loaded", "total", "steps", "peak RSS", "tree PSS",
                       "decoded"))
    print(TABLE.format("", "", "", "s", "s", "s", "", "MB", "MB", "images"))
    for case, start, run in rows:
        status = f"{run.status}{'*' if run.stopped else ''}"
        print(TABLE.format(case, start, status, seconds_text(run.first_step_s), seconds_text(run.loaded_s),
                           seconds_text(run.total_s), run.steps, f"{run.peak_rss_mb:.0f}", f"{run.peak_pss_mb:.0f}",
                           f"{run.decoded:,}" if case == "folders" else "-"))


def summary(run, case):
    """One run's figures in a line, as it ends."""
    return (f"status {run.status}{' (stopped by SIGINT)' if run.stopped else ''}, first step at "
            f"{seconds_text(run.first_step_s)} s, loaded at {seconds_text(run.loaded_s)} s, "
            f"{run.total_s:.1f} s in all, {run.steps} steps, peak RSS {run.peak_rss_mb:.0f} MB, "
            f"tree PSS {run.peak_pss_mb:.0f} MB{f', {run.decoded:,} images decoded' if case == 'folders' else ''}")


def seconds_text(value):
    return "-" if value is None else f"{value:.1f}"


def print_log_tail(path, lines=25):
    with open(path, errors="replace") as handle:
        tail = handle.read().splitlines()[-lines:]
    print("\n".join(f"    | {line}" for line in tail))


def record(results, name, run):
    fields = ("status", "first_step_s", "loaded_s", "total_s", "steps", "peak_rss_mb", "peak_pss_mb")
    for field in fields + (("decoded",) if name.startswith("folders") else ()):
        value = getattr(run, field)
        results[f"{name}_{field}"] = "-" if value is None else value


# ---- the input pipelines alone, in this process ----

def measure_pipelines(tree, data_set, seconds, results):
    """load_*_data on the tree (caches made), then each training pipeline for `seconds`: images/s.

    At the data set's default input size and batch, whatever --extra gave the runs.
    """
    from config import get_config, image_shape  # TensorFlow is imported only now: main.py's runs are over
    from data.gaze_data import load_gaze_data
    from data.hand_data import load_hand_data
    config = get_config([f"--data_dir={tree}", f"--data_set={data_set}"])
    started = time.monotonic()
    data = (load_hand_data if data_set == "hand" else load_gaze_data)(config)
    results[f"{data_set}_load_s"] = time.monotonic() - started
    show(f"{data_set}: load_{data_set}_data", f"{results[f'{data_set}_load_s']:.1f}", "s")
    shape = image_shape(config)
    for kind in ("synthetic", "real"):
        batches = getattr(data, f"{kind}_batches")(shape, config.batch_size, config.random_seed)
        first_s, rate = images_per_second(batches, config.batch_size, seconds)
        show(f"{data_set}: {kind}_batches {'x'.join(map(str, shape))}, batch {config.batch_size}",
             f"{rate:.0f}", "images/s", f"(first batch {first_s:.2f} s)")
        results[f"{data_set}_{kind}_images_s"] = rate
        results[f"{data_set}_{kind}_first_batch_s"] = first_s


def in_fresh_process(function, *args):
    """function(*args) in a process started now (spawn): it imports the program's modules afresh, so TensorFlow's
    AutoGraph, which reads a function's source from its file, reads the source that runs even when the program
    was edited while the runs went on. Its exception is raised here."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def measure_folder_pipelines(tree, batch_count):
    """load_folder_data on the tree (caches made), then each kind of image both ways for batch_count batches:
    the decoded rows (FolderData.*_batches: positioned reads of the rows file) and the image files decoded every
    batch with tf.data (data.pipelines.synthetic_dataset: read_file, decode_image, resize_as_original, a
    parallel map); {figure: value} of images/s of each and the ratio.

    The rows are read cold: their files' pages are dropped from the page cache first (posix_fadvise), as a
    file bigger than the memory is read in a shuffled epoch. The image files are page-cache hot (a few hundred
    distinct files, linked under every name), so decoding them is measured as CPU work alone.
    """
    from config import get_config, image_shape  # TensorFlow is imported only now: main.py's runs are over
    from data.folder_data import load_folder_data
    from data.folder_images import walk_files
    from data.pipelines import synthetic_dataset
    config = get_config([f"--data_dir={tree}", "--data_set=folders", *folder_flags("folders", tree)])
    results, started = {}, time.monotonic()
    data = load_folder_data(config)
    results["folders_load_s"] = time.monotonic() - started
    show("folders: load_folder_data (caches made)", f"{results['folders_load_s']:.1f}", "s")
    shape, batch = image_shape(config), config.batch_size
    size = "x".join(map(str, shape))
    folders = {kind: os.path.join(tree, FOLDER_IMAGES, kind) for kind in ("synthetic", "real")}
    paths = {"synthetic": [os.path.join(folders["synthetic"], path) for path in data.synthetic_paths],
             "real": [os.path.join(folders["real"], path) for path in walk_files(folders["real"])[0]]}
    rows = {"synthetic": data.synthetic_rows, "real": data.real_images}
    for kind in ("synthetic", "real"):
        drop_from_page_cache(rows[kind].path)
        rows_first_s, rows_rate = images_per_batches(
            getattr(data, f"{kind}_batches")(shape, batch, config.random_seed), batch, batch_count)
        files_first_s, files_rate = images_per_batches(
            synthetic_dataset(paths[kind], shape, batch, config.random_seed), batch, batch_count)
        image_format = "PNG" if kind == "synthetic" else "JPEG"
        show(f"folders: {kind} rows (cold), batch {batch}", f"{rows_rate:.0f}", "images/s",
             f"({size}; first batch {rows_first_s:.2f} s; {batch_count} batches)")
        show(f"folders: {kind} {image_format} files by tf.data, batch {batch}", f"{files_rate:.0f}", "images/s",
             f"({size}; first batch {files_first_s:.2f} s; {batch_count} batches)")
        show(f"folders: {kind} rows / files", f"{rows_rate / files_rate:.2f}", "x")
        results[f"folders_{kind}_rows_images_s"] = rows_rate
        results[f"folders_{kind}_files_images_s"] = files_rate
        results[f"folders_{kind}_rows_over_files"] = rows_rate / files_rate
    return results


def drop_from_page_cache(path):
    """Ask the kernel to forget the file's cached pages (this file only; clean pages go, nothing else changes)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def images_per_batches(batches, batch_size, count):
    """(seconds to the first batch, images/s over the next `count` batches) of a dataset of batches."""
    started = time.monotonic()
    iterator = iter(batches)
    next(iterator)
    first_s, started = time.monotonic() - started, time.monotonic()
    for _ in range(count):
        next(iterator)
    return first_s, count * batch_size / (time.monotonic() - started)


def images_per_second(batches, batch_size, seconds):
    """(seconds to the first batch, images/s over the next `seconds`) of a dataset of batches."""
    started = time.monotonic()
    iterator = iter(batches)
    next(iterator)
    first_s, count, started = time.monotonic() - started, 0, time.monotonic()
    while count == 0 or time.monotonic() - started < seconds:
        next(iterator)
        count += 1
    return first_s, count * batch_size / (time.monotonic() - started)


# ---- the whole ----

def describe(counts, args):
    section(f"SimGAN at scale {args.scale:g} of the published sizes ({num_cpus()} CPUs, load average "
            f"{os.getloadavg()[0]:.2f})")
    parts = {CASE_DATA[case] for case in args.cases}
    if "gaze" in parts:
        show("UnityEyes frames", f"{counts['unityeyes_frames']:,}", "", "(crops hard-linked, not cut by the first "
             "start)" if args.link_crops else "(crops cut by the first start)")
        show("MPIIGaze samples (two eyes each), 15 people", f"{counts['mpiigaze_samples']:,}")
    if "hand" in parts:
        show("NYU hand frames, train / test", f"{counts['hand_train']:,} / {counts['hand_test']:,}")
    if "folders" in parts:
        show(f"folders: {FOLDER_SIDE}x{FOLDER_SIDE}x3 images, synthetic / real",
             f"{counts['folder_synthetic']:,} / {counts['folder_real']:,}", "",
             f"({gigabytes(counts['folder_synthetic'] * FOLDER_ROW_BYTES)} of synthetic pixels)")


def num_cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv=None):
    args = parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C: the running main.py and its workers are killed, the temporary folder removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    counts = sizes(args)
    describe(counts, args)
    started = time.monotonic()
    parts = dict.fromkeys(CASE_DATA[case] for case in args.cases)
    results = {"scale": args.scale, **{key: counts[key] for part in parts for key in PART_COUNTS[part]},
               "link_crops": int(args.link_crops)}
    tmp = tempfile.mkdtemp(prefix="simgan-benchmark-scale-")
    try:
        tree = open_tree(args, tmp, counts)
        check_disk(tree, counts, args)
        section("python main.py: each case's first start (caches removed), then its second start (and the folders "
                "case's third, after one image changed)")
        rows = [row for case in args.cases for row in run_case(case, tree, tmp, args, results)]
        section("python main.py: status (* stopped by SIGINT after --stop-after steps), seconds from launch to the "
                "first step line, to `Training on` (data loaded) and in all, step lines, peak memory, images decoded")
        print_table(rows)
        section(f"Input pipelines alone, in this process ({args.seconds:g} s each after the first batch; folders: "
                f"{args.folder_batches} batches each)")
        for data_set in dict.fromkeys(CASE_DATA[case] for case in args.cases):
            try:
                if data_set == "folders":
                    results.update(in_fresh_process(measure_folder_pipelines, tree, args.folder_batches))
                else:
                    measure_pipelines(tree, data_set, args.seconds, results)
            except Exception as error:  # the program's loaders may be mid-change: the runs' figures still count
                show(f"{data_set}: input pipelines", "failed", "", f"({type(error).__name__}: {error})")
                results[f"{data_set}_pipelines"] = "failed"
    finally:
        if args.keep:
            print(f"[*] --keep: the runs' logs and outputs{'' if args.reuse else ' and the data tree'} are in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["total_s"] = time.monotonic() - started
    print(f"\n[*] done in {results['total_s']:.0f} s")
    print(key_values(results))


if __name__ == "__main__":
    main()
