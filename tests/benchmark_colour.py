"""Which self-regularization lets refined colours approach the real ones on colour folders: a measurement.

Writes the procedural colour pair (data/folder_sample.py: renders, and camera images with a warm colour
cast, blur and noise), trains one run per psi (`--self_regularization`) at the same flags, refines the
synthetic folder with each run's refiner and prints, for each: how far the refined images' mean colour
balance moved from the synthetic images' towards the real ones' (1: all the way), the brightness and
grey-level change (the shapes' anchor), and the run's last probes. README, 'Your own data', quotes it.

    python tests/benchmark_colour.py [--count 2000] [--max_step 300] [--batch_size 16] [--out DIR]
                                     [--figure assets/folders_comparison.png]

With --out naming a folder that already holds the runs, they are measured again without training.
The figure's rows: synthetic, refined with each psi, real (at the input size, enlarged 3x).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.folder_sample import colour_balance, write_folder_pair  # noqa: E402
from utils import img_tile, save_image  # noqa: E402

PSIS = ("identity", "channel_mean", "colour_cast")


def main_command(pair, work, psi, args, *extra):
    return [sys.executable, "main.py", "--data_set=folders", f"--synthetic_image_dir={pair.synthetic_dir}",
            f"--real_image_dir={pair.real_dir}", f"--data_dir={work}/data", f"--log_dir={work}/logs/{psi}",
            f"--sample_dir={work}/samples/{psi}", f"--output_dir={work}/outputs/{psi}",
            f"--self_regularization={psi}", f"--max_step={args.max_step}", f"--batch_size={args.batch_size}",
            f"--mixed_precision={args.precision}", *extra]


def train_all(pair, work, args):
    """Train one run per psi not trained yet, in parallel (one process each); their wall time."""
    started = time.time()
    missing = [psi for psi in PSIS if not os.path.isdir(os.path.join(work, "logs", psi))]
    processes = {psi: subprocess.Popen(main_command(pair, work, psi, args), cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=open(os.path.join(work, f"{psi}.log"), "w")) for psi in missing}
    for psi, process in processes.items():
        if process.wait():
            sys.exit(f"[!] the {psi} run failed: see {work}/{psi}.log")
    return time.time() - started


def refined_pixels(pair, work, psi, args):
    """The run's refiner applied to every synthetic image by test mode: uint8 (N, H, W, 3)."""
    (name,) = os.listdir(f"{work}/logs/{psi}")
    subprocess.run(main_command(pair, work, psi, args, "--is_train=False", f"--load_path={name}"), cwd=ROOT,
                   check=True, capture_output=True)
    output = os.path.join(work, "outputs", psi, name)
    paths = sorted(os.path.join(top, file) for top, _, files in os.walk(output) for file in files)
    return np.stack([np.asarray(Image.open(path)) for path in paths]), os.path.join(work, "logs", psi, name)


def input_rows(pair, work):
    """The synthetic and real images as training reads them (the rows at the input size)."""
    from config import get_config
    from data.folder_data import load_folder_data
    config = get_config(["--data_set=folders", f"--synthetic_image_dir={pair.synthetic_dir}",
                         f"--real_image_dir={pair.real_dir}", f"--data_dir={work}/data"])
    data = load_folder_data(config)
    return (data.synthetic_rows[np.arange(len(data.synthetic_rows))],
            data.real_images[np.arange(len(data.real_images))])


def last_probes(model_dir):
    from tensorboard.backend.event_processing import event_accumulator
    import tensorflow as tf
    events = event_accumulator.EventAccumulator(model_dir, size_guidance={"tensors": 0})
    events.Reload()
    return {tag.split("/", 1)[1]: float(tf.make_ndarray(events.Tensors(tag)[-1].tensor_proto))
            for tag in events.Tags()["tensors"] if tag.startswith("probe/")}


def chroma(pixels):
    """Each pixel's channels less their mean, less the image's mean of that: its colour, the image's cast removed."""
    colour = pixels.astype(np.float64) - pixels.astype(np.float64).mean(axis=-1, keepdims=True)
    return colour - colour.mean(axis=(1, 2), keepdims=True)


def colourfulness(pixels):
    """The mean spread of a pixel's channels (standard deviation over R, G, B): 0 for grey images."""
    return float(pixels.astype(np.float64).std(axis=-1).mean())


def progress(refined, synthetic, real):
    """1 - |balance(refined) - balance(real)| / |balance(synthetic) - balance(real)|: the share of the colour
    balance gap closed (0: not at all, 1: all of it)."""
    gap = np.linalg.norm(colour_balance(synthetic) - colour_balance(real))
    return 1.0 - np.linalg.norm(colour_balance(refined) - colour_balance(real)) / gap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--max_step", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", default=None, help="keep everything here (default: a temporary folder)")
    parser.add_argument("--figure", default=os.path.join(ROOT, "assets", "folders_comparison.png"))
    parser.add_argument("--columns", type=int, default=10)
    args = parser.parse_args(argv)
    work = args.out or tempfile.mkdtemp(prefix="simgan-colour-")
    pair = write_folder_pair(os.path.join(work, "pair"), count=args.count, seed=123)
    trained = all(os.path.isdir(os.path.join(work, "logs", psi)) for psi in PSIS)
    seconds = train_all(pair, work, args)
    synthetic, real = input_rows(pair, work)
    grey = lambda pixels: pixels.astype(np.float64).mean(axis=-1)  # noqa: E731
    print(f"{args.count} images a folder, --max_step={args.max_step} --batch_size={args.batch_size}, "
          f"{args.precision}; the runs in parallel: {seconds / 60:.1f} min" + (" (trained before)" if trained else ""))
    print(f"colourfulness (mean spread of a pixel's channels): synthetic {colourfulness(synthetic):.1f}, "
          f"real {colourfulness(real):.1f}")
    print(f"colour balance (R, G, B less grey): synthetic {np.round(colour_balance(synthetic), 1)}, "
          f"real {np.round(colour_balance(real), 1)}")
    rows, figure = {}, [synthetic[:args.columns]]
    for psi in PSIS:
        refined, model_dir = refined_pixels(pair, work, psi, args)
        figure.append(refined[:args.columns])
        probes = last_probes(model_dir)
        rows[psi] = dict(
            balance=np.round(colour_balance(refined), 1).tolist(), gap_closed=round(float(progress(refined, synthetic,
                                                                                                  real)), 3),
            brightness_change=round(float(grey(refined).mean() - grey(synthetic).mean()), 2),
            grey_level_change=round(float(np.abs(grey(refined) - grey(synthetic)).mean()), 2),
            colourfulness=round(colourfulness(refined), 1),
            colour_change=round(float(np.abs(chroma(refined) - chroma(synthetic)).mean()), 2),
            realism=probes.get("realism_accuracy"), realism_synthetic=probes.get("realism_accuracy_synthetic"),
            statistics_distance=probes.get("statistics_distance"))
        print(f"{psi:>13}: {json.dumps(rows[psi])}")
    figure.append(real[np.random.default_rng(0).permutation(len(real))[:args.columns]])
    grid = img_tile(np.concatenate(figure), len(figure), args.columns)
    save_image(Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST), args.figure)
    print(f"(work folder: {work}; figure: {args.figure})")


if __name__ == "__main__":
    main()
