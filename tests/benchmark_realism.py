"""Where the realism probe's accuracy comes from: what tells refined images from real ones, and what could not.

    python tests/benchmark_realism.py RUN [RUN ...] [--log_dir=logs] [--data_dir=data]

A script, not a test. For the runs named (gaze runs, on the data they trained on) it takes the probes'
held-out images again (the same seed and count as the run), refines the synthetic ones with each run's
latest refiner, and prints the realism probe's cross-validated accuracy three ways: on all its features,
on the pixels alone (averaged down, probes.image_features) and on the global features alone (grey-level
histogram and statistics). Beside the runs, two references: the unrefined synthetic images (the mark a
refiner starts from), and the held-out real images at even places against those at odd places (what the
classifier makes of two sets of the same domain, half as large: the floor).
"""
import argparse
import os
import sys

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(TESTS)]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")

import tensorflow as tf  # noqa: E402

from checkpoints import load_refiner  # noqa: E402
from config import get_config, image_shape, probe_images  # noqa: E402
from data.gaze_data import load_gaze_data  # noqa: E402
from probes import _shrink, _grey, classifier_accuracy, image_features, image_statistics  # noqa: E402
from utils import denormalize, load_params  # noqa: E402


def accuracies(fake, real, seed):
    """(all features, pixels alone, global alone) realism accuracies of uint8 image sets."""
    fake_features = image_features(fake, image_statistics(fake))
    real_features = image_features(real, image_statistics(real))
    pixels = _shrink(_grey(fake)).shape[1]
    return tuple(classifier_accuracy(fake_features[:, columns], real_features[:, columns], seed)
                 for columns in (slice(None), slice(0, pixels), slice(pixels, None)))


def held_out(run, args):
    """(config, synthetic in [-1, 1], real uint8) of the run's probes, chosen as its training chose them."""
    params = load_params(os.path.join(args.log_dir, run))
    config = get_config([f"--data_dir={args.data_dir}", f"--log_dir={args.log_dir}",
                         f"--random_seed={params.get('random_seed', 123)}",
                         f"--probe_images={params.get('probe_images', 256)}", "--eval_step=1"])
    data = load_gaze_data(config)
    shape = image_shape(config)
    count = probe_images(config, data.num_synthetic, len(data.real_images))
    synthetic, real = data.hold_out(count, shape, config.random_seed)
    return config, synthetic, denormalize(real)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="generative runs under --log_dir (their folder names)")
    parser.add_argument("--log_dir", default="logs")
    parser.add_argument("--data_dir", default="data")
    args = parser.parse_args()
    config, synthetic, real = held_out(args.runs[0], args)
    seed, shape = config.random_seed, image_shape(config)
    rows = {"synthetic": denormalize(synthetic)}
    for run in args.runs:
        refiner = load_refiner(tf.train.latest_checkpoint(os.path.join(args.log_dir, run)), shape)
        rows[run] = denormalize(np.concatenate([refiner(synthetic[start:start + 64], training=False).numpy()
                                                for start in range(0, len(synthetic), 64)]))
    print(f"realism accuracy on {len(real)} held-out synthetic and real images (0.5: cannot tell)")
    print(f"{'':44}{'all':>8}{'pixels':>8}{'global':>8}")
    for name, images in rows.items():
        print(f"{name:44}" + "".join(f"{value:8.2f}" for value in accuracies(images, real, seed)))
    print(f"{'real (even against odd places)':44}" + "".join(
        f"{value:8.2f}" for value in accuracies(real[0::2], real[1::2], seed)))


if __name__ == "__main__":
    main()
