"""What both trainers share: the optimizers, one update, and the bookkeeping around every step.

After each network step a trainer calls `Supervisor.log`: the losses must be finite, `--debug`
prints them, and at steps that are multiples of `log_step` they go to TensorBoard at x = that step.
At each point a run can resume from, it calls `Supervisor.checkpoint_and_continue`: a checkpoint every
`checkpoint_secs`, and a SIGINT/SIGTERM becomes a request to stop there (the trainer then saves).
In a cluster, a signal to any worker stops every worker at the same point, after one checkpoint
(TensorFlow's PreemptionCheckpointHandler agrees on the step), so none is left waiting in a collective.
"""
import os
import signal
import threading

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from distribution import any_worker, worker_count
from utils import denormalize, img_tile, save_image


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint stays the latest."""


def make_optimizer(config, replicas=1):
    """Adam (epsilon 1e-8, TF1's default) or SGD; each gradient tensor is clipped to --max_grad_norm.

    Keras clips each replica's gradient before it sums them; `apply_gradients` hands every replica
    1/replicas of the summed gradient instead, so a clipnorm of max_grad_norm / replicas clips the
    sum as one device would. Under float16 the loss is scaled so small gradients do not flush to zero
    (bfloat16 needs no scaling).
    """
    clipnorm = config.max_grad_norm / replicas
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(config.learning_rate, clipnorm=clipnorm)
    else:
        optimizer = keras.optimizers.Adam(config.learning_rate, epsilon=1e-8, clipnorm=clipnorm)
    if keras.mixed_precision.global_policy().compute_dtype == "float16":
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def minimize(optimizer, tape, loss, variables):
    """One optimizer step on loss; the loss scale (identity unless float16) is undone by apply_gradients."""
    with tape:  # the scaling must be on the tape too
        scaled_loss = optimizer.scale_loss(loss)
    apply_gradients(optimizer, tape.gradient(scaled_loss, variables), variables)


def apply_gradients(optimizer, gradients, variables):
    """Apply one step's gradients; on several replicas, each applies its share of their sum (see make_optimizer)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradients = [gradient / replicas for gradient in summed]
    optimizer.apply_gradients(zip(gradients, variables))


def write_first_batch(images, config, sample_dir):
    """What an estimator's first step receives (synthetic or refined): a grid in sample_dir and an image summary."""
    pixels = denormalize(images)
    tf.summary.image("estimator/training_images", pixels, step=0, max_outputs=config.max_image_summary)
    rows, cols = config.sample_image_grid
    save_image(img_tile(pixels, rows, cols), os.path.join(sample_dir, "training_images.png"))


class Supervisor:
    """Watches a training loop from outside: stop requests while inside, the checks and writes after each step."""

    def __init__(self, config, checkpoints, strategy=None):
        self.config = config
        self.checkpoints = checkpoints
        self.strategy = strategy or tf.distribute.get_strategy()
        self.cluster = worker_count(self.strategy) > 1
        # Events, not attributes: the preemption handler's threads read them without holding the loop.
        self.stop_requested = threading.Event()
        self.stop_agreed = threading.Event()
        self.preemption = None

    def __enter__(self):
        self.stop_requested.clear()
        self.stop_agreed.clear()
        self._previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        if self.cluster:
            self.preemption = self._preemption_handler()
        return self

    def __exit__(self, *exc):
        self._restore_handlers()
        self.preemption = None  # its __del__ stops its watcher threads

    def _preemption_handler(self):
        """TensorFlow's handler for a cluster: our stop request is its termination notice, our save its save.

        It restores nothing we have not: its manager reads the run's folder, where the trainer restored from.
        """
        stop_requested, stop_agreed = self.stop_requested, self.stop_agreed

        def stop():
            stop_agreed.set()
            tqdm.write("[*] A worker was asked to stop: every worker saved the checkpoint and stops")

        reader = tf.train.CheckpointManager(self.checkpoints.checkpoint, self.checkpoints.run_dir, max_to_keep=None)
        termination = tf.distribute.experimental.TerminationConfig(
            termination_watcher_fn=stop_requested.is_set, exit_fn=stop, grace_period=0, save_fn=self.checkpoints.save)
        return tf.distribute.experimental.PreemptionCheckpointHandler(
            self.strategy.cluster_resolver, reader, termination_config=termination)

    def _request_stop(self, signum, frame):
        self.stop_requested.set()
        where = "every worker" if self.cluster else "this run"
        tqdm.write(f"[*] {signal.Signals(signum).name}: {where} saves a checkpoint and stops (again to kill)")
        self._restore_handlers()

    def _restore_handlers(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def log(self, values, step, on_summaries=None):
        """Check and print one network step's losses; write them (and call on_summaries(step)) every log_step.

        values: {TensorBoard tag: scalar}; step: that network's step counter, the summaries' x.
        """
        values = {name: float(value) for name, value in values.items()}
        bad = {name: value for name, value in values.items() if not np.isfinite(value)}
        if bad:
            name, value = next(iter(bad.items()))
            raise TrainingDiverged(f"{name} is {value} at step {step}; the last good checkpoint "
                                   f"is {self.checkpoints.latest or 'none'}")
        if self.config.debug:
            tqdm.write(f"[*] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
        if step % self.config.log_step == 0:
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)
            if on_summaries is not None:
                on_summaries(step)

    def checkpoint_and_continue(self, checkpoint_number):
        """At a point training can resume from: checkpoint if one is due; False when the run is to stop here.

        In a cluster every worker saves or none does (a save may take part in collective operations),
        and a stop requested on any worker becomes one agreed checkpoint and a stop on all of them.
        """
        due = self.checkpoints.is_due()
        if self.cluster:
            due = any_worker(self.strategy, due)
        if due:
            self.checkpoints.save(checkpoint_number)
        if not self.cluster:
            return not self.stop_requested.is_set()
        logger, level = tf.get_logger(), tf.get_logger().level
        logger.setLevel("ERROR")  # the handler's save warns that one of its own properties is deprecated
        try:
            self.preemption.save_checkpoint_if_preempted(checkpoint_number)
        finally:
            logger.setLevel(level)
        return not self.stop_agreed.is_set()
