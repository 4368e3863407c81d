"""The README's pictures and domain statistics from a trained run (a script; pytest does not collect it).

    pip install matplotlib   # for the loss curves only; not in requirements.txt
    python tests/make_figures.py --load_path=NAME [--log_dir=logs] [--data_dir=data] [--out=assets] [FLAGS]

Writes OUT/sample_comparison.png (rows: synthetic, refined, real) and OUT/sample_losses.png (the
TensorBoard scalars of each network against its own steps), and prints how far refined images moved
toward the real ones on three image statistics: brightness, contrast and high-frequency energy.
Other flags go to the program's config: with `--data_set=hand` (and the run's input size) the files
are OUT/hand_comparison.png and OUT/hand_losses.png, of the hand crops.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from checkpoints import load_refiner  # noqa: E402
from config import get_config  # noqa: E402
from data.gaze_data import load_gaze_data  # noqa: E402
from data.hand_data import load_hand_data, refine_crops  # noqa: E402
from data.pipelines import crops_on_disk, to_network_input  # noqa: E402
from probes import image_statistics  # noqa: E402
from utils import denormalize, img_tile, run_paths, save_image  # noqa: E402

LOSS_PANELS = {"refiner step": ["refiner/realism_loss", "refiner/regularization_loss", "refiner/loss"],
               "discriminator step": ["synthetic_d_loss", "refiner_d_loss_with_history", "discrim_loss_with_history"]}


def statistics(images):
    """Mean brightness, contrast and high-frequency energy of uint8 images, as the probes measure them."""
    return {name: float(np.mean(values)) for name, values in image_statistics(images).items()}


def everything(rows):
    """All rows of an array on disk (the sample's few thousand images), in memory."""
    return rows[np.arange(len(rows))]


def refine_all(refiner, paths, shape, batch, folder):
    """(synthetic, refined): every crop as uint8 at the input size, and the same crop refined."""
    synthetic = crops_on_disk(paths, shape, batch, folder)
    refined = crops_on_disk(paths, shape, batch, folder, refiner, desc="Refine synthetic images")
    return everything(synthetic), everything(refined)


def comparison(synthetic, refined, real, columns, scale=3):
    rows = np.concatenate([synthetic[:columns], refined[:columns], real[:columns]])
    grid = img_tile(rows, 3, columns)[..., 0]
    return np.asarray(Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST))


def plot_losses(model_dir, path):
    """The scalars as TensorBoard holds them: the refiner's against refiner steps, the discriminator's against its own."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    events = event_accumulator.EventAccumulator(model_dir, size_guidance={"tensors": 0})
    events.Reload()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for axis, (x_label, tags) in zip(axes, LOSS_PANELS.items()):
        for tag in tags:
            if tag in events.Tags()["tensors"]:
                steps = [event.step for event in events.Tensors(tag)]
                values = [float(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)]
                axis.plot(steps, values, label=tag, linewidth=1.2)
        axis.set_xlabel(x_label)
        axis.set_ylabel("loss (sum over patches, batch mean)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0].set_title("refiner")
    axes[1].set_title("discriminator")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load_path", required=True)
    parser.add_argument("--log_dir", default="logs")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--out", default="assets")
    parser.add_argument("--columns", type=int, default=10)
    args, flags = parser.parse_known_args()
    # The training flags (--is_train's default): load_gaze_data reads the real images only for training.
    config = get_config([f"--load_path={args.load_path}", f"--log_dir={args.log_dir}", f"--data_dir={args.data_dir}",
                         "--batch_size=256", *flags])
    paths = run_paths(config)  # nothing is trained or written there: only its checkpoint and events are read
    checkpoint = tf.train.latest_checkpoint(paths.model_dir)
    if checkpoint is None:
        sys.exit(f"[!] no checkpoint in {paths.model_dir}: train a model first or pass the --load_path of one")
    shape = (config.input_height, config.input_width, config.input_channel)
    refiner = load_refiner(checkpoint, shape, config.data_set)
    print(f"[*] Refining with {checkpoint}")
    if config.data_set == "hand":
        data = load_hand_data(config)
        synthetic, real = everything(data.synthetic.images)[..., None], everything(data.real.images)[..., None]
        refined = everything(refine_crops(data.synthetic.images, shape, config.batch_size, refiner, data.folder))[..., None]
    else:
        data = load_gaze_data(config)
        synthetic, refined = refine_all(refiner, data.synthetic_paths, shape, config.batch_size, data.folder)
        real = denormalize(to_network_input(everything(data.real_images), shape))  # as the discriminator sees them
    prefix = "hand" if config.data_set == "hand" else "sample"
    os.makedirs(args.out, exist_ok=True)
    save_image(comparison(synthetic, refined, real[np.random.default_rng(0).permutation(len(real))], args.columns),
               os.path.join(args.out, f"{prefix}_comparison.png"))
    plot_losses(paths.model_dir, os.path.join(args.out, f"{prefix}_losses.png"))
    table = {name: statistics(images) for name, images in
             (("synthetic", synthetic), ("refined", refined), ("real", real))}
    print(f"{'':10}" + "".join(f"{key:>16}" for key in table["real"]))
    for name, values in table.items():
        print(f"{name:10}" + "".join(f"{value:16.2f}" for value in values.values()))


if __name__ == "__main__":
    main()
