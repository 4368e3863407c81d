"""Test mode: refine every image of a folder with a trained refiner (`--is_train=False`).

The folder holds UnityEyes frames (their crops are refined) or any eye images (PNG or JPEG, colour
or grey: each is refined as it is); with `--data_set=hand`, every synthetic hand crop of the NYU
training split is refined, named by its frame; with `--data_set=folders`, every image of the synthetic
folder's tree, written in the same tree. The refiner is a run's (built alone and restored from its latest
checkpoint: no discriminator, optimizers or history buffer) or an export (`.keras` or SavedModel).
"""
import collections
import os
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf
from tqdm import tqdm

from config import image_shape, resolve_folder_flags
from data.reports import summary
from export import load_any_refiner, trained_input_shape
from utils import OutputError, denormalize, save_image


def take_trained_input(config):
    """--data_set=folders in test mode: the input the flags leave open is the one the refiner was trained on."""
    resolve_folder_flags(config, *trained_input_shape(config.load_path, config.log_dir, "load_path"))


def refine_folder(config, paths, data):
    """Refine every image once, in sorted order, into OUTPUT_DIR/NAME/ under data.output_name's names
    ({i}_refined.png; for folders the input's tree and stems, as PNG).

    Images already refined (a run interrupted earlier) are left as they are and not refined again.
    """
    output, synthetic = os.path.realpath(paths.output_dir), os.path.realpath(data.synthetic_dir)
    inside = config.data_set == "folders" and output.startswith(os.path.join(synthetic, ""))  # read as a tree
    if output == synthetic or inside:
        raise OutputError(f"--output_dir would write into the input folder {synthetic}")
    shape = image_shape(config)
    # An export as it is; a run's refiner alone from its latest checkpoint (no discriminator, optimizers or buffer).
    refine, loaded = load_any_refiner(config.load_path, config.log_dir, shape, "load_path", config.data_set,
                                     config.refiner)
    tqdm.write(f"[*] Loaded the refiner of {loaded}")
    targets = _targets(data, paths.output_dir)
    remaining = [name for name, target in targets.items() if not os.path.exists(target)]
    if len(remaining) < len(targets):
        print(f"[*] {len(targets) - len(remaining)} images already refined in {paths.output_dir}; refining the rest")
    # Any batch size, one trace: the last batch is smaller than the rest.
    refine = tf.function(refine, input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    batches = data.named_synthetic_batches(remaining, shape, config.batch_size)
    _write_refined(batches, refine, targets, -(-len(remaining) // config.batch_size), config.batch_size)


def _targets(data, output_dir):
    """{synthetic name: the path of its refined image}, their folders made; of two inputs with one output name
    (a.png, a.jpg), the first is refined and the other counted."""
    targets, taken, clashes = {}, set(), []
    for name in data.synthetic_names:
        target = os.path.join(output_dir, data.output_name(name))
        if target in taken:
            clashes.append(name)
            continue
        taken.add(target)
        targets[name] = target
    if clashes:
        summary(f"Skipped {len(clashes)} images whose refined image would have the name of another's", clashes)
    for folder in sorted({os.path.dirname(target) for target in targets.values()}):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create folder {folder}: {error.strerror}") from None
    return targets


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
