"""The estimation task (`--task=estimation`): does refinement help? The paper's evaluation, for either data set.

Train a data set's estimator on its synthetic images, or on the same images refined by a trained
refiner (`--refiner_path`), and measure it on the real ones as the paper does: the mean error and the
share of errors within d units (gaze: real eyes within d degrees; hand: real test joints within d
pixels of a 224-wide crop). Where the data set holds out a validation split (gaze, by file), its error
decides when to stop and which weights to keep (MODEL_DIR/best); without one (hand), the estimator
trains --num_epochs epochs and the weights of the end are evaluated. The real images are only ever
evaluated. What differs between data sets is their EstimationTask: model.GAZE_ESTIMATION,
pose_model.HAND_ESTIMATION.
"""
import functools
import os
import types

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from checkpoints import CheckpointError, Checkpoints
from config import image_shape
from distribution import distribute, distributed_batches, is_chief, local_batch, run_on_replicas
from export import load_any_refiner
from hparams import ESTIMATION_FLAGS, write_hparams
from model import batch_mean, share_within
from training_loop import Supervisor, make_optimizer, minimize, write_first_batch
from utils import load_params, write_json

EARLY_STOPPING_PATIENCE = 3  # epochs without a lower validation error before training stops
EVALUATION_FILE = "evaluation.json"  # in the model folder: the last evaluation on the real images


def run_estimation(config, paths, data, task, strategy=None):
    """Train the estimator (on refined images with --refiner_path) and evaluate it, or only evaluate it."""
    shape = image_shape(config)
    refiner = None
    if config.is_train and config.refiner_path:
        refiner, loaded = load_any_refiner(config.refiner_path, config.log_dir, shape, "refiner_path", config.data_set,
                                           config.refiner)
        print(f"[*] Training on synthetic images refined by {loaded} (refined once, into temporary files)")
    trainer = EstimatorTrainer(config, paths, data.estimation_sets(shape, config.batch_size, refiner), task, strategy)
    return trainer.train() if config.is_train else trainer.evaluate()


class EstimatorTrainer:
    """Owns the estimator, its optimizer, the epoch and early-stopping state and the checkpoints."""

    def __init__(self, config, paths, sets, task, strategy=None):
        self.config, self.paths, self.sets, self.task = config, paths, sets, task
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        self.input_shape = tuple(sets.input_shape)
        with self.strategy.scope():
            self.estimator = task.build(self.input_shape, sets.label_shape, config)
            self.optimizer = make_optimizer(config, self.strategy.num_replicas_in_sync)
            self.optimizer.build(self.estimator.trainable_variables)
        # The epoch, the early-stopping state and what the weights were trained on live in the checkpoint: a
        # resumed run stops where it would have, and evaluating again needs no training set.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_error = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_validation_error")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_step")
        self.stale_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="stale_epochs")
        self.trained_on_refined = tf.Variable(bool(sets.refined), trainable=False, name="trained_on_refined")
        # These names are the checkpoints' keys; earlier versions saved either the early-stopping state (gaze)
        # or trained_on_refined (hand), so each may be missing from a checkpoint.
        progress = dict(best_error=self.best_error, best_epoch=self.best_epoch, best_step=self.best_step)
        optional = (*progress, "stale_epochs", "trained_on_refined")
        state = dict(estimator=self.estimator, optimizer=self.optimizer, epoch=self.epoch,
                     stale_epochs=self.stale_epochs, trained_on_refined=self.trained_on_refined, **progress)
        self.checkpoints = Checkpoints(state, paths.model_dir, max_to_keep=1, every_secs=config.checkpoint_secs,
                                       chief=self.chief, optional=optional)
        self.best = Checkpoints(dict(estimator=self.estimator, **progress), os.path.join(paths.model_dir, "best"),
                                max_to_keep=1, name="estimator", chief=self.chief)
        replica_step = tf.function(self._train_step, jit_compile=config.jit_compile)
        self.compiled_step = tf.function(functools.partial(run_on_replicas, self.strategy, replica_step))

    @property
    def validating(self):
        """The data set holds out a validation split: it decides when to stop and which weights to keep."""
        return self.sets.validation is not None

    def train_step(self, images, labels):
        """One step on a global batch: {"estimator/loss", "estimator/<error>"} over that batch."""
        return self.compiled_step(distribute(self.strategy, (images, labels)))

    def _train_step(self, batch):
        """Per replica: one optimizer step on the task's loss; the loss and mean error, shares of the batch's."""
        images, labels = batch
        with tf.GradientTape() as tape:
            outputs = self.estimator(images, training=True)
            loss = self.task.loss(outputs, labels, self.input_shape, self.config, self.config.batch_size)
        minimize(self.optimizer, tape, loss, self.estimator.trainable_variables)
        errors = tf.cast(self.task.errors(outputs, labels, self.input_shape), tf.float32)
        error = batch_mean(tf.reduce_mean(errors, axis=1), self.config.batch_size)
        return {"estimator/loss": loss, f"estimator/{self.task.error_name}": error}

    def errors(self, batches):
        """Every error of the images of (images, labels) batches, in the task's unit: (N, k) float64.

        Eager calls: evaluation runs once, and tracing the hand estimator's 200 layers costs more than
        the eager calls' overhead on a whole test set.
        """
        parts = [np.asarray(self.task.errors(self.estimator(images, training=False), labels, self.input_shape),
                            np.float64) for images, labels in batches]
        return np.concatenate(parts) if parts else np.zeros((0, 1))

    # ---- training ----

    def train(self):
        """Train until --num_epochs (or the validation error stops improving), then evaluate on the real images."""
        self._restore()
        if self._epochs_left():
            self.summary_writer = (tf.summary.create_file_writer(self.paths.model_dir) if self.chief
                                   else tf.summary.create_noop_writer())
            supervisor = Supervisor(self.config, self.checkpoints, self.strategy)
            with self.summary_writer.as_default(), supervisor:
                finished = self._train_epochs(supervisor)
            self.checkpoints.save(int(self.optimizer.iterations.numpy()))
            self.checkpoints.close()
            self.best.close()
            if not finished:
                print(f"[*] Stopped; resume with --load_path={self.paths.model_name}")
                return None
        return self.evaluate() if self.chief else None

    def _restore(self):
        """Resume the run folder's training state, if it has one, on the same kind of images."""
        latest = self.checkpoints.restore_latest()
        if latest is None:
            return
        if bool(self.trained_on_refined.numpy()) != bool(self.sets.refined):
            raise CheckpointError(f"{latest} was trained on {_kind(not self.sets.refined)} images; resuming it on "
                                  f"{_kind(self.sets.refined)} ones would mix both: pass another --load_path")
        best = (f", best validation error {float(self.best_error.numpy()):.2f} (epoch {int(self.best_epoch.numpy())})"
                if self.validating else "")
        tqdm.write(f"[*] Restored {latest}: epoch {int(self.epoch.numpy())}, "
                   f"step {int(self.optimizer.iterations.numpy())}{best}")

    def _epochs_left(self):
        return (int(self.epoch.numpy()) < self.config.num_epochs
                and int(self.stale_epochs.numpy()) < EARLY_STOPPING_PATIENCE)

    def _train_epochs(self, supervisor):
        """Epochs until the cap or the patience runs out; False when a stop was requested."""
        steps_per_epoch = len(self.sets.training[0]) // self.config.batch_size  # checked: at least 1
        seed = self.config.random_seed + int(self.optimizer.iterations.numpy())  # a resumed run sees fresh batches
        batches = distributed_batches(
            self.strategy, lambda replica_batch, shard: self.sets.training_batches(replica_batch, seed, shard),
            self.config.batch_size)
        while self._epochs_left():
            errors = self._train_epoch(batches, steps_per_epoch, supervisor)
            if errors is None:
                return False
            self._end_epoch(errors)
        if int(self.stale_epochs.numpy()) >= EARLY_STOPPING_PATIENCE:
            print(f"[*] Validation error has not improved for {EARLY_STOPPING_PATIENCE} epochs: stopping")
        return True

    def _train_epoch(self, batches, steps_per_epoch, supervisor):
        """One pass over the training set (resumed mid-epoch where the checkpoint left it): its steps' mean
        errors, or None when a stop was requested."""
        epoch = int(self.epoch.numpy())
        done = min(max(int(self.optimizer.iterations.numpy()) - epoch * steps_per_epoch, 0), steps_per_epoch)
        errors = []
        for _ in tqdm(range(done, steps_per_epoch), desc=f"Train estimator, epoch {epoch + 1}",
                      initial=done, total=steps_per_epoch):
            images, labels = next(batches)
            if int(self.optimizer.iterations.numpy()) == 0 and self.chief:
                write_first_batch(local_batch(self.strategy, images), self.config, self.paths.sample_dir)
            losses = self.train_step(images, labels)
            step = int(self.optimizer.iterations.numpy())
            supervisor.log(losses, step)
            errors.append(float(losses[f"estimator/{self.task.error_name}"]))
            if not supervisor.checkpoint_and_continue(step):
                return None
        return errors

    def _end_epoch(self, training_errors):
        """Count the epoch; validate, keeping the weights when they are the best so far; checkpoint."""
        self.epoch.assign_add(1)
        epoch, step = int(self.epoch.numpy()), int(self.optimizer.iterations.numpy())
        unit = self.task.unit
        message = (f"[*] Epoch {epoch}/{self.config.num_epochs}: mean training error "
                   f"{np.mean(training_errors) if training_errors else float('nan'):.2f} {unit}")
        if self.validating:
            error = float(np.mean(self.errors(self.sets.validation_batches(self.config.batch_size))))
            tf.summary.scalar(f"validation/{self.task.error_name}", error, step=step)
            self.summary_writer.flush()
            if error < float(self.best_error.numpy()):
                self.best_error.assign(error)
                self.best_epoch.assign(epoch)
                self.best_step.assign(step)
                self.stale_epochs.assign(0)
                self.best.save(epoch)
            else:
                self.stale_epochs.assign_add(1)
            message += (f", validation error {error:.2f} {unit} (best {float(self.best_error.numpy()):.2f}, "
                        f"epoch {int(self.best_epoch.numpy())})")
        tqdm.write(message)
        self.checkpoints.save(step)

    # ---- evaluation on the real images ----

    def evaluate(self):
        """Mean error and the share within 0..max_within units on the real images: table, TensorBoard, JSON."""
        checkpoint, epoch, step, validation_error = self._restore_evaluated()
        count = len(self.sets.test[0])
        batches = tqdm(self.sets.test_batches(self.config.batch_size), total=-(-count // self.config.batch_size),
                       desc="Evaluate on real images")
        errors = self.errors(batches)
        within = share_within(errors, self.task.max_within).numpy()
        name, unit = self.task.error_name, self.task.unit
        params = load_params(self.paths.model_dir)
        refiner_path = params.get("refiner_path", "")
        results = {
            "model": self.paths.model_name, "checkpoint": checkpoint, "data_set": self.config.data_set,
            "trained_on": _kind(bool(self.trained_on_refined.numpy())), "refiner_path": refiner_path,
            "refiner": params.get("refiner", "latest") if refiner_path else "", "epoch": epoch, "step": step,
            **({f"validation_{name}": validation_error} if validation_error is not None else {}),
            "real_images": count, **self.sets.facts,
            f"mean_{name}": float(np.mean(errors)), f"median_{name}": float(np.median(errors)),
            f"share_within_{unit}": {str(threshold): float(share) for threshold, share in enumerate(within)},
        }
        table = evaluation_table([results], self.task)
        print(table)
        self._write_evaluation_summaries(results, within, table)
        path = os.path.join(self.paths.model_dir, EVALUATION_FILE)
        write_json(path, results)
        print(f"[*] Wrote {path}")
        return results

    def _restore_evaluated(self):
        """Load the weights to evaluate: the best validation epoch's where the run kept some, else the latest.
        (checkpoint, epoch, step, validation error or None) of them; CheckpointError if there are none."""
        best = self.best.restore_latest()
        if best is not None:
            return best, int(self.best_epoch.numpy()), int(self.best_step.numpy()), float(self.best_error.numpy())
        latest = self.checkpoints.restore_latest()
        if latest is None:
            raise CheckpointError(f"no estimator checkpoint in {self.paths.model_dir}: train one first "
                                  f"(python main.py --task=estimation --data_set={self.config.data_set}) or pass "
                                  f"the --load_path of one")
        return latest, int(self.epoch.numpy()), int(self.optimizer.iterations.numpy()), None

    def _write_evaluation_summaries(self, results, within, table):
        step = results["step"]  # the step of the weights evaluated, in training and evaluation mode alike
        name, unit, marked = self.task.error_name, self.task.unit, self.task.marked
        with tf.summary.create_file_writer(self.paths.model_dir).as_default() as writer:
            tf.summary.scalar(f"real/{name}", results[f"mean_{name}"], step=step)
            tf.summary.scalar(f"real/within_{marked}_{unit}", within[marked], step=step)
            for threshold, share in enumerate(within):  # the paper's plot: x-axis degrees or pixels, not steps
                tf.summary.scalar(f"real/share_within_{unit}", share, step=threshold)
            tf.summary.text("real/evaluation", f"<pre>{table}</pre>", step=step)
            # The evaluated run's own flags, not this command's: evaluating again passes only a few.
            trained_with = types.SimpleNamespace(**{**vars(self.config), **load_params(self.paths.model_dir)})
            write_hparams(trained_with, ESTIMATION_FLAGS, (f"real/{name}", f"real/within_{marked}_{unit}"),
                          trained_on=results["trained_on"])
            writer.flush()


def _kind(refined):
    return "refined" if refined else "synthetic"


def evaluation_table(runs, task):
    """The evaluations of runs side by side: a column a run, a row for each d = 0..max_within, the share of
    errors within d units (%); the paper's table's d is marked."""
    unit, name = task.unit, task.error_name
    width = max(9, *(len(run["model"]) for run in runs))
    first = runs[0]
    each = f", {first['joints']} joints each" if "joints" in first else ""
    lines = [f"[*] The share of errors within d {unit} (%) on {first['real_images']} real images{each}",
             f"    {'d':>4}  " + "  ".join(f"{run['model']:>{width}}" for run in runs),
             f"    {'':>4}  " + "  ".join(f"{run['trained_on']:>{width}}" for run in runs)]
    for threshold in range(task.max_within + 1):
        shares = "  ".join(f"{100 * run[f'share_within_{unit}'][str(threshold)]:>{width}.1f}" for run in runs)
        mark = "  <- the paper's table" if threshold == task.marked else ""
        lines.append(f"    {threshold:>4}  {shares}{mark}")
    lines.append(f"    {'mean':>4}  " + "  ".join(f"{run[f'mean_{name}']:>{width}.2f}" for run in runs) + f"  {unit}")
    return "\n".join(lines)
