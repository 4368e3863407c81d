"""The benchmark's data sections: test mode (refine.refine_folder), UnityEyes preprocessing, peak memory.

A module of tests/benchmark.py, not a test. Test mode is timed as `python main.py --is_train=False`
runs it (refine_folder: load the refiner, then decode, refine, encode and write every crop) against
its compute bound, and stage by stage; the memory figure is that of a `python main.py` child process.
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from benchmark_common import make_config, median, quiet, quietly, section, show, tf_ceiling, timed
from checkpoints import load_refiner
from data.gaze_data import load_gaze_data
from data.pipelines import synthetic_dataset
from data.gaze_sample import write_sample
from data.unityeyes import CROP_SUFFIX, prepare_crops
from refine import _write_refined, refine_folder
from utils import denormalize, save_image
from worker_processes import default_workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_TIMEOUT_SECS = 900


def measure_test_mode(args, tmp, train_paths, refiner_flops, bf16, results):
    """refine_folder on the sample's crops (the checkpoint of train_paths) against its compute bound, and each
    of its stages alone; bf16 is a Trainer whose refiner computes in bfloat16."""
    with quiet():
        config, paths = make_config(args, tmp, "--is_train=False", f"--load_path={train_paths.model_dir}")
        data = load_gaze_data(config)  # test mode: the synthetic crops only
    count, batch = len(data.synthetic_paths), config.batch_size
    shape = (config.input_height, config.input_width, config.input_channel)
    images = tf.random.uniform((batch, *shape), -1, 1)
    measure_ceiling = tf_ceiling(batch, config.input_height, config.input_width)
    scratch, overlap = os.path.join(tmp, "test_stages"), os.path.join(tmp, "test_overlap")
    os.makedirs(scratch)
    checkpoint = tf.train.latest_checkpoint(paths.model_dir)
    refine = load_traced_refiner(checkpoint, shape, images)
    bf16.refine(images)  # trace
    batches = -(-count // batch)
    decoded = synthetic_dataset(data.synthetic_paths, shape, batch, 0, training=False)
    pixels = denormalize(np.concatenate([crops for crops, _ in decoded]))  # real crops: PNG size depends on content
    targets = {path: os.path.join(overlap, data.output_name(path)) for path in data.synthetic_paths}
    stages = {
        "test": lambda: quietly(refine_folder, config, paths, data),
        "load": lambda: load_traced_refiner(checkpoint, shape, images),
        "overlapped": lambda: _write_refined(synthetic_dataset(data.synthetic_paths, shape, batch, 0, training=False),
                                             refine, targets, batches, batch),
        "refine fp32": lambda: [float(refine(images)[0, 0, 0, 0]) for _ in range(batches)],
        "refine bf16": lambda: [float(bf16.refine(images)[0, 0, 0, 0]) for _ in range(batches)],
        "decode": lambda: [len(names) for _, names in synthetic_dataset(data.synthetic_paths, shape, batch, 0,
                                                                         training=False)],
        "write": lambda: [save_image(image, os.path.join(scratch, f"{index}_refined.png"))
                          for index, image in enumerate(pixels)],
    }
    rates, shares, load_seconds = {name: [] for name in stages if name != "load"}, [], []
    for _ in range(args.repeats):
        for folder in (paths.output_dir, overlap):
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
        ceiling = measure_ceiling(args.ceiling_secs)
        for name, stage in stages.items():
            seconds = timed(stage)[0]
            if name == "load":
                load_seconds.append(seconds)
            else:
                rates[name].append((batches * batch if name.startswith("refine") else count) / seconds)
        shares.append(rates["test"][-1] / (ceiling * 1e9 / refiner_flops))
    report_test_mode(args, results, config, paths, count, rates, shares, refiner_flops, median(load_seconds))


def load_traced_refiner(checkpoint, shape, images):
    """What refine_folder does before its first batch: build the refiner, restore it, trace its tf.function."""
    refiner = load_refiner(checkpoint, shape)
    refine = tf.function(lambda batch: refiner(batch, training=False),
                         input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    float(refine(images)[0, 0, 0, 0])
    return refine


def report_test_mode(args, results, config, paths, count, rates, shares, refiner_flops, load_seconds):
    """Print test mode's figures and each stage's throughput."""
    written = len(os.listdir(paths.output_dir))
    rate = median(rates["test"])
    bound = median(rates["test"]) / median(shares)
    section(f"Test mode: refine.refine_folder on {count} crops, batch {config.batch_size} (median of "
            f"{args.repeats}; the ceiling measured again beside each)")
    show("refined images/s (decode, refine, encode, write)", f"{rate:.1f}", "",
         f"({written} files written; loading the refiner included)")
    show("compute bound: ceiling / refiner forward FLOPs", f"{bound:.1f}", "images/s",
         f"({refiner_flops / 1e9:.3f} GFLOP per image)")
    show("share of the bound reached", f"{100 * median(shares):.1f}", "%")
    print("  each stage of refine_folder alone:")
    show("    load: build, restore, trace the refiner", f"{1000 * load_seconds:.0f}", "ms", "(once per run)")
    show("    _write_refined: the rest, overlapped", f"{median(rates['overlapped']):.1f}", "images/s",
         "(refiner loaded)")
    labels = {"decode": "decode + resize (the tf.data pipeline)", "refine fp32": "refiner, from memory",
              "refine bf16": "refiner in mixed_bfloat16, from memory", "write": "denormalize + save_image (serial)"}
    for name, label in labels.items():
        show(f"    {label}", f"{median(rates[name]):.1f}", "images/s")
    serial = 1 / sum(1 / median(rates[name]) for name in ("decode", "refine fp32", "write"))
    show("    one after the other (1 / sum of 1/rate)", f"{serial:.1f}", "images/s", "(what no overlap gives)")
    results.update(test_img_s=rate, test_bound_img_s=bound, test_bound_pct=100 * median(shares),
                   test_load_s=load_seconds, test_overlapped_img_s=median(rates["overlapped"]),
                   test_decode_img_s=median(rates["decode"]), test_refine_img_s=median(rates["refine fp32"]),
                   test_refine_bf16_img_s=median(rates["refine bf16"]), test_write_img_s=median(rates["write"]))


def measure_preprocessing(args, tmp, results):
    """prepare_crops on freshly written 640x480 UnityEyes frames, crops removed between repetitions."""
    directory = os.path.join(tmp, "preprocess", "gaze", "UnityEyes")
    with quiet():
        write_sample(os.path.join(tmp, "preprocess", "gaze"), num_synthetic=args.preprocess_frames, num_real=2, seed=7)
    rates = []
    for _ in range(args.repeats):
        for name in os.listdir(directory):
            if name.endswith(CROP_SUFFIX):
                os.remove(os.path.join(directory, name))
        seconds, report = timed(prepare_crops, directory)
        assert len(report.paths) == args.preprocess_frames, report.skipped
        rates.append(args.preprocess_frames / seconds)
    section(f"UnityEyes preprocessing: {args.preprocess_frames} frames of 640x480 (jpg + json -> crop PNG), "
            f"{default_workers()} worker processes (median of {args.repeats})")
    show("frames/s", f"{median(rates):.1f}", "", f"(best {max(rates):.1f}; pool start-up included)")
    results["preprocess_frames_s"] = median(rates)


def measure_memory(args, tmp, results):
    """Peak RSS of `python main.py` at the default batch and buffer, for a few iterations, in a child process."""
    steps = ["--max_step=0", "--initial_K_g=1", "--initial_K_d=1"] if args.quick else \
        ["--max_step=2", "--initial_K_g=2", "--initial_K_d=1"]
    run = os.path.join(tmp, "memory")
    command = [sys.executable, "main.py", f"--data_dir={tmp}/data", *steps, "--log_step=1000",
               f"--log_dir={run}/logs", f"--sample_dir={run}/samples", f"--output_dir={run}/outputs"]
    log_path = os.path.join(tmp, "memory.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    main_peak_kb, started = 0, time.monotonic()
    while True:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
        if pid:
            break
        main_peak_kb = max(main_peak_kb, vm_hwm_kb(process.pid))
        if time.monotonic() - started > MEMORY_TIMEOUT_SECS:
            process.kill()
        time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    section(f"Peak memory: python main.py at the default batch 512 and buffer 25600, {' '.join(steps)} "
            f"(1 run, {seconds:.0f} s; the sample has {args.num_frames} synthetic images, at least the 8x8 grid's 64)")
    if process.returncode != 0:
        with open(log_path) as log:
            print(log.read()[-3000:])
        show("peak resident memory", "failed", "", f"(exit status {process.returncode})")
        results["peak_rss_mb"] = "failed"
        return
    # Not wait4's ru_maxrss: it keeps the pages the child shared with this (large) process between fork
    # and exec, and read 3.6 GB where main.py itself peaked at 1.7 GB. VmHWM starts afresh at exec.
    peak_mb = main_peak_kb / 1024
    show("peak resident memory (VmHWM of main.py, polled every 0.2 s)", f"{peak_mb:.0f}", "MB")
    results["peak_rss_mb"] = peak_mb


def vm_hwm_kb(pid):
    """A live process's peak resident memory so far (VmHWM), in kB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def header(args):
    """Print the run's sizes, the machine, the versions and the thread counts (and set torch's)."""
