"""The SimGAN trainer: owns the networks, optimizers, history buffer, checkpoints and summaries.

Read top to bottom: construction, the three step functions (pure arithmetic, each a tf.function
run on every replica of the tf.distribute strategy, one device without one), the training schedule
that calls them, then summaries and checkpoints. Refining a folder
with a trained refiner is refine.py; the gaze estimator is estimation.py.
"""
import contextlib
import functools
import os

import tensorflow as tf
from tqdm import tqdm

from best_refiner import BestRefiner
from checkpoints import Checkpoints
from config import estimation_probe_images, image_shape, probe_images
from data.history_buffer import HistoryBuffer
from distribution import distribute, distributed_batches, is_chief, local_batch, run_on_replicas
from estimation_probe import EstimationProbe
from export import BEST_NAME, RefinerExporter
from hparams import GENERATIVE_FLAGS, write_hparams
from model import (batch_mean, build_discriminator, build_refiner, discriminator_losses, refiner_losses,
                   refiner_options, refiner_outputs, regularized_variables, self_regularization)
from probes import METRICS as PROBE_METRICS, Probes
from run_report import print_run_report
from training_loop import Supervisor, apply_gradients, make_optimizer, minimize
from utils import denormalize, img_tile, save_image

# Pixels of the images whose activations are alive at once in a step: 32 gaze crops of 35x55 (tests/benchmark.py:
# no slower than whole batches), one 224x224 hand crop (the hand refiner keeps some 0.5 GB of activations an image).
MICRO_BATCH_PIXELS = 32 * 35 * 55


def micro_batches(batch_size, image_shape=(35, 55, 1)):
    """Equal parts a replica's batch is split into, each of at most MICRO_BATCH_PIXELS pixels (or one image)."""
    most = max(1, MICRO_BATCH_PIXELS // (image_shape[0] * image_shape[1]))
    return next(parts for parts in range(1, batch_size + 1) if batch_size % parts == 0 and batch_size // parts <= most)


def pushes_history(step, initial_K_g):
    """Whether refiner warm-up step `step` (0-based) pushes its refined batch, as the original's rule:
    steps past 90% of initial_K_g (901..999 of 1000; none for 10 or fewer)."""
    return step > initial_K_g * 0.9


class Trainer:
    """Builds SimGAN and runs its schedule: refiner warm-up, discriminator warm-up, K_g:K_d alternation."""

    def __init__(self, config, paths, data, strategy=None, estimation_task=None):
        """estimation_task: the data set's EstimationTask (model.py), for the estimation probe; None: none."""
        self.config = config
        self.estimation_task = estimation_task
        self.paths = paths
        self.data = data
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        replicas = self.strategy.num_replicas_in_sync
        self.image_shape = image_shape(config)
        with self.strategy.scope():  # the networks and optimizers live on every replica
            self.refiner = build_refiner(self.image_shape, config.data_set, **refiner_options(vars(config)))
            self.discriminator = build_discriminator(self.image_shape, config.data_set, config.coordinate_channels)
            self.refiner_optimizer = make_optimizer(config, replicas)
            self.discriminator_optimizer = make_optimizer(config, replicas)
            # Optimizer slots must exist before a restore can fill them.
            self.refiner_optimizer.build(self.refiner.trainable_variables)
            self.discriminator_optimizer.build(self.discriminator.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="adversarial_step")
            # --final_reg_scale: the weight the step functions read, set before each adversarial iteration.
            self.reg_scale = (config.reg_scale if config.final_reg_scale is None
                              else tf.Variable(config.reg_scale, trainable=False, name="reg_scale"))
        self.refiner_outputs = refiner_outputs(self.refiner)  # (what is self-regularized, the refined images)
        # One logical history for all replicas, as the original's: it takes whole refined batches and
        # hands each discriminator step half a batch, shared out like the other inputs.
        self.history_buffer = HistoryBuffer(config.buffer_size, self.image_shape, config.batch_size,
                                            config.random_seed)
        self.probes = self.estimation_probe = self.best_refiner = None  # train() holds their images out, on the chief
        # The optimizers' `iterations` are the two step counters. These names are the checkpoint's keys.
        checkpoint = dict(
            refiner=self.refiner, discriminator=self.discriminator, step=self.step,
            refiner_optimizer=self.refiner_optimizer, discriminator_optimizer=self.discriminator_optimizer,
            history_buffer=self.history_buffer)
        self.exporter = RefinerExporter(self.refiner, paths.model_dir) if self.chief else None  # beside each checkpoint
        self.checkpoints = Checkpoints(checkpoint, paths.model_dir, max_to_keep=3, every_secs=config.checkpoint_secs,
                                       announce=self.chief, on_save=self.exporter, chief=self.chief)
        # XLA on CPUs runs convolutions inside a loop body very slowly (minutes per step): one pass there.
        self.replica_batch = config.batch_size // replicas
        self.micro_batches = 1 if config.jit_compile else micro_batches(self.replica_batch, self.image_shape)
        # Each step: a per-replica body (arithmetic only, XLA-compiled with --jit_compile) run on every replica.
        self.replica_steps = {name: tf.function(body, jit_compile=config.jit_compile) for name, body in (
            ("warm_up_refiner", self._warm_up_refiner_step), ("refiner", self._refiner_step),
            ("discriminator", self._discriminator_step))}
        self.compiled_steps = {name: tf.function(functools.partial(run_on_replicas, self.strategy, body))
                               for name, body in self.replica_steps.items()}
        # Any batch size, one trace: the sample grid's images need not be a training batch.
        self.refine = tf.function(lambda images: self.refiner(images, training=False),
                                  input_signature=[tf.TensorSpec((None, *self.image_shape), tf.float32)])

    def warm_up_refiner_step(self, synthetic):
        """(losses, refined) of one warm-up step on a global batch."""
        return self.compiled_steps["warm_up_refiner"](distribute(self.strategy, synthetic))

    def refiner_step(self, synthetic):
        """(losses, refined) of one adversarial refiner step on a global batch."""
        return self.compiled_steps["refiner"](distribute(self.strategy, synthetic))

    def discriminator_step(self, fresh, history, real):
        """The losses of one discriminator step: half a batch of synthetic images to refine now, half a batch
        of history and a batch of real images (global batches, or batches distributed_batches shared out)."""
        return self.compiled_steps["discriminator"](*(distribute(self.strategy, batch)
                                                      for batch in (fresh, history, real)))

    # ---- step functions, per replica: arithmetic only; the loop does summaries and I/O ----

    def _warm_up_refiner_step(self, synthetic):
        """The paper's warm-up: the refiner learns the identity under self-regularization only."""
        def losses(chunk):
            regularized, refined = self.refiner_outputs(chunk, training=True)
            loss = batch_mean(self_regularization(regularized, chunk, self.config.reg_scale,
                                                  self.config.self_regularization), self.config.batch_size)
            return {"regularization_loss": loss, "loss": loss}, (refined,)

        losses, (refined,) = self._update(regularized_variables(self.refiner), self.refiner_optimizer, (synthetic,),
                                          losses, ("regularization_loss", "loss"), outputs=1)
        return losses, tf.cast(refined, tf.float32)  # gathered across workers, whose collectives take no bfloat16

    def _refiner_step(self, synthetic):
        """Make refined images look real to the discriminator while staying close to the synthetic ones."""
        def losses(chunk):
            regularized, refined = self.refiner_outputs(chunk, training=True)
            refined_logits = self.discriminator(refined, training=False)  # (chunk, 7, 12, 2) gaze, (chunk, 7, 7, 2) hand
            return refiner_losses(refined_logits, regularized, chunk, self.reg_scale,
                                  self.config.batch_size, self.config.self_regularization), (refined,)

        losses, (refined,) = self._update(self.refiner.trainable_variables, self.refiner_optimizer, (synthetic,),
                                          losses, ("realism_loss", "regularization_loss", "loss"), outputs=1)
        return losses, tf.cast(refined, tf.float32)  # as above

    def _discriminator_step(self, synthetic, history, real):
        """Tell real images from refined ones: synthetic (half a batch) refined now, half from the history buffer."""
        fresh = self.refiner(synthetic, training=False)
        fake = tf.concat([tf.cast(fresh, history.dtype), history], axis=0)  # bf16/fp16 refiner, fp32 history
        from_history = tf.range(tf.shape(fake)[0]) >= tf.shape(fresh)[0]

        def losses(fake_chunk, from_history_chunk, real_chunk):
            return discriminator_losses(self.discriminator(fake_chunk, training=True),
                                        self.discriminator(real_chunk, training=True), from_history_chunk,
                                        self.config.batch_size), ()

        losses, _ = self._update(self.discriminator.trainable_variables, self.discriminator_optimizer,
                                 (fake, from_history, real), losses,
                                 ("synthetic_d_loss", "refiner_d_loss_with_history", "discrim_loss_with_history"))
        return losses

    def _update(self, variables, optimizer, inputs, chunk_losses, names, outputs=0):
        """One step of variables with their gradients summed over equal micro-batches of inputs, one after another.

        inputs: batches of the replica's batch size; chunk_losses(*chunks) -> (losses, `outputs` tensors
        per image). The losses are sums over the global batch size, so this is the update of one pass over
        the whole batch, but only one micro-batch's activations are alive at a time: at batch 512, 1.1 GB
        less in fp32 for the gaze refiner. The last of names is the loss minimized.
        """
        chunks = self.micro_batches
        if chunks == 1:
            with tf.GradientTape() as tape:
                losses, chunk_outputs = chunk_losses(*inputs)
            minimize(optimizer, tape, losses[names[-1]], variables)
            return losses, chunk_outputs
        size = self.replica_batch // chunks
        gradients = [tf.zeros_like(variable) for variable in variables]
        totals = {name: tf.constant(0.0) for name in names}
        written = [tf.TensorArray(self.refiner.compute_dtype, size=chunks) for _ in range(outputs)]  # refined images
        for index in tf.range(chunks):  # a tf.while_loop
            # One iteration at a time: by default a while loop may run 10 at once (nothing orders one
            # micro-batch's forward pass after the previous one's), and each keeps its activations.
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            with tf.GradientTape() as tape:
                losses, chunk_outputs = chunk_losses(*(batch[index * size:(index + 1) * size] for batch in inputs))
                scaled_loss = optimizer.scale_loss(losses[names[-1]])
            chunk_gradients = tape.gradient(scaled_loss, variables)
            gradients = [total + gradient for total, gradient in zip(gradients, chunk_gradients)]
            totals = {name: totals[name] + losses[name] for name in names}
            written = [array.write(index, output) for array, output in zip(written, chunk_outputs)]
        apply_gradients(optimizer, gradients, variables)
        return totals, tuple(array.concat() for array in written)

    # ---- the schedule ----

    @property
    def global_step(self):
        """Optimizer steps of both networks together: the checkpoints' numbers."""
        return int(self.refiner_optimizer.iterations.numpy()) + int(self.discriminator_optimizer.iterations.numpy())

    def train(self):
        """Warm up the refiner, then the discriminator, then alternate; resumable at any point."""
        self.restore()
        rows, cols = self.config.sample_image_grid  # fixed images, the first ones whether probed or not: every
        self.test_images = self.data.test_images(self.image_shape, rows * cols)  # sample grid is comparable
        self._hold_out_for_probes()  # before the streams open: they must not draw these
        self.summary_writer = (tf.summary.create_file_writer(self.paths.model_dir) if self.chief
                               else tf.summary.create_noop_writer())
        supervisor = Supervisor(self.config, self.checkpoints, self.strategy)
        seed = self.config.random_seed + self.global_step  # a resumed run continues with fresh batches
        with self._open_batches(seed), self.summary_writer.as_default(), supervisor as self.supervisor:
            if self.chief:
                final = self.config.reg_scale if self.config.final_reg_scale is None else self.config.final_reg_scale
                write_hparams(self.config, GENERATIVE_FLAGS, PROBE_METRICS, final_reg_scale=final)
            finished = all(phase() for phase in (self._warm_up_refiner, self._warm_up_discriminator,
                                                 self._train_adversarially))  # all(): stops at the first False
        self.checkpoints.save(self.global_step)
        self.checkpoints.close()
        if self.chief:
            print_run_report(self.config, self.paths, self.checkpoints.latest, finished, self.exporter.files,
                             self.probes, self.estimation_probe, self.best_refiner)

    @contextlib.contextmanager
    def _open_batches(self, seed):
        """The three input streams, open while training; in a cluster each worker reads only its replicas'
        shares of each batch.

        The discriminator refines half a batch of fresh synthetic images (the other half comes from the
        history), drawn from a stream of its own: no image is decoded to be dropped. The streams are closed on
        the way out: a distributed stream left for the interpreter's exit to delete holds the process there
        while tf.data's autotuning thread sleeps out its period (measured: 10-70 s after a mirrored run).
        """
        shape, batch, data = self.image_shape, self.config.batch_size, self.data

        def stream(batches, size, stream_seed):
            return distributed_batches(
                self.strategy, lambda replica_batch, shard: batches(shape, replica_batch, stream_seed, shard), size)

        self.synthetic_batches = stream(data.synthetic_batches, batch, seed)
        self.fresh_batches = stream(data.synthetic_batches, batch // 2, seed + 1)
        self.real_batches = stream(data.real_batches, batch, seed)
        try:
            yield
        finally:
            del self.synthetic_batches, self.fresh_batches, self.real_batches

    def _warm_up_refiner(self):
        """`initial_K_g` refiner steps on self-regularization; those after 90% of them fill the history buffer."""
        total, done = self.config.initial_K_g, int(self.refiner_optimizer.iterations.numpy())
        for step in tqdm(range(done, total), desc="Train refiner", initial=done, total=total):
            losses, refined = self.warm_up_refiner_step(next(self.synthetic_batches))
            if pushes_history(step, total):
                self.history_buffer.push(refined)
            self._log_refiner(losses)
            if not self.supervisor.checkpoint_and_continue(self.global_step):
                return False
        return True

    def _warm_up_discriminator(self):
        """`initial_K_d` discriminator steps against the warmed-up refiner."""
        total, done = self.config.initial_K_d, int(self.discriminator_optimizer.iterations.numpy())
        if done < total:
            self._ensure_history()
        for _ in tqdm(range(done, total), desc="Train discrim", initial=done, total=total):
            self._discriminate()
            if not self.supervisor.checkpoint_and_continue(self.global_step):
                return False
        return True

    def _train_adversarially(self):
        """`max_step` iterations of K_g refiner steps (each pushes to the history) and K_d discriminator steps.

        A run stops or checkpoints only between whole iterations, so a resumed run repeats none.
        """
        total, done = self.config.max_step, int(self.step.numpy())
        if done < total and self.config.K_g == 0:  # otherwise each iteration pushes before it samples
            self._ensure_history()
        for iteration in tqdm(range(done, total), desc="Train both", initial=done, total=total):
            self._schedule_reg_scale(iteration)
            for _ in range(self.config.K_g):
                losses, refined = self.refiner_step(next(self.synthetic_batches))
                self.history_buffer.push(refined)
                self._log_refiner(losses)
            for _ in range(self.config.K_d):
                self._discriminate()
            self.step.assign_add(1)
            if not self.supervisor.checkpoint_and_continue(self.global_step):
                return False
        return True

    def _schedule_reg_scale(self, iteration):
        """--final_reg_scale: the weight of adversarial iteration `iteration`, on the line from --reg_scale at the
        first to --final_reg_scale at the last."""
        if self.config.final_reg_scale is not None:
            share = iteration / max(1, self.config.max_step - 1)
            self.reg_scale.assign(self.config.reg_scale + share * (self.config.final_reg_scale - self.config.reg_scale))

    def _discriminate(self):
        """One discriminator step on fresh, history and real images, logged on the discriminator's counter."""
        history = self.history_buffer.sample()
        losses = self.discriminator_step(next(self.fresh_batches), history, next(self.real_batches))
        self.supervisor.log(losses, int(self.discriminator_optimizer.iterations.numpy()))

    def _log_refiner(self, losses):
        """The refiner's scalars, test images and sample grid, and the probes when due, on the refiner's counter
        (the original's axes)."""
        step = int(self.refiner_optimizer.iterations.numpy())
        self.supervisor.log({f"refiner/{name}": value for name, value in losses.items()}, step,
                            self._write_samples if self.chief else None)
        self._probe(step)

    def _probe(self, refiner_step):
        """The realism probes every eval_step, the estimation probe every estimation_probe_step; then the best
        refiner is kept if these values beat the best so far (best_refiner.py)."""
        values = {}
        if self.probes is not None and refiner_step % self.config.eval_step == 0:
            values.update(self.probes.write(self.refine, refiner_step))
        if self.estimation_probe is not None and refiner_step % self.config.estimation_probe_step == 0:
            values.update(self.estimation_probe.write(self.refine, refiner_step))
        if values and self.best_refiner is not None and self.best_refiner.consider(refiner_step, values):
            tqdm.write(f"[*] Refiner step {refiner_step}: the best refiner so far, exported as "
                       f"{self.best_refiner.exporter.files[0]}")

    def _ensure_history(self):
        """A discriminator step before any push (initial_K_g <= 10, or K_g = 0) would find the buffer empty,
        where the original crashed: seed it with one refined batch."""
        if len(self.history_buffer) == 0:
            self.history_buffer.push(self.refine(local_batch(self.strategy, next(self.synthetic_batches))))

    # ---- summaries, samples, probes, checkpoints ----

    def _hold_out_for_probes(self):
        """The probes' images, held out of the training streams on every worker; on the chief, the probes and the
        keeper of the best refiner."""
        config, shape = self.config, self.image_shape
        count = probe_images(config, self.data.num_synthetic, len(self.data.real_images))
        held_out = self.data.hold_out(count, shape, config.random_seed) if count else None
        counts = estimation_probe_images(config, self.data.num_synthetic, len(self.data.real_images))
        labelled = None
        if min(counts) and self.estimation_task is not None:
            labelled = self.data.hold_out_labelled(*counts, shape, config.random_seed + 2)
        if not self.chief:
            return
        refine_batch = max(1, self.replica_batch // self.micro_batches)  # the activations of one training micro-batch
        if held_out is not None:
            tqdm.write(f"[*] Probes every {config.eval_step} refiner steps, on {count} synthetic and {count} real "
                       f"images held out of training (probe/ in TensorBoard)")
            self.probes = Probes(*held_out, self.data.label_positions, refine_batch, config.random_seed)
        if labelled is not None:
            self.estimation_probe = self._estimation_probe(labelled, refine_batch)
        elif "estimation_probe_step" in getattr(config, "given_flags", ()) and config.estimation_probe_step:
            tqdm.write(f"[!] --estimation_probe_step={config.estimation_probe_step}: no estimation probe (no labelled "
                       f"real images, too few of them, or fewer refiner steps in this run)")
        if self.probes is not None or self.estimation_probe is not None:
            by_estimation = self.estimation_probe is not None
            self.best_refiner = BestRefiner(
                RefinerExporter(self.refiner, self.paths.model_dir, BEST_NAME),
                "estimation_error" if by_estimation else "statistics_distance", shape,
                self.estimation_task.unit if by_estimation else "real spreads")

    def _estimation_probe(self, labelled, refine_batch):
        """The estimation probe on the labelled held-out images; None (said in one line) where its estimator
        cannot take the input."""
        try:
            probe = EstimationProbe(labelled, self.estimation_task, self.config, refine_batch, self.config.random_seed)
        except ValueError as error:
            tqdm.write(f"[!] No estimation probe: {error}")
            return None
        tqdm.write(f"[*] Estimation probe every {self.config.estimation_probe_step} refiner steps: small estimators "
                   f"trained on {len(labelled.synthetic)} held-out synthetic images, refined, measured on "
                   f"{len(labelled.real)} held-out real ones (probe/estimation_error)")
        return probe

    def _write_samples(self, refiner_step):
        """The test images refined now: an image summary and SAMPLE_DIR/NAME/{refiner_step}.png.

        As the original, the unrefined test images are written once, beside the first refined ones.
        """
        if refiner_step == self.config.log_step:
            tf.summary.image("test_synthetic_images", denormalize(self.test_images),
                             step=refiner_step, max_outputs=self.config.max_image_summary)
        refined = denormalize(self.refine(self.test_images))
        tf.summary.image("test_refined_images", refined, step=refiner_step,
                         max_outputs=self.config.max_image_summary)
        self.summary_writer.flush()
        rows, cols = self.config.sample_image_grid
        save_image(img_tile(refined, rows, cols), os.path.join(self.paths.sample_dir, f"{refiner_step}.png"))

    def restore(self):
        """Resume from the latest checkpoint of the run folder, if it has one."""
        latest = self.checkpoints.restore_latest()
        if latest is not None:
            tqdm.write(f"[*] Restored {latest}: refiner step {int(self.refiner_optimizer.iterations.numpy())}, "
                       f"discriminator step {int(self.discriminator_optimizer.iterations.numpy())}, iteration {int(self.step.numpy())}")
        return latest
