"""The README's pictures and domain statistics from a trained run (a script; pytest does not collect it).

    python tests/make_figures.py --load_path=NAME [--log_dir=logs] [--data_dir=data] [--out=assets]

Writes OUT/sample_comparison.png (rows: synthetic, refined, real) and OUT/sample_losses.png (the
TensorBoard scalars), and prints how far refined images moved toward the real ones on three image
statistics: brightness, contrast and high-frequency energy (sensor noise and texture).
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter
from tensorboard.backend.event_processing import event_accumulator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from checkpoints import load_refiner  # noqa: E402
from config import get_config  # noqa: E402
from data.gaze_data import load_gaze_data  # noqa: E402
from data.pipelines import load_crops, to_network_input  # noqa: E402
from utils import denormalize, img_tile, run_paths, save_image  # noqa: E402

LOSS_TAGS = ["refiner/realism_loss", "refiner/regularization_loss", "refiner_d_loss_with_history",
             "synthetic_d_loss", "discrim_loss_with_history"]


def statistics(images):
    """Mean brightness, contrast (std within an image) and high-frequency energy of uint8 images."""
    pixels = images.astype(np.float32)[..., 0]
    detail = pixels - gaussian_filter(pixels, sigma=(0, 1.0, 1.0))
    return {"brightness": pixels.mean(), "contrast": pixels.std(axis=(1, 2)).mean(),
            "high_frequency": detail.std(axis=(1, 2)).mean()}


def refine_all(refiner, paths, shape, batch=256):
    """(synthetic, refined): every crop as uint8 at the input size, and the same crop refined."""
    synthetic = load_crops(paths, shape, batch)
    refined = load_crops(paths, shape, batch, refiner, desc="Refine synthetic images")
    return synthetic, refined


def comparison(synthetic, refined, real, columns, scale=3):
    rows = np.concatenate([synthetic[:columns], refined[:columns], real[:columns]])
    grid = img_tile(rows, 3, columns)[..., 0]
    return np.asarray(Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST))


def loss_panels(model_dir, width=360, height=150):
    """One small line plot per scalar tag, stacked; drawn with Pillow to keep dependencies down."""
    events = event_accumulator.EventAccumulator(model_dir, size_guidance={"tensors": 0})
    events.Reload()
    tags = [tag for tag in LOSS_TAGS if tag in events.Tags()["tensors"]]
    canvas = Image.new("L", (width, height * len(tags)), 255)
    draw = ImageDraw.Draw(canvas)
    for row, tag in enumerate(tags):
        steps = np.array([event.step for event in events.Tensors(tag)], float)
        values = np.array([float(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)])
        top, left, plot_w, plot_h = row * height + 20, 50, width - 60, height - 40
        low, high = values.min(), values.max() + 1e-9
        xs = left + (steps - steps.min()) / max(np.ptp(steps), 1) * plot_w
        ys = top + plot_h - (values - low) / (high - low) * plot_h
        draw.rectangle([left, top, left + plot_w, top + plot_h], outline=160)
        draw.line(list(zip(xs, ys)), fill=0, width=1)
        draw.text((left, top - 14), f"{tag}  ({values[-1]:.3g} at step {int(steps[-1])})", fill=0)
        draw.text((2, top), f"{high:.3g}", fill=80)
        draw.text((2, top + plot_h - 10), f"{low:.3g}", fill=80)
    return np.asarray(canvas)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load_path", required=True)
    parser.add_argument("--log_dir", default="logs")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--out", default="assets")
    parser.add_argument("--columns", type=int, default=10)
    args = parser.parse_args()
    # The training flags (--is_train's default): load_gaze_data reads the real images only for training.
    config = get_config([f"--load_path={args.load_path}", f"--log_dir={args.log_dir}", f"--data_dir={args.data_dir}",
                         "--batch_size=256"])
    paths = run_paths(config)  # nothing is trained or written there: only its checkpoint and events are read
    checkpoint = tf.train.latest_checkpoint(paths.model_dir)
    if checkpoint is None:
        sys.exit(f"[!] no checkpoint in {paths.model_dir}: train a model first or pass the --load_path of one")
    data = load_gaze_data(config)
    shape = (config.input_height, config.input_width, config.input_channel)
    refiner = load_refiner(checkpoint, shape)
    print(f"[*] Refining with {checkpoint}")
    synthetic, refined = refine_all(refiner, data.synthetic_paths, shape, config.batch_size)
    real = denormalize(to_network_input(data.real_images, shape))  # as the discriminator sees them
    os.makedirs(args.out, exist_ok=True)
    save_image(comparison(synthetic, refined, real[np.random.default_rng(0).permutation(len(real))], args.columns),
               os.path.join(args.out, "sample_comparison.png"))
    save_image(loss_panels(paths.model_dir), os.path.join(args.out, "sample_losses.png"))
    table = {name: statistics(images) for name, images in
             (("synthetic", synthetic), ("refined", refined), ("real", real))}
    print(f"{'':10}" + "".join(f"{key:>16}" for key in table["real"]))
    for name, values in table.items():
        print(f"{name:10}" + "".join(f"{value:16.2f}" for value in values.values()))


if __name__ == "__main__":
    main()
