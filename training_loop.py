"""What both trainers share: the optimizers, one update, and the bookkeeping around every step.

After each network step a trainer calls `TrainingLoop.log`: the losses must be finite, `--debug`
prints them, and at steps that are multiples of `log_step` they go to TensorBoard at x = that step.
At each point a run can resume from, it calls `TrainingLoop.resumable`: a checkpoint every
`checkpoint_secs`, and a SIGINT/SIGTERM becomes a request to stop there (the trainer then saves).
"""
import signal

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm


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


class TrainingLoop:
    """A context for a training loop: stop requests while inside, and the checks and writes after each step."""

    def __init__(self, config, checkpoints):
        self.config = config
        self.checkpoints = checkpoints
        self.stop_requested = False

    def __enter__(self):
        self.stop_requested = False
        self._previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        self._restore_handlers()

    def _request_stop(self, signum, frame):
        self.stop_requested = True
        tqdm.write(f"[*] {signal.Signals(signum).name}: saving a checkpoint and stopping (again to kill)")
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

    def resumable(self, checkpoint_number):
        """A point training can resume from: checkpoint if one is due; False when a stop was requested."""
        self.checkpoints.save_if_due(checkpoint_number)
        return not self.stop_requested
