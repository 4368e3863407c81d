"""The hand estimation task (`--task=estimation --data_set=hand`): the paper's hand experiment.

Shrivastava et al. 2017, section 4.3: train a two-stack hourglass pose estimator on synthetic depth
images of hands, or on the same images refined by a trained refiner, and measure it on the real NYU
test images as the share of the 14 evaluation joints within d pixels, d = 0..20. There is no
validation split and no early stopping: the estimator trains --num_epochs epochs and the weights of
the end are evaluated. `--is_train=False --load_path=NAME` evaluates a run's latest checkpoint again.

Distances are in pixels of a 224x224 crop, the paper's input, whatever --input_height/--input_width
the run uses: a smaller run's distances are scaled up, so d means the same on every run.

The crops stay on disk and are read a batch at a time (NYU's are 3.6 GB a set at 224x224): the cache's
.npy files, and the refined crops, made once into a temporary file that goes with the run.
"""
import functools
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from checkpoints import CheckpointError, Checkpoints
from config import image_shape
from data import nyu
from data.hand_data import DepthCrops
from data.npy_file import temporary_rows
from data.pipelines import array_batches
from distribution import distribute, distributed_batches, is_chief, local_batch, run_on_replicas
from export import load_any_refiner
from model import batch_mean, share_within
from pose_model import (MAX_WITHIN_PIXELS, build_hand_estimator, heatmap_joints, heatmap_loss, joint_distances,
                        joint_heatmaps)
from training_loop import Supervisor, make_optimizer, minimize, write_first_batch
from utils import denormalize, write_json

EVALUATION_FILE = "evaluation.json"  # in the model folder: the last evaluation on the real images
MARKED_PIXELS = 5  # the paper's table gives the share within 5 pixels
PAPER_INPUT = 224  # distances are reported in pixels of a crop of this width


def run_hand_estimation(config, paths, data, strategy=None):
    """Train the hand estimator (on refined crops with --refiner_path) and evaluate it, or only evaluate it."""
    shape = image_shape(config)
    refiner = None
    if config.is_train and config.refiner_path:
        refiner, loaded = load_any_refiner(config.refiner_path, config.log_dir, shape, "refiner_path", "hand")
        print(f"[*] Training on synthetic hand crops refined by {loaded} (refined once, into a temporary file)")
    sets = hand_estimation_sets(data, shape, config.batch_size, refiner)
    trainer = HandEstimatorTrainer(config, paths, sets, strategy)
    return trainer.train() if config.is_train else trainer.evaluate()


@dataclass
class HandSets:
    """uint8 crops (NpyRows on disk, or numpy arrays) with their joints in input pixels; [-1, 1] floats per batch."""
    training_images: object       # (N, H, W) uint8: the synthetic crops, refined when `refined`
    training_joints: np.ndarray   # (N, 14, 2) float32
    test_images: object           # (M, H, W) uint8: the real test crops
    test_joints: np.ndarray       # (M, 14, 2) float32
    input_shape: tuple
    refined: bool
    is_sample: bool               # the bundled sample, not NYU's frames


def hand_estimation_sets(data, input_shape, batch_size, refine=None):
    """The estimator's sets; the synthetic crops refined once, into a temporary file, when refine (a refiner) is given."""
    training = data.synthetic.images
    if refine is not None:
        training = refine_crops(training, input_shape, batch_size, refine, data.folder)
    test = data.test if data.test is not None else DepthCrops(np.zeros((0, *input_shape[:2]), np.uint8),
                                                              np.zeros((0, len(nyu.EVALUATION_JOINTS), 2), np.float32),
                                                              np.zeros(0, np.int32))
    print(f"[*] {len(training)} {'refined' if refine else 'synthetic'} hand crops to train on; "
          f"{len(test)} real test crops to evaluate on")
    return HandSets(training, data.synthetic.joints, test.images, test.joints, tuple(input_shape),
                    refine is not None, data.is_sample)


def refine_crops(images, input_shape, batch_size, refine, folder):
    """uint8 crops refined batch by batch, quantised back to uint8 as test mode's PNGs are: an NpyRows.

    Written to a hidden temporary file in folder (else in the system's temporary folder) whose name is
    removed at once: it lasts as long as the rows returned, and a run that stops leaves nothing behind.
    """
    def batches():
        dataset = array_batches(images, input_shape, batch_size)
        for batch in tqdm(dataset, total=-(-len(images) // batch_size), desc="Refine training crops"):
            yield denormalize(refine(batch))[..., 0]

    return temporary_rows(folder, input_shape[:2], np.uint8, batches, "the refined crops")


class HandEstimatorTrainer:
    """Owns the hand estimator, its optimizer, the epoch counter and the run's checkpoints."""

    def __init__(self, config, paths, sets, strategy=None):
        self.config, self.paths, self.sets = config, paths, sets
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        self.input_shape = tuple(sets.input_shape)
        with self.strategy.scope():
            self.estimator = build_hand_estimator(
                self.input_shape, num_joints=sets.test_joints.shape[1], stacks=config.estimator_stacks,
                filters=config.estimator_filters, depth=config.estimator_depth)
            self.optimizer = make_optimizer(config, self.strategy.num_replicas_in_sync)
            self.optimizer.build(self.estimator.trainable_variables)
        self.heatmap_shape = tuple(self.estimator.output.shape[2:4])  # (H/4, W/4)
        # What the weights were trained on lives with them, so evaluating again needs no training set.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.trained_on_refined = tf.Variable(False, trainable=False, name="trained_on_refined")
        state = tf.train.Checkpoint(estimator=self.estimator, optimizer=self.optimizer, epoch=self.epoch,
                                    trained_on_refined=self.trained_on_refined)
        self.checkpoints = Checkpoints(state, paths.model_dir, max_to_keep=1, every_secs=config.checkpoint_secs,
                                       chief=self.chief)
        replica_step = tf.function(self._train_step, jit_compile=config.jit_compile)
        self.compiled_step = tf.function(functools.partial(run_on_replicas, self.strategy, replica_step))

    def predict_joints(self, images):
        """Joints (u, v) in input pixels the estimator finds in images: (batch, joints, 2).

        Eager, not a tf.function: evaluation runs once, and tracing a graph of some 200 layers costs more
        than the eager calls' overhead on a whole test set.
        """
        return heatmap_joints(self.estimator(images, training=False), self.input_shape)

    def train_step(self, images, joints):
        """One step on a global batch: {"estimator/loss", "estimator/joint_error"} over that batch."""
        return self.compiled_step(distribute(self.strategy, (images, joints)))

    def _train_step(self, batch):
        """Per replica: one step on the heatmap loss of every stack; the loss and mean joint error (pixels), shares."""
        images, joints = batch
        targets = joint_heatmaps(joints, self.heatmap_shape, self.input_shape, self.config.heatmap_sigma)
        with tf.GradientTape() as tape:
            predicted = self.estimator(images, training=True)                  # (batch, stacks, H/4, W/4, joints)
            loss = heatmap_loss(predicted, targets, self.config.batch_size)
        minimize(self.optimizer, tape, loss, self.estimator.trainable_variables)
        distances = joint_distances(heatmap_joints(predicted, self.input_shape), joints)  # (batch, joints)
        error = batch_mean(tf.reduce_mean(distances, axis=1), self.config.batch_size)
        return {"estimator/loss": loss, "estimator/joint_error": error}

    # ---- training ----

    def train(self):
        """Train to --num_epochs (resuming the run's latest checkpoint), then evaluate the weights on the real ones."""
        self._restore()
        finished = True
        if int(self.epoch.numpy()) < self.config.num_epochs:
            writer = (tf.summary.create_file_writer(self.paths.model_dir) if self.chief
                      else tf.summary.create_noop_writer())
            with writer.as_default(), Supervisor(self.config, self.checkpoints, self.strategy) as supervisor:
                finished = self._train_epochs(supervisor)
            writer.flush()
            self.checkpoints.save(int(self.optimizer.iterations.numpy()))
        self.checkpoints.close()
        if not finished:
            print(f"[*] Stopped; resume with --load_path={self.paths.model_name}")
            return None
        return self.evaluate() if self.chief else None

    def _restore(self):
        """Resume the run folder's training state, if it has one, on the same kind of images."""
        latest = self.checkpoints.restore_latest()
        refined = bool(self.sets.refined)
        if latest is not None:
            if bool(self.trained_on_refined.numpy()) != refined:
                raise CheckpointError(f"{latest} was trained on {_kind(not refined)} images; resuming it on "
                                      f"{_kind(refined)} ones would mix both: pass another --load_path")
            tqdm.write(f"[*] Restored {latest}: epoch {int(self.epoch.numpy())}, "
                       f"step {int(self.optimizer.iterations.numpy())}")
        self.trained_on_refined.assign(refined)

    def _training_batches(self, seed):
        """An iterator of (images in [-1, 1], joints): shuffled with seed, reshuffled every epoch, fixed-size
        global batches, each replica's share read from disk by its own worker's pipeline."""
        return distributed_batches(
            self.strategy, lambda replica_batch, shard: array_batches(
                self.sets.training_images, self.input_shape, replica_batch, seed, labels=self.sets.training_joints,
                shard=shard),
            self.config.batch_size)

    def _train_epochs(self, supervisor):
        """Epochs up to --num_epochs; False when a stop was requested."""
        steps_per_epoch = len(self.sets.training_images) // self.config.batch_size  # checked: at least 1
        seed = self.config.random_seed + int(self.optimizer.iterations.numpy())  # a resumed run sees fresh batches
        batches = self._training_batches(seed)
        while int(self.epoch.numpy()) < self.config.num_epochs:
            epoch = int(self.epoch.numpy())
            done = min(max(int(self.optimizer.iterations.numpy()) - epoch * steps_per_epoch, 0), steps_per_epoch)
            errors = []
            for _ in tqdm(range(done, steps_per_epoch), desc=f"Train hand estimator, epoch {epoch + 1}",
                          initial=done, total=steps_per_epoch):
                images, joints = next(batches)
                if int(self.optimizer.iterations.numpy()) == 0 and self.chief:
                    write_first_batch(local_batch(self.strategy, images), self.config,
                                      self.paths.sample_dir)
                values = self.train_step(images, joints)
                step = int(self.optimizer.iterations.numpy())
                supervisor.log(values, step)
                errors.append(float(values["estimator/joint_error"]))
                if not supervisor.checkpoint_and_continue(step):
                    return False
            self.epoch.assign_add(1)
            tqdm.write(f"[*] Epoch {epoch + 1}/{self.config.num_epochs}: mean training joint error "
                       f"{np.mean(errors) if errors else float('nan'):.2f} pixels")
            self.checkpoints.save(int(self.optimizer.iterations.numpy()))
        return True

    # ---- evaluation on the real images ----

    def evaluate(self):
        """The share of real test joints within 0..20 pixels, and the mean error: table, TensorBoard, JSON."""
        latest = self.checkpoints.restore_latest()
        if latest is None:
            raise CheckpointError(f"no hand estimator checkpoint in {self.paths.model_dir}: train one first "
                                  f"(python main.py --task=estimation --data_set=hand) or pass the --load_path of one")
        count = len(self.sets.test_images)
        batches = array_batches(self.sets.test_images, self.input_shape, self.config.batch_size,
                                labels=self.sets.test_joints)
        scale = PAPER_INPUT / self.input_shape[1]
        distances = scale * np.concatenate([joint_distances(self.predict_joints(images), joints).numpy()
                                            for images, joints in tqdm(batches, desc="Evaluate on real images")])
        within = share_within(distances, MAX_WITHIN_PIXELS).numpy()
        results = {
            "model": self.paths.model_name, "checkpoint": latest,
            "trained_on": _kind(bool(self.trained_on_refined.numpy())),
            "epoch": int(self.epoch.numpy()), "step": int(self.optimizer.iterations.numpy()),
            "real_images": count, "joints": int(distances.shape[1]),
            "mean_joint_error": float(np.mean(distances)), "median_joint_error": float(np.median(distances)),
            "share_within_pixels": {str(pixels): float(share) for pixels, share in enumerate(within)},
        }
        table = evaluation_table([results])
        print(table)
        self._write_evaluation_summaries(results, within, table)
        path = os.path.join(self.paths.model_dir, EVALUATION_FILE)
        write_json(path, results)
        print(f"[*] Wrote {path}")
        return results

    def _write_evaluation_summaries(self, results, within, table):
        step = results["step"]  # the step of the weights evaluated, in training and evaluation mode alike
        with tf.summary.create_file_writer(self.paths.model_dir).as_default() as writer:
            tf.summary.scalar("real/joint_error", results["mean_joint_error"], step=step)
            tf.summary.scalar(f"real/within_{MARKED_PIXELS}_pixels", within[MARKED_PIXELS], step=step)
            for pixels, share in enumerate(within):  # the paper's plot: x-axis pixels, not steps
                tf.summary.scalar("real/share_within_pixels", share, step=pixels)
            tf.summary.text("real/evaluation", f"<pre>{table}</pre>", step=step)
            writer.flush()


def _kind(refined):
    return "refined" if refined else "synthetic"


def evaluation_table(runs):
    """One row per run (its evaluation results): the share of real joints within d pixels, d = 0..20, in %.

    The paper's table gives d = 5; that column is bracketed.
    """
    name_width = max(len("model"), *(len(run["model"]) for run in runs))

    def cell(pixels, text):
        return f"[{text:>5}]" if pixels == MARKED_PIXELS else f" {text:>5} "

    columns = range(MAX_WITHIN_PIXELS + 1)
    header = f"    {'model':<{name_width}}  trained on" + "".join(cell(d, f"{d}px") for d in columns) + "  mean error"
    lines = [f"[*] Share of the real test joints within d pixels (%), {runs[0]['real_images']} images, "
             f"{runs[0]['joints']} joints each; [{MARKED_PIXELS}px]: the paper's table", header]
    for run in runs:
        shares = "".join(cell(d, f"{100 * run['share_within_pixels'][str(d)]:.1f}") for d in columns)
        lines.append(f"    {run['model']:<{name_width}}  {run['trained_on']:<10}{shares}  "
                     f"{run['mean_joint_error']:7.2f}px")
    return "\n".join(lines)
