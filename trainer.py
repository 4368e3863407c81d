"""The Trainer: owns the networks, optimizers, history buffer, checkpoints and summaries.

Read top to bottom: construction, the three step functions (pure arithmetic,
one tf.function each), the training schedule that calls them, then test mode.
"""
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data.gaze_data import synthetic_dataset, real_dataset
from data.history_buffer import HistoryBuffer
from layers import denormalize
from model import build_discriminator, build_refiner, discriminator_losses, refiner_losses, self_regularization
from utils import OutputError, img_tile, save_image


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be read; str(e) is one line."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint stays the latest."""


def make_optimizer(config):
    """Adam (epsilon 1e-8, TF1's default) or SGD; clipnorm clips each gradient tensor on its own."""
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, clipnorm=config.max_grad_norm)
    return keras.optimizers.Adam(config.learning_rate, epsilon=1e-8, clipnorm=config.max_grad_norm)


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
        self.pretrain_refiner_step = tf.function(self._pretrain_refiner_step)
        self.refiner_step = tf.function(self._refiner_step)
        self.discriminator_step = tf.function(self._discriminator_step)
        # Any batch size, one trace: test mode's last batch is smaller than the rest.
        self.refine = tf.function(lambda images: self.refiner(images, training=False),
                                  input_signature=[tf.TensorSpec((None, *self.image_shape), tf.float32)])

    # ---- step functions: arithmetic only; the loop does summaries and I/O ----

    def _pretrain_refiner_step(self, synthetic):
        """The paper's warm-up: the refiner learns the identity under self-regularization only."""
        with tf.GradientTape() as tape:
            refined = self.refiner(synthetic, training=True)
            loss = tf.reduce_mean(self_regularization(refined, synthetic, self.config.reg_scale))
        gradients = tape.gradient(loss, self.refiner.trainable_variables)
        self.refiner_optimizer.apply_gradients(zip(gradients, self.refiner.trainable_variables))
        return {"regularization_loss": loss, "loss": loss}, refined

    def _refiner_step(self, synthetic):
        """Make refined images look real to the discriminator while staying close to the synthetic ones."""
        with tf.GradientTape() as tape:
            refined = self.refiner(synthetic, training=True)
            refined_logits = self.discriminator(refined, training=False)  # (batch, 7, 12, 2)
            losses = refiner_losses(refined_logits, refined, synthetic, self.config.reg_scale)
        gradients = tape.gradient(losses["loss"], self.refiner.trainable_variables)
        self.refiner_optimizer.apply_gradients(zip(gradients, self.refiner.trainable_variables))
        return losses, refined

    def _discriminator_step(self, synthetic, history, real):
        """Tell real images from refined ones: half a batch fresh, half from the history buffer."""
        fresh = self.refiner(synthetic[: self.config.batch_size // 2], training=False)
        fake = tf.concat([fresh, history], axis=0)
        with tf.GradientTape() as tape:
            losses = discriminator_losses(self.discriminator(fake, training=True),
                                          self.discriminator(real, training=True))
        variables = self.discriminator.trainable_variables
        gradients = tape.gradient(losses["discrim_loss_with_history"], variables)
        self.discriminator_optimizer.apply_gradients(zip(gradients, variables))
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
        try:
            status = self.checkpoint.restore(latest)
            if required:
                status.expect_partial()
            else:
                status.assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError) as error:
            message = str(error).strip().splitlines()[0]
            raise CheckpointError(f"cannot restore {latest} (was it made with other flags?): {message}") from None
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
        for images, paths in tqdm(batches, total=total, desc="Refine all synthetic images"):
            for pixels, path in zip(denormalize(self.refine(images)), paths.numpy()):
                save_image(pixels, targets[path.decode()])


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
