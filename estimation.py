"""The estimation task (`--task=estimation`): does refinement help? The paper's evaluation.

Train the gaze estimator on synthetic crops, or on crops refined by a trained refiner
(`--refiner_path`), and measure it on the real eyes. The synthetic set is split by file into
training and validation; the validation error decides when to stop and which weights to keep
(MODEL_DIR/best). The real images are only ever evaluated.
"""
import functools
import json
import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from checkpoints import CheckpointError, Checkpoints
from config import image_shape
from data.gaze_data import estimation_sets
from export import load_any_refiner
from distribution import distribute, distributed_batches, is_chief, local_batch, run_on_replicas
from model import MAX_WITHIN_DEGREES, angular_error, batch_mean, build_estimator, euclidean_loss, share_within
from training_loop import Supervisor, make_optimizer, minimize, write_first_batch
from utils import write_json

EARLY_STOPPING_PATIENCE = 3  # epochs without a lower validation error before training stops
EVALUATION_FILE = "evaluation.json"  # in the model folder: the last evaluation on the real images


def run_estimation(config, paths, data, strategy=None):
    """Train the estimator (on refined crops with --refiner_path) and evaluate it, or only evaluate it."""
    shape = image_shape(config)
    refiner = None
    if config.is_train and config.refiner_path:
        refiner, loaded = load_any_refiner(config.refiner_path, config.log_dir, shape, "refiner_path")
        print(f"[*] Training on synthetic crops refined by {loaded} (refined once, kept in memory)")
    trainer = EstimatorTrainer(config, paths, estimation_sets(data, shape, config.batch_size, refiner), strategy)
    return trainer.train() if config.is_train else trainer.evaluate()


class EstimatorTrainer:
    """Owns the estimator, its optimizer, the early-stopping state and both checkpoint folders."""

    def __init__(self, config, paths, sets, strategy=None):
        self.config, self.paths, self.sets = config, paths, sets
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        shape = image_shape(config)
        with self.strategy.scope():
            self.estimator = build_estimator(shape)
            self.optimizer = make_optimizer(config, self.strategy.num_replicas_in_sync)
            self.optimizer.build(self.estimator.trainable_variables)
        # Epochs and the early-stopping state live in the checkpoint, so a resumed run stops where it would have.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_error = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_validation_error")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_step")
        self.stale_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="stale_epochs")
        # These names are the checkpoints' keys.
        progress = dict(best_error=self.best_error, best_epoch=self.best_epoch, best_step=self.best_step)
        training_state = tf.train.Checkpoint(estimator=self.estimator, optimizer=self.optimizer, epoch=self.epoch,
                                             stale_epochs=self.stale_epochs, **progress)
        self.checkpoints = Checkpoints(training_state, paths.model_dir, max_to_keep=1,
                                       every_secs=config.checkpoint_secs, chief=self.chief)
        self.best = Checkpoints(tf.train.Checkpoint(estimator=self.estimator, **progress),
                                os.path.join(paths.model_dir, "best"), max_to_keep=1, name="estimator", chief=self.chief)
        replica_step = tf.function(self._train_step, jit_compile=config.jit_compile)
        self.compiled_step = tf.function(functools.partial(run_on_replicas, self.strategy, replica_step))
        # Any batch size, one trace: evaluation's last batch is smaller than the rest.
        self.predict = tf.function(lambda images: self.estimator(images, training=False),
                                   input_signature=[tf.TensorSpec((None, *shape), tf.float32)])

    def train_step(self, images, gaze):
        """One step on a global batch: {"estimator/loss", "estimator/angular_error"} over that batch."""
        return self.compiled_step(distribute(self.strategy, (images, gaze)))

    def _train_step(self, batch):
        """Per replica: one Adam step on the Euclidean loss; the loss and mean angular error, shares of the batch's."""
        images, gaze = batch
        with tf.GradientTape() as tape:
            predicted = self.estimator(images, training=True)
            loss = euclidean_loss(predicted, gaze, self.config.batch_size)
        minimize(self.optimizer, tape, loss, self.estimator.trainable_variables)
        error = batch_mean(tf.cast(angular_error(predicted, gaze), tf.float32), self.config.batch_size)
        return {"estimator/loss": loss, "estimator/angular_error": error}

    # ---- training ----

    def train(self):
        """Train until the validation error stops improving (or --num_epochs), then evaluate the best weights."""
        self._restore()
        if self._epochs_left():
            self.summary_writer = (tf.summary.create_file_writer(self.paths.model_dir) if self.chief
                                   else tf.summary.create_noop_writer())
            with self.summary_writer.as_default(), Supervisor(self.config, self.checkpoints, self.strategy) as supervisor:
                finished = self._train_epochs(supervisor)
            self.checkpoints.save(int(self.optimizer.iterations.numpy()))
            self.checkpoints.close()
            self.best.close()
            if not finished:
                print(f"[*] Stopped; resume with --load_path={self.paths.model_name}")
                return None
        return self.evaluate() if self.chief else None  # the chief evaluates the run's best weights

    def _epochs_left(self):
        return int(self.epoch.numpy()) < self.config.num_epochs and int(self.stale_epochs.numpy()) < EARLY_STOPPING_PATIENCE

    def _train_epochs(self, supervisor):
        """Epochs until the cap or the patience runs out; False when a stop was requested."""
        steps_per_epoch = len(self.sets.training[0]) // self.config.batch_size
        seed = self.config.random_seed + int(self.optimizer.iterations.numpy())  # a resumed run sees fresh batches
        batches = distributed_batches(
            self.strategy, lambda replica_batch, shard: self.sets.training_batches(replica_batch, seed, shard),
            self.config.batch_size)
        while self._epochs_left():
            if not self._train_epoch(batches, steps_per_epoch, supervisor):
                return False
            self._end_epoch()
        if int(self.stale_epochs.numpy()) >= EARLY_STOPPING_PATIENCE:
            print(f"[*] Validation error has not improved for {EARLY_STOPPING_PATIENCE} epochs: stopping")
        return True

    def _train_epoch(self, batches, steps_per_epoch, supervisor):
        """One pass over the training split (resumed mid-epoch where the checkpoint left it)."""
        epoch = int(self.epoch.numpy())
        done = min(max(int(self.optimizer.iterations.numpy()) - epoch * steps_per_epoch, 0), steps_per_epoch)
        for _ in tqdm(range(done, steps_per_epoch), desc=f"Train estimator, epoch {epoch + 1}",
                      initial=done, total=steps_per_epoch):
            images, gaze = next(batches)
            if int(self.optimizer.iterations.numpy()) == 0 and self.chief:
                write_first_batch(local_batch(self.strategy, images), self.config, self.paths.sample_dir)
            losses = self.train_step(images, gaze)
            step = int(self.optimizer.iterations.numpy())
            supervisor.log(losses, step)
            if not supervisor.checkpoint_and_continue(step):
                return False
        return True

    def _end_epoch(self):
        """Validate; keep the weights if they are the best so far; count the epochs since."""
        error = float(np.mean(self._errors(self.sets.validation_batches(self.config.batch_size))))
        self.epoch.assign_add(1)
        epoch, step = int(self.epoch.numpy()), int(self.optimizer.iterations.numpy())
        tf.summary.scalar("validation/angular_error", error, step=step)
        self.summary_writer.flush()
        if error < float(self.best_error.numpy()):
            self.best_error.assign(error)
            self.best_epoch.assign(epoch)
            self.best_step.assign(step)
            self.stale_epochs.assign(0)
            self.best.save(epoch)
        else:
            self.stale_epochs.assign_add(1)
        tqdm.write(f"[*] Epoch {epoch}/{self.config.num_epochs}: validation error {error:.2f} degrees "
                   f"(best {float(self.best_error.numpy()):.2f}, epoch {int(self.best_epoch.numpy())})")
        self.checkpoints.save(step)

    def _errors(self, batches):
        """Angular errors (degrees) of every image of (images, gaze) batches: (N,) float64."""
        return np.concatenate([angular_error(self.predict(images), gaze).numpy() for images, gaze in batches])

    def _restore(self):
        """Resume the training state of the run folder, if it has one."""
        latest = self.checkpoints.restore_latest()
        if latest is not None:
            tqdm.write(f"[*] Restored {latest}: epoch {int(self.epoch.numpy())}, step {int(self.optimizer.iterations.numpy())}, "
                       f"best validation error {float(self.best_error.numpy()):.2f} (epoch {int(self.best_epoch.numpy())})")

    # ---- evaluation on the real images ----

    def evaluate(self):
        """Mean angular error and the share within 0..25 degrees on the real images: table, TensorBoard, JSON."""
        checkpoint = self._restore_best()
        count = len(self.sets.real[0])
        batches = tqdm(self.sets.real_batches(self.config.batch_size), total=-(-count // self.config.batch_size),
                       desc="Evaluate on real images")
        errors = self._errors(batches)
        within = share_within(errors).numpy()
        refiner_path = self._training_params().get("refiner_path", "")
        results = {
            "model": self.paths.model_name, "checkpoint": checkpoint,
            "trained_on": "refined" if refiner_path else "synthetic", "refiner_path": refiner_path,
            "best_epoch": int(self.best_epoch.numpy()), "best_step": int(self.best_step.numpy()),
            "validation_angular_error": float(self.best_error.numpy()),
            "real_images": len(errors), "right_eyes_mirrored": self.sets.right_eyes_mirrored,
            "is_sample": bool(self.sets.is_sample),
            "mean_angular_error": float(np.mean(errors)), "median_angular_error": float(np.median(errors)),
            "share_within_degrees": {str(degrees): float(share) for degrees, share in enumerate(within)},
        }
        table = evaluation_table(results)
        print(table)
        self._write_evaluation_summaries(results, within, table)
        path = os.path.join(self.paths.model_dir, EVALUATION_FILE)
        write_json(path, results)
        print(f"[*] Wrote {path}")
        return results

    def _write_evaluation_summaries(self, results, within, table):
        step = int(self.best_step.numpy())  # the step of the weights evaluated, in training and evaluation mode alike
        with tf.summary.create_file_writer(self.paths.model_dir).as_default() as writer:
            tf.summary.scalar("real/angular_error", results["mean_angular_error"], step=step)
            tf.summary.scalar("real/within_7_degrees", within[7], step=step)
            for degrees, share in enumerate(within):  # the paper's Figure 7: x-axis degrees, not steps
                tf.summary.scalar("real/share_within_degrees", share, step=degrees)
            tf.summary.text("real/evaluation", f"<pre>{table}</pre>", step=step)
            writer.flush()

    def _training_params(self):
        """The flags the model was trained with (params.json), or {} if they were not saved."""
        try:
            with open(os.path.join(self.paths.model_dir, "params.json"), "rb") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    def _restore_best(self):
        """Load the weights of the best validation epoch; CheckpointError if there are none."""
        latest = self.best.restore_latest()
        if latest is None:
            raise CheckpointError(f"no estimator checkpoint in {self.best.manager.directory}: train one first "
                                  f"(python main.py --task=estimation) or pass the --load_path of one")
        return latest


def evaluation_table(results):
    """The evaluation as text: mean error, then the share of real images within d degrees, d = 0..25."""
    lines = [f"[*] {results['model']} (trained on {results['trained_on']} images, best epoch {results['best_epoch']}) "
             f"on {results['real_images']} real images:",
             f"    mean angular error {results['mean_angular_error']:.2f} degrees "
             f"(median {results['median_angular_error']:.2f})",
             "    degrees  within"]
    for degrees in range(MAX_WITHIN_DEGREES + 1):
        lines.append(f"    {degrees:7d}  {100 * results['share_within_degrees'][str(degrees)]:5.1f}%")
    return "\n".join(lines)
