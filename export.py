"""The trained refiner outside this program: a Keras 3 file and a SavedModel, and loading either back.

Written beside each checkpoint of a run, LOG_DIR/NAME/refiner.keras opens with
`keras.models.load_model` in a plain Python (standard layers only unless the run used the refiner's
opt-in additions, whose layers.py classes register when imported; float32 whatever precision
trained it) and LOG_DIR/NAME/refiner_saved_model/ serves `serving_default`: float32 images
(N, height, width, channels) in [-1, 1] in, the refined images out, for TensorFlow Serving,
`saved_model_cli` or a TFLite converter.
"""
import os
import zipfile

import keras
import tensorflow as tf

from best_refiner import describe_best
from checkpoints import CheckpointError, find_refiner_checkpoint, load_refiner
from utils import atomic_write, load_params

KERAS_FILE = "refiner.keras"
SAVED_MODEL_DIR = "refiner_saved_model"
BEST_NAME = "refiner_best"  # the best refiner's exports (best_refiner.py): refiner_best.keras, its SavedModel
SIGNATURE_INPUT, SIGNATURE_OUTPUT = "images", "refined"


def float32_refiner(refiner):
    """A copy of refiner whose layers compute in float32 (its weights are float32 in every policy)."""
    def float32_layer(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(refiner, clone_function=float32_layer)
    copy.set_weights(refiner.get_weights())
    return copy


class RefinerExporter:
    """Writes MODEL_DIR/refiner.keras and MODEL_DIR/refiner_saved_model/ (with name="refiner_best":
    refiner_best.keras and refiner_best_saved_model/), each atomically, at each call.

    The float32 copy and its serving function are built (and traced) once, so a checkpoint's exports
    cost about a second, not several.
    """

    def __init__(self, refiner, model_dir, name="refiner"):
        self.refiner, self.model_dir = refiner, model_dir
        self.keras_file, self.saved_model_dir = f"{name}.keras", f"{name}_saved_model"
        self.copy = float32_refiner(refiner)
        self.module = tf.Module()
        self.module.refiner = self.copy
        spec = tf.TensorSpec((None, *self.copy.input_shape[1:]), tf.float32, SIGNATURE_INPUT)
        self.module.serve = tf.function(lambda images: {SIGNATURE_OUTPUT: self.copy(images, training=False)},
                                        input_signature=[spec])

    @property
    def files(self):
        """Where the exports are written: the .keras file, the SavedModel folder."""
        return (os.path.join(self.model_dir, self.keras_file),
                os.path.join(self.model_dir, self.saved_model_dir) + os.sep)

    def __call__(self):
        self.copy.set_weights(self.refiner.get_weights())
        atomic_write(os.path.join(self.model_dir, self.keras_file), self.copy.save, to_path=True)
        atomic_write(os.path.join(self.model_dir, self.saved_model_dir), self._save_serving, to_path=True)

    def _save_serving(self, path):
        tf.saved_model.save(self.module, path, signatures={"serving_default": self.module.serve})


class ServingRefiner:
    """A SavedModel's serving_default as refine(images); it holds the loaded object, so its variables live."""

    def __init__(self, path):
        self.loaded = tf.saved_model.load(path)
        self.signature = self.loaded.signatures["serving_default"]
        self.input_shape = tuple(self.signature.structured_input_signature[1][SIGNATURE_INPUT].shape[1:])

    def __call__(self, images):
        return self.signature(**{SIGNATURE_INPUT: images})[SIGNATURE_OUTPUT]


def is_export(path):
    """True if path names a .keras file or a SavedModel folder rather than a run."""
    return str(path).endswith(".keras") or os.path.isfile(os.path.join(path, "saved_model.pb"))


def load_any_refiner(source, log_dir, image_shape, flag, data_set="gaze", which="latest"):
    """A refiner callable refine(images) -> refined images, from a .keras file, a SavedModel or a run.

    source: a .keras file, a SavedModel folder, or a generative run (name under log_dir or path), whose
    latest checkpoint's refiner (which="latest") or best refiner (which="best": its refiner_best.keras) is
    loaded; CheckpointError (one line, naming --flag) when it cannot be. Returns (refine, what was loaded).
    """
    if not is_export(source):
        checkpoint = find_refiner_checkpoint(source, log_dir, flag)
        if which == "best":
            return _load_best(os.path.dirname(checkpoint), image_shape, flag)
        refiner = load_refiner(checkpoint, image_shape, data_set)
        return (lambda images: refiner(images, training=False)), checkpoint
    serve, shape = _load_export(source, flag)
    if shape != tuple(image_shape):
        raise CheckpointError(f"--{flag}={source}: the refiner takes {shape} images, the flags ask for "
                              f"{tuple(image_shape)} (--input_height, --input_width, --input_channel)")
    return serve, source


def _load_best(model_dir, image_shape, flag):
    """The best refiner a run kept (its refiner_best.keras), as load_any_refiner returns it."""
    path = os.path.join(model_dir, f"{BEST_NAME}.keras")
    if not os.path.exists(path):
        raise CheckpointError(f"--refiner=best: {model_dir} kept no best refiner (no probe ran in it, or an earlier "
                              f"version trained it); --refiner=latest takes its last")
    refine, loaded = load_any_refiner(path, None, image_shape, flag)
    return refine, f"{loaded} (the best probe's: {describe_best(model_dir)})"


def trained_input_shape(source, log_dir, flag):
    """(height, width, channels) of what the refiner at source takes: an export's input, a run's flags."""
    if is_export(source):
        return _load_export(source, flag)[1]
    model_dir = os.path.dirname(find_refiner_checkpoint(source, log_dir, flag))
    params = load_params(model_dir)
    try:
        return tuple(int(params[name]) for name in ("input_height", "input_width", "input_channel"))
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"--{flag}={source}: no readable params.json in {model_dir} to tell the refiner's "
                              f"input; give --input_height, --input_width and --input_channel") from None


def _load_export(source, flag):
    """(refine, (height, width, channels)) of a .keras file or a SavedModel; CheckpointError when it cannot be."""
    if not os.path.exists(source):
        raise CheckpointError(f"--{flag}={source}: no such file")
    if str(source).endswith(".keras") and not zipfile.is_zipfile(source):
        raise CheckpointError(f"--{flag}={source}: not a whole .keras file (truncated or damaged)")
    try:
        if str(source).endswith(".keras"):
            refiner = keras.models.load_model(source, compile=False)
            serve = lambda images: refiner(images, training=False)  # noqa: E731
            shape = tuple(refiner.input_shape[1:])
        else:
            serve = ServingRefiner(source)
            shape = serve.input_shape
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, tf.errors.OpError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"--{flag}={source}: cannot load the refiner ({message[:200]})") from None
    return serve, shape
