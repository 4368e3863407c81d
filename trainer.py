"""The Trainer: owns the networks, optimizers, history buffer, checkpoints and summaries.

Read top to bottom: construction, the three step functions (pure arithmetic,
one tf.function each), the training schedule that calls them, then test mode.
At the end, EstimatorTrainer: the gaze estimator of --task=estimation, trained on
synthetic (or refined) crops and evaluated on the real images.
"""
import collections
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from config import check_estimation_split
from data.gaze_data import (as_left_eyes, labelled_dataset, load_crops, load_synthetic_gaze, real_dataset,
                            resize_real, split_by_file, synthetic_dataset)
from data.history_buffer import HistoryBuffer
from layers import denormalize
from model import (MAX_WITHIN_DEGREES, angular_error, build_discriminator, build_estimator, build_refiner,
                   discriminator_losses, euclidean_loss, refiner_losses, self_regularization, share_within)
from utils import OutputError, atomic_write, img_tile, save_image


MICRO_BATCH = 32  # refiner images whose activations are alive at once (tests/benchmark.py: no slower than whole batches)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be read; str(e) is one line."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint stays the latest."""


def make_optimizer(config):
    """Adam (epsilon 1e-8, TF1's default) or SGD; clipnorm clips each gradient tensor on its own.

    Under float16 the loss is scaled so small gradients do not flush to zero (bfloat16 needs no scaling).
    """
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(config.learning_rate, clipnorm=config.max_grad_norm)
    else:
        optimizer = keras.optimizers.Adam(config.learning_rate, epsilon=1e-8, clipnorm=config.max_grad_norm)
    if keras.mixed_precision.global_policy().compute_dtype == "float16":
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def micro_batches(batch_size):
    """Equal parts a refiner batch is split into, each at most MICRO_BATCH images."""
    return next(parts for parts in range(1, batch_size + 1) if batch_size % parts == 0
                and batch_size // parts <= MICRO_BATCH)


def minimize(optimizer, tape, loss, variables):
    """One optimizer step on loss; the loss scale (identity unless float16) is undone by apply_gradients."""
    with tape:  # the scaling must be on the tape too
        scaled_loss = optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled_loss, variables)
    optimizer.apply_gradients(zip(gradients, variables))


def restore_checkpoint(checkpoint, path, partial=False):
    """Load path into checkpoint's objects, each of which must find its values; one-line CheckpointError if not.

    partial: values in the file that nothing here asks for (a training checkpoint's optimizers when
    only the networks are wanted) are fine.
    """
    try:
        status = checkpoint.restore(path)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as error:
        message = str(error).strip().splitlines()[0]
        raise CheckpointError(f"cannot restore {path} (was it made with other flags?): {message}") from None


class Trainer:
    """Builds SimGAN and runs its schedule: refiner warm-up, discriminator warm-up, K_g:K_d alternation."""

    def __init__(self, config, data):
        self.config = config
        self.data = data
        self.image_shape = (config.input_height, config.input_width, config.input_channel)
        self.refiner = build_refiner(self.image_shape)
        self.discriminator = build_discriminator(self.image_shape)
        self.refiner_optimizer = make_optimizer(config)
        self.discriminator_optimizer = make_optimizer(config)
        # Optimizer slots must exist before a restore can fill them.
        self.refiner_optimizer.build(self.refiner.trainable_variables)
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="adversarial_step")
        # The optimizers' `iterations` are the two step counters.
        tracked = dict(refiner=self.refiner, discriminator=self.discriminator, step=self.step,
                       refiner_optimizer=self.refiner_optimizer, discriminator_optimizer=self.discriminator_optimizer)
        if config.is_train:  # refining never needs the history (25600 images at the default flags)
            self.history_buffer = HistoryBuffer(config.buffer_size, self.image_shape, config.batch_size,
                                                config.random_seed)
            tracked["history_buffer"] = self.history_buffer
        self.checkpoint = tf.train.Checkpoint(**tracked)
        self.checkpoint_manager = tf.train.CheckpointManager(self.checkpoint, config.model_dir, max_to_keep=3)
        # XLA on CPUs runs convolutions inside a loop body very slowly (minutes per step): one pass there.
        self.micro_batches = 1 if config.jit_compile else micro_batches(config.batch_size)
        compile_ = dict(jit_compile=config.jit_compile)
        self.pretrain_refiner_step = tf.function(self._pretrain_refiner_step, **compile_)
        self.refiner_step = tf.function(self._refiner_step, **compile_)
        self.discriminator_step = tf.function(self._discriminator_step, **compile_)
        # Any batch size, one trace: test mode's last batch is smaller than the rest.
        self.refine = tf.function(lambda images: self.refiner(images, training=False),
                                  input_signature=[tf.TensorSpec((None, *self.image_shape), tf.float32)])

    # ---- step functions: arithmetic only; the loop does summaries and I/O ----

    def _pretrain_refiner_step(self, synthetic):
        """The paper's warm-up: the refiner learns the identity under self-regularization only."""
        def losses(chunk):
            refined = self.refiner(chunk, training=True)
            loss = tf.reduce_mean(self_regularization(refined, chunk, self.config.reg_scale))
            return {"regularization_loss": loss, "loss": loss}, refined

        return self._update_refiner(synthetic, losses, ("regularization_loss", "loss"))

    def _refiner_step(self, synthetic):
        """Make refined images look real to the discriminator while staying close to the synthetic ones."""
        def losses(chunk):
            refined = self.refiner(chunk, training=True)
            refined_logits = self.discriminator(refined, training=False)  # (chunk, 7, 12, 2)
            return refiner_losses(refined_logits, refined, chunk, self.config.reg_scale), refined

        return self._update_refiner(synthetic, losses, ("realism_loss", "regularization_loss", "loss"))

    def _update_refiner(self, synthetic, chunk_losses, names):
        """One refiner step with its gradients summed over equal micro-batches, one after another.

        The losses are batch means, so this is the update of one pass over the whole batch, but only
        one micro-batch's activations are alive at a time: at batch 512, 1.1 GB less in fp32.
        """
        chunks, variables = self.micro_batches, self.refiner.trainable_variables
        if chunks == 1:
            with tf.GradientTape() as tape:
                losses, refined = chunk_losses(synthetic)
            minimize(self.refiner_optimizer, tape, losses["loss"], variables)
            return losses, refined
        size = self.config.batch_size // chunks
        gradients = [tf.zeros_like(variable) for variable in variables]
        totals = {name: tf.constant(0.0) for name in names}
        refined = tf.TensorArray(self.refiner.compute_dtype, size=chunks)
        for index in tf.range(chunks):  # a tf.while_loop: its iterations run in order
            with tf.GradientTape() as tape:
                losses, chunk_refined = chunk_losses(synthetic[index * size:(index + 1) * size])
                scaled_loss = self.refiner_optimizer.scale_loss(losses["loss"] / chunks)
            chunk_gradients = tape.gradient(scaled_loss, variables)
            gradients = [total + gradient for total, gradient in zip(gradients, chunk_gradients)]
            totals = {name: totals[name] + losses[name] / chunks for name in names}
            refined = refined.write(index, chunk_refined)
        self.refiner_optimizer.apply_gradients(zip(gradients, variables))
        return totals, refined.concat()

    def _discriminator_step(self, synthetic, history, real):
        """Tell real images from refined ones: half a batch fresh, half from the history buffer."""
        fresh = self.refiner(synthetic[: self.config.batch_size // 2], training=False)
        fake = tf.concat([tf.cast(fresh, history.dtype), history], axis=0)  # bf16/fp16 refiner, fp32 history
        with tf.GradientTape() as tape:
            losses = discriminator_losses(self.discriminator(fake, training=True),
                                          self.discriminator(real, training=True))
        minimize(self.discriminator_optimizer, tape, losses["discrim_loss_with_history"],
                 self.discriminator.trainable_variables)
        return losses

    # ---- the schedule ----

    @property
    def global_step(self):
        """Optimizer steps of both networks together: the x-axis of every summary."""
        return int(self.refiner_optimizer.iterations) + int(self.discriminator_optimizer.iterations)

    def train(self):
        """Pre-train the refiner, then the discriminator, then alternate; resumable at any point."""
        self._restore(required=False)
        seed = self.config.random_seed + self.global_step  # a resumed run continues with fresh batches
        shape, batch = self.image_shape, self.config.batch_size
        self.synthetic_batches = iter(synthetic_dataset(self.data.synthetic_paths, shape, batch, seed))
        self.real_batches = iter(real_dataset(self.data.real_images, shape, batch, seed))
        self.test_images = self._load_test_images()
        self.summary_writer = tf.summary.create_file_writer(self.config.model_dir)
        self.last_save = time.monotonic()
        with self.summary_writer.as_default(), _StopRequests() as self.stop_requests:
            if self.global_step == 0:
                self._write_synthetic_summary()
            for phase in (self._train_refiner, self._train_discriminator, self._train_both):
                if not phase():
                    break
        self._save()

    def _train_refiner(self):
        """`initial_K_g` refiner steps on self-regularization; the last 10% fill the history buffer."""
        total, done = self.config.initial_K_g, int(self.refiner_optimizer.iterations)
        fill_from = total - max(1, total // 10)
        for step in tqdm(range(done, total), desc="Train refiner", initial=done, total=total):
            losses, refined = self.pretrain_refiner_step(next(self.synthetic_batches))
            if step >= fill_from:
                self.history_buffer.push(refined)
            if not self._after_step(step + 1, refiner=losses):
                return False
        return True

    def _train_discriminator(self):
        """`initial_K_d` discriminator steps against the warmed-up refiner."""
        total, done = self.config.initial_K_d, int(self.discriminator_optimizer.iterations)
        if done < total:
            self._ensure_history()
        for step in tqdm(range(done, total), desc="Train discrim", initial=done, total=total):
            if not self._after_step(step + 1, discriminator=self._discriminate()):
                return False
        return True

    def _train_both(self):
        """`max_step` iterations of K_g refiner steps (each pushes to the history) and K_d discriminator steps."""
        total, done = self.config.max_step, int(self.step)
        if done < total:
            self._ensure_history()
        for _ in tqdm(range(done, total), desc="Train both", initial=done, total=total):
            for _ in range(self.config.K_g):
                refiner_losses_, refined = self.refiner_step(next(self.synthetic_batches))
                self.history_buffer.push(refined)
            for _ in range(self.config.K_d):
                discriminator_losses_ = self._discriminate()
            self.step.assign_add(1)
            if not self._after_step(int(self.step), refiner=refiner_losses_ if self.config.K_g else None,
                                    discriminator=discriminator_losses_ if self.config.K_d else None):
                return False
        return True

    def _discriminate(self):
        history = self.history_buffer.sample()
        return self.discriminator_step(next(self.synthetic_batches), history, next(self.real_batches))

    def _ensure_history(self):
        """With no refiner warm-up the buffer is empty; seed it with one refined batch."""
        if len(self.history_buffer) == 0:
            self.history_buffer.push(self.refine(next(self.synthetic_batches)))

    def _after_step(self, phase_step, refiner=None, discriminator=None):
        """Check the losses, write summaries and checkpoints; False when training must stop."""
        values = {}
        for prefix, losses in (("refiner/", refiner), ("", discriminator)):
            for name, value in (losses or {}).items():
                values[prefix + name] = float(value)
        step = self.global_step
        bad = {name: value for name, value in values.items() if not np.isfinite(value)}
        if bad:
            name, value = next(iter(bad.items()))
            raise TrainingDiverged(f"{name} is {value} at step {step}; the last good checkpoint "
                                   f"is {self.checkpoint_manager.latest_checkpoint or 'none'}")
        if self.config.debug:
            tqdm.write(f"[*] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
        if phase_step % self.config.log_step == 0:
            self._write_summaries(values, step)
        if time.monotonic() - self.last_save >= self.config.checkpoint_secs:
            self._save()
        return not self.stop_requests.requested

    # ---- summaries, samples, checkpoints ----

    def _load_test_images(self):
        """The fixed synthetic images whose refinements make every sample grid comparable."""
        rows, cols = self.config.sample_image_grid
        paths = self.data.synthetic_paths[: rows * cols]
        images, _ = next(iter(synthetic_dataset(paths, self.image_shape, len(paths), 0, training=False)))
        return images

    def _write_synthetic_summary(self):
        tf.summary.image("test_synthetic_images", denormalize(self.test_images),
                         step=0, max_outputs=self.config.max_image_summary)

    def _write_summaries(self, values, step):
        for name, value in values.items():
            tf.summary.scalar(name, value, step=step)
        refined = denormalize(self.refine(self.test_images))
        tf.summary.image("test_refined_images", refined, step=step, max_outputs=self.config.max_image_summary)
        self.summary_writer.flush()
        rows, cols = self.config.sample_image_grid
        save_image(img_tile(refined, rows, cols), os.path.join(self.config.sample_model_dir, f"{step}.png"))

    def _save(self):
        """Write a checkpoint; TF renames the index last, so a crash mid-write keeps the previous one."""
        try:
            path = self.checkpoint_manager.save(checkpoint_number=self.global_step)
        except (OSError, tf.errors.OpError) as error:
            raise OutputError(f"cannot write a checkpoint in {self.config.model_dir}: {error}") from None
        self.last_save = time.monotonic()
        tqdm.write(f"[*] Saved checkpoint {path}")

    def _restore(self, required):
        """Load the latest checkpoint of the model folder; False when there is none."""
        latest = self.checkpoint_manager.latest_checkpoint
        if latest is None:
            if required:
                raise CheckpointError(f"no checkpoint in {self.config.model_dir}: train a model first "
                                      f"or pass the --load_path of one")
            return False
        restore_checkpoint(self.checkpoint, latest, partial=required)  # refining needs no history buffer
        tqdm.write(f"[*] Restored {latest}: refiner step {int(self.refiner_optimizer.iterations)}, "
                   f"discriminator step {int(self.discriminator_optimizer.iterations)}, iteration {int(self.step)}")
        return True

    # ---- test mode ----

    def test(self):
        """Refine every synthetic crop once, in sorted order, into OUTPUT_DIR/NAME/{i}_refined.png."""
        self._restore(required=True)
        output_dir = self.config.output_model_dir
        if os.path.realpath(output_dir) == os.path.realpath(self.data.synthetic_dir):
            raise OutputError(f"--output_dir would write into the input folder {output_dir}")
        targets = {path: os.path.join(output_dir, refined_name(path)) for path in self.data.synthetic_paths}
        remaining = [path for path, target in targets.items() if not os.path.exists(target)]
        if len(remaining) < len(targets):
            print(f"[*] {len(targets) - len(remaining)} images already refined in {output_dir}; refining the rest")
        batches = synthetic_dataset(remaining, self.image_shape, self.config.batch_size, 0, training=False)
        total = -(-len(remaining) // self.config.batch_size)
        # PNG encoding and writing run in threads while the next batch is refined (tf.data decodes ahead).
        with ThreadPoolExecutor(max_workers=2) as writer:
            pending = collections.deque()
            for images, paths in tqdm(batches, total=total, desc="Refine all synthetic images"):
                for pixels, path in zip(denormalize(self.refine(images)), paths.numpy()):
                    pending.append(writer.submit(save_image, pixels, targets[path.decode()]))
                while len(pending) > 2 * self.config.batch_size:  # at most two batches wait, in memory
                    pending.popleft().result()  # re-raises a write error (a full disk) here
            for future in pending:
                future.result()


def refined_name(crop_path):
    """`{i}_cropped.png` -> `{i}_refined.png`: the refined image keeps its frame's number (and label)."""
    stem = os.path.basename(crop_path)
    stem = stem[: -len("_cropped.png")] if stem.endswith("_cropped.png") else os.path.splitext(stem)[0]
    return f"{stem}_refined.png"


class _StopRequests:
    """Turns SIGINT / SIGTERM into a request the loop honours at the next step boundary."""

    def __enter__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._request) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _request(self, signum, frame):
        self.requested = True
        tqdm.write(f"[*] {signal.Signals(signum).name}: saving a checkpoint and stopping (again to kill)")
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---- the gaze estimator: --task=estimation ----

EARLY_STOPPING_PATIENCE = 3  # epochs without a lower validation error before training stops
EVALUATION_FILE = "evaluation.json"  # in the model folder: the last evaluation on the real images
LOAD_BATCH = 128  # images refined at once while loading: bounds the refiner's activations in memory


def find_refiner_checkpoint(refiner_path, log_dir):
    """The latest checkpoint of a generative model: a path, a name under log_dir, or that name less `generative_`."""
    tried = list(dict.fromkeys([refiner_path, os.path.join(log_dir, refiner_path),
                                os.path.join(log_dir, f"generative_{refiner_path}")]))
    for folder in tried:
        latest = tf.train.latest_checkpoint(folder) if os.path.isdir(folder) else None
        if latest:
            return latest
    raise CheckpointError(f"--refiner_path={refiner_path}: no checkpoint in {', '.join(tried)}; "
                          f"train a generative model first")


def load_refiner(checkpoint_path, image_shape):
    """Only the refiner of a generative checkpoint: no discriminator, optimizers or history buffer."""
    refiner = build_refiner(image_shape)
    restore_checkpoint(tf.train.Checkpoint(refiner=refiner), checkpoint_path, partial=True)
    return refiner


class EstimatorTrainer:
    """The paper's evaluation: train the gaze estimator on synthetic (or refined) crops, test it on real eyes.

    The synthetic set is split by file into training and validation; the validation error decides
    when to stop and which weights to keep (MODEL_DIR/best). The real images are only ever evaluated.
    """

    def __init__(self, config, data):
        self.config = config
        self.data = data
        self.image_shape = (config.input_height, config.input_width, config.input_channel)
        self.estimator = build_estimator(self.image_shape)
        self.optimizer = make_optimizer(config)
        self.optimizer.build(self.estimator.trainable_variables)
        # Epochs and the early-stopping state live in the checkpoint, so a resumed run stops where it would have.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_error = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_validation_error")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_step")
        self.stale_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="stale_epochs")
        progress = dict(best_error=self.best_error, best_epoch=self.best_epoch, best_step=self.best_step)
        self.checkpoint = tf.train.Checkpoint(estimator=self.estimator, optimizer=self.optimizer, epoch=self.epoch,
                                              stale_epochs=self.stale_epochs, **progress)
        self.checkpoint_manager = tf.train.CheckpointManager(self.checkpoint, config.model_dir, max_to_keep=1)
        self.best_checkpoint = tf.train.Checkpoint(estimator=self.estimator, **progress)
        self.best_manager = tf.train.CheckpointManager(self.best_checkpoint, os.path.join(config.model_dir, "best"),
                                                       max_to_keep=1, checkpoint_name="estimator")
        self.train_step = tf.function(self._train_step, jit_compile=config.jit_compile)
        # Any batch size, one trace: evaluation's last batch is smaller than the rest.
        self.predict = tf.function(self._predict, input_signature=[tf.TensorSpec((None, *self.image_shape),
                                                                                 tf.float32)])

    def _predict(self, images):
        return self.estimator(images, training=False)

    def _train_step(self, images, gaze):
        """One Adam step on the Euclidean loss; returns the loss and the batch's mean angular error."""
        with tf.GradientTape() as tape:
            predicted = self.estimator(images, training=True)
            loss = euclidean_loss(predicted, gaze)
        minimize(self.optimizer, tape, loss, self.estimator.trainable_variables)
        return loss, tf.reduce_mean(angular_error(predicted, gaze))

    # ---- training ----

    def train(self):
        """Train until the validation error stops improving (or --num_epochs), then evaluate the best weights."""
        self._restore()
        if int(self.epoch) < self.config.num_epochs and int(self.stale_epochs) < EARLY_STOPPING_PATIENCE:
            training, validation = self._load_synthetic()
            self.summary_writer = tf.summary.create_file_writer(self.config.model_dir)
            with self.summary_writer.as_default(), _StopRequests() as stop_requests:
                if not self._train_epochs(training, validation, stop_requests):
                    self._save()
                    print(f"[*] Stopped; resume with --load_path={self.config.model_name}")
                    return
            self._save()
        self.evaluate()

    def _load_synthetic(self):
        """(training, validation) as (uint8 images, gaze) in memory, refined by --refiner_path if given."""
        paths, gaze = load_synthetic_gaze(self.data.synthetic_paths)
        label = dict(zip(paths, gaze))
        training, validation = split_by_file(paths, self.config.validation_share, self.config.random_seed)
        check_estimation_split(self.config, len(training), len(validation))
        refine, kind = None, "synthetic"
        if self.config.refiner_path:
            checkpoint = find_refiner_checkpoint(self.config.refiner_path, self.config.log_dir)
            refine, kind = load_refiner(checkpoint, self.image_shape), "refined"
            print(f"[*] Training on synthetic crops refined by {checkpoint} (refined once, kept in memory)")
        print(f"[*] {len(training)} {kind} images to train on, {len(validation)} to validate on (by file, "
              f"seed {self.config.random_seed}); {len(self.data.real_images)} real images to test on")
        loaded = []
        for name, split in (("training", training), ("validation", validation)):
            images = load_crops(split, self.image_shape, LOAD_BATCH, refine,
                                desc=f"{'Refine' if refine else 'Load'} {name} images")
            loaded.append((images, np.stack([label[path] for path in split])))
        return loaded

    def _train_epochs(self, training, validation, stop_requests):
        """Epochs until the cap or the patience runs out; False when a stop was requested."""
        batch = self.config.batch_size
        steps_per_epoch = len(training[0]) // batch
        seed = self.config.random_seed + int(self.optimizer.iterations)  # a resumed run sees fresh batches
        batches = iter(labelled_dataset(*training, batch, seed))
        validation_batches = labelled_dataset(*validation, batch)
        self.last_save = time.monotonic()
        while int(self.epoch) < self.config.num_epochs and int(self.stale_epochs) < EARLY_STOPPING_PATIENCE:
            if not self._train_epoch(batches, steps_per_epoch, stop_requests):
                return False
            self._end_epoch(validation_batches)
        if int(self.stale_epochs) >= EARLY_STOPPING_PATIENCE:
            print(f"[*] Validation error has not improved for {EARLY_STOPPING_PATIENCE} epochs: stopping")
        return True

    def _train_epoch(self, batches, steps_per_epoch, stop_requests):
        """One pass over the training split (resumed mid-epoch where the checkpoint left it)."""
        epoch = int(self.epoch)
        done = min(max(int(self.optimizer.iterations) - epoch * steps_per_epoch, 0), steps_per_epoch)
        for _ in tqdm(range(done, steps_per_epoch), desc=f"Train estimator, epoch {epoch + 1}",
                      initial=done, total=steps_per_epoch):
            images, gaze = next(batches)
            if int(self.optimizer.iterations) == 0:
                self._write_training_images(images)
            loss, error = self.train_step(images, gaze)
            step, loss, error = int(self.optimizer.iterations), float(loss), float(error)
            if not np.isfinite(loss):
                raise TrainingDiverged(f"estimator/loss is {loss} at step {step}; the last good checkpoint "
                                       f"is {self.checkpoint_manager.latest_checkpoint or 'none'}")
            if self.config.debug:
                tqdm.write(f"[*] step {step}: loss={loss:.4f}, angular_error={error:.2f}")
            if step % self.config.log_step == 0:
                tf.summary.scalar("estimator/loss", loss, step=step)
                tf.summary.scalar("estimator/angular_error", error, step=step)
            if time.monotonic() - self.last_save >= self.config.checkpoint_secs:
                self._save()
            if stop_requests.requested:
                return False
        return True

    def _end_epoch(self, validation_batches):
        """Validate; keep the weights if they are the best so far; count the epochs since."""
        error = float(np.mean(self._errors(validation_batches)))
        self.epoch.assign_add(1)
        epoch, step = int(self.epoch), int(self.optimizer.iterations)
        tf.summary.scalar("validation/angular_error", error, step=step)
        self.summary_writer.flush()
        if error < float(self.best_error):
            self.best_error.assign(error)
            self.best_epoch.assign(epoch)
            self.best_step.assign(step)
            self.stale_epochs.assign(0)
            self._save(self.best_manager, epoch)
        else:
            self.stale_epochs.assign_add(1)
        tqdm.write(f"[*] Epoch {epoch}/{self.config.num_epochs}: validation error {error:.2f} degrees "
                   f"(best {float(self.best_error):.2f}, epoch {int(self.best_epoch)})")
        self._save()

    def _write_training_images(self, images):
        """What the estimator's first step receives (synthetic or refined), as a grid and an image summary."""
        pixels = denormalize(images)
        tf.summary.image("estimator/training_images", pixels, step=0, max_outputs=self.config.max_image_summary)
        rows, cols = self.config.sample_image_grid
        save_image(img_tile(pixels, rows, cols), os.path.join(self.config.sample_model_dir, "training_images.png"))

    def _errors(self, batches):
        """Angular errors (degrees) of every image of (images, gaze) batches: (N,) float64."""
        return np.concatenate([angular_error(self.predict(images), gaze).numpy() for images, gaze in batches])

    # ---- evaluation on the real images ----

    def evaluate(self):
        """Mean angular error and the share within 0..25 degrees on the real images: table, TensorBoard, JSON."""
        checkpoint = self._restore_best()
        images, gaze = as_left_eyes(self.data.real_images, self.data.real_gaze, self.data.real_right_eye)
        real = labelled_dataset(resize_real(images, self.image_shape), gaze, self.config.batch_size)
        errors = self._errors(tqdm(real, total=-(-len(images) // self.config.batch_size), desc="Evaluate on real images"))
        within = share_within(errors).numpy()
        params = self._training_params()
        results = {
            "model": self.config.model_name, "checkpoint": checkpoint,
            "trained_on": "refined" if params.get("refiner_path") else "synthetic",
            "refiner_path": params.get("refiner_path", ""),
            "best_epoch": int(self.best_epoch), "best_step": int(self.best_step),
            "validation_angular_error": float(self.best_error),
            "real_images": len(errors), "right_eyes_mirrored": int(np.sum(self.data.real_right_eye)),
            "is_sample": bool(self.data.is_sample),
            "mean_angular_error": float(np.mean(errors)), "median_angular_error": float(np.median(errors)),
            "share_within_degrees": {str(degrees): float(share) for degrees, share in enumerate(within)},
        }
        table = evaluation_table(results)
        print(table)
        self._write_evaluation_summaries(results, within, table)
        path = os.path.join(self.config.model_dir, EVALUATION_FILE)
        atomic_write(path, lambda handle: handle.write(json.dumps(results, indent=4).encode()))
        print(f"[*] Wrote {path}")
        return results

    def _write_evaluation_summaries(self, results, within, table):
        step = int(self.best_step)  # the step of the weights evaluated, in training and evaluation mode alike
        with tf.summary.create_file_writer(self.config.model_dir).as_default() as writer:
            tf.summary.scalar("real/angular_error", results["mean_angular_error"], step=step)
            tf.summary.scalar("real/within_7_degrees", within[7], step=step)
            for degrees, share in enumerate(within):  # the paper's Figure 7: x-axis degrees, not steps
                tf.summary.scalar("real/share_within_degrees", share, step=degrees)
            tf.summary.text("real/evaluation", f"<pre>{table}</pre>", step=step)
            writer.flush()

    def _training_params(self):
        """The flags the model was trained with (params.json), or {} if they were not saved."""
        try:
            with open(os.path.join(self.config.model_dir, "params.json"), "rb") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    # ---- checkpoints ----

    def _save(self, manager=None, number=None):
        """Write the training state (or, with the best manager, the best weights)."""
        manager = manager or self.checkpoint_manager
        try:
            path = manager.save(checkpoint_number=int(self.optimizer.iterations) if number is None else number)
        except (OSError, tf.errors.OpError) as error:
            raise OutputError(f"cannot write a checkpoint in {manager.directory}: {error}") from None
        self.last_save = time.monotonic()
        return path

    def _restore(self):
        """Resume the training state of the model folder, if it has one."""
        latest = self.checkpoint_manager.latest_checkpoint
        if latest is None:
            return
        restore_checkpoint(self.checkpoint, latest)
        tqdm.write(f"[*] Restored {latest}: epoch {int(self.epoch)}, step {int(self.optimizer.iterations)}, "
                   f"best validation error {float(self.best_error):.2f} (epoch {int(self.best_epoch)})")

    def _restore_best(self):
        """Load the weights of the best validation epoch; CheckpointError if there are none."""
        latest = self.best_manager.latest_checkpoint
        if latest is None:
            raise CheckpointError(f"no estimator checkpoint in {self.best_manager.directory}: train one first "
                                  f"(python main.py --task=estimation) or pass the --load_path of one")
        restore_checkpoint(self.best_checkpoint, latest, partial=True)
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
