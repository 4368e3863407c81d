"""Checkpoints: saved on a clock and on request, restored with a one-line explanation, a refiner alone.

TensorFlow writes a checkpoint's index last, so a crash mid-write keeps the previous one the latest.
"""
import os
import shutil
import tempfile
import time

import tensorflow as tf
from tqdm import tqdm

from model import build_refiner, refiner_options
from utils import OutputError, load_params


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be read; str(e) is one line."""


def restore_checkpoint(objects, path, optional=()):
    """Load path into objects ({name: network, optimizer or variable}); one-line CheckpointError if it cannot.

    Each object must find its values, except those named in optional, which an older checkpoint may lack
    (they keep theirs). Values in the file that nothing here asks for are fine: a training checkpoint's
    optimizers when only the networks are wanted, or the preemption handler's counter of a cluster run.
    """
    try:
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        wanted = {name: value for name, value in objects.items() if name in saved or name not in optional}
        status = tf.train.Checkpoint(**wanted).restore(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as error:
        message = str(error).strip().splitlines()[0]
        raise CheckpointError(f"cannot restore {path} (was it made with other flags?): {message}") from None


class Checkpoints:
    """The checkpoints of one folder: numbered saves, the latest restored, a periodic save when due."""

    def __init__(self, objects, directory, max_to_keep, every_secs=None, name="ckpt", announce=False,
                 on_save=None, chief=True, optional=()):
        """chief False (another worker of a cluster): saves go to a temporary folder, removed by close(),
        since every worker must save for the collective operations to stay in step, but only the chief's
        checkpoint is the run's; restores still read the run's folder. objects: {name: what is saved};
        optional: the names an older checkpoint may lack."""
        self.objects, self.optional = objects, optional
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.on_save = on_save  # called after each save: the exports that go with a checkpoint
        self.run_dir = directory
        save_dir = directory if chief else tempfile.mkdtemp(prefix=".simgan-worker-")
        self.manager = tf.train.CheckpointManager(self.checkpoint, save_dir, max_to_keep=max_to_keep,
                                                  checkpoint_name=name)
        self.every_secs = every_secs
        self.announce = announce
        self.last_save = time.monotonic()
        self.last_number = None

    @property
    def latest(self):
        """The run's latest checkpoint (the chief's, on another worker)."""
        return tf.train.latest_checkpoint(self.run_dir)

    def close(self):
        """Remove another worker's temporary checkpoints."""
        if self.manager.directory != self.run_dir:
            shutil.rmtree(self.manager.directory, ignore_errors=True)

    def save(self, number):
        """Write checkpoint `number` (once: a stop saves, then the trainer's end); OutputError if the disk refuses."""
        if number == self.last_number:
            return self.manager.latest_checkpoint
        try:
            path = self.manager.save(checkpoint_number=number)
        except (OSError, tf.errors.OpError) as error:
            raise OutputError(f"cannot write a checkpoint in {self.manager.directory}: {error}") from None
        if self.on_save is not None:
            self.on_save()
        self.last_save = time.monotonic()
        self.last_number = number
        if self.announce:
            tqdm.write(f"[*] Saved checkpoint {path}")
        return path

    def is_due(self):
        """True when every_secs have passed since the last save."""
        return self.every_secs is not None and time.monotonic() - self.last_save >= self.every_secs

    def restore_latest(self):
        """Restore the latest checkpoint, if there is one; returns its path or None."""
        latest = self.latest
        if latest is not None:
            restore_checkpoint(self.objects, latest, self.optional)
        return latest


def find_refiner_checkpoint(refiner_path, log_dir, flag="refiner_path"):
    """The latest checkpoint of a generative model: a path, a name under log_dir, or that name less `generative_`."""
    tried = list(dict.fromkeys([refiner_path, os.path.join(log_dir, refiner_path),
                                os.path.join(log_dir, f"generative_{refiner_path}")]))
    for folder in tried:
        latest = tf.train.latest_checkpoint(folder) if os.path.isdir(folder) else None
        if latest:
            return latest
    raise CheckpointError(f"--{flag}={refiner_path}: no checkpoint in {', '.join(tried)}; "
                          f"train a generative model first")


def keep_run_networks(config, model_dir):
    """Resuming a run: the options that shape its networks (model.REFINER_OPTIONS) and that the command line
    does not give are the run's own, from its params.json, so that its checkpoint fits what is built. Says
    which were taken."""
    given = getattr(config, "given_flags", frozenset())
    taken = {flag: value for flag, value in refiner_options(load_params(model_dir)).items()
             if flag not in given and getattr(config, flag) != value}
    for flag, value in taken.items():
        setattr(config, flag, value)
    if taken:
        tqdm.write("[*] Resuming with the run's own " + " ".join(f"--{flag}={value}" for flag, value in taken.items()))


def load_refiner(checkpoint_path, image_shape, data_set="gaze"):
    """Only the refiner of a generative checkpoint, built as its run built it (the options of its params.json):
    no discriminator, optimizers or history buffer."""
    options = refiner_options(load_params(os.path.dirname(checkpoint_path)))
    refiner = build_refiner(image_shape, data_set, **options)
    restore_checkpoint({"refiner": refiner}, checkpoint_path)
    return refiner
