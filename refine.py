"""Test mode: refine every image of a folder with a trained refiner (`--is_train=False`).

The folder holds UnityEyes frames (their crops are refined) or any eye images (PNG or JPEG, colour
or grey: each is refined as it is); with `--data_set=hand`, every synthetic hand crop of the NYU
training split is refined, named by its frame. The refiner is a run's (built alone and restored from its latest
checkpoint: no discriminator, optimizers or history buffer) or an export (`.keras` or SavedModel).
"""
import collections
import os
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf
from tqdm import tqdm

from config import image_shape
from export import load_any_refiner
from utils import OutputError, denormalize, save_image


def refined_name(crop_path):
    """`{i}_cropped.png` -> `{i}_refined.png`: the refined image keeps its frame's number (and label)."""
    stem = os.path.basename(crop_path)
    stem = stem[: -len("_cropped.png")] if stem.endswith("_cropped.png") else os.path.splitext(stem)[0]
    return f"{stem}_refined.png"


def refine_folder(config, paths, data):
    """Refine every image once, in sorted order, into OUTPUT_DIR/NAME/{i}_refined.png ({stem}_refined.png).

    Images already refined (a run interrupted earlier) are left as they are and not refined again.
    """
    if os.path.realpath(paths.output_dir) == os.path.realpath(data.synthetic_dir):
        raise OutputError(f"--output_dir would write into the input folder {paths.output_dir}")
    shape = image_shape(config)
    # An export as it is; a run's refiner alone from its latest checkpoint (no discriminator, optimizers or buffer).
    refine, loaded = load_any_refiner(config.load_path, config.log_dir, shape, "load_path", config.data_set)
    tqdm.write(f"[*] Loaded the refiner of {loaded}")
    targets = {name: os.path.join(paths.output_dir, refined_name(name)) for name in data.synthetic_names}
    remaining = [name for name, target in targets.items() if not os.path.exists(target)]
    if len(remaining) < len(targets):
        print(f"[*] {len(targets) - len(remaining)} images already refined in {paths.output_dir}; refining the rest")
    # Any batch size, one trace: the last batch is smaller than the rest.
    refine = tf.function(refine, input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    batches = data.named_synthetic_batches(remaining, shape, config.batch_size)
    _write_refined(batches, refine, targets, -(-len(remaining) // config.batch_size), config.batch_size)


def _write_refined(batches, refine, targets, total, batch_size):
    """PNG encoding and writing run in two threads while the next batch is refined (tf.data decodes ahead)."""
    with ThreadPoolExecutor(max_workers=2) as writer:
        pending = collections.deque()
        for images, names in tqdm(batches, total=total, desc="Refine all synthetic images"):
            for pixels, name in zip(denormalize(refine(images)), names.numpy()):
                pending.append(writer.submit(save_image, pixels, targets[name.decode()]))
            while len(pending) > 2 * batch_size:  # at most two batches wait, in memory
                pending.popleft().result()  # re-raises a write error (a full disk) here
        for future in pending:
            future.result()
