"""Command-line flags: the original's four argparse groups, parsed without eval.

Every flag keeps the original's name and default so each command of its README
runs unchanged. `get_config` parses; `check_config` validates the values alone,
before the data loads, and `check_config_against_data` what needs the data's
counts (the sample grid, the estimator's split), before any network is built.
Both raise ConfigError with a one-line message that names the flag.
"""
import argparse
import re
import sys

# The smallest height or width the gaze estimator's unpadded convs and pools accept (model.build_estimator):
# 19 -> 13 after three convs -> 6 after pool1 -> 2 after two convs -> 1 after pool2.
MIN_ESTIMATOR_INPUT = 19
# The estimator on the bundled sample: 252 steps (batch 128, 12 epochs) reach 5.5 degrees on the real
# eyes; about 60 (batch 512) leave it near 15 degrees on synthetic and refined crops alike.
MIN_ESTIMATOR_STEPS = 200     # fewer optimizer steps than this over --num_epochs: warn before training
GOOD_ESTIMATOR_STEPS = 300    # what the suggested --batch_size gives at least
MIN_PROBE_IMAGES = 20         # of each kind, for the realism probe's five folds to hold a few of each
# The estimation probe's labelled images held out (synthetic, real), each at most a fifth of what is left: README,
# 'Keeping the best refiner', measures its cost and ranking at these sizes.
ESTIMATION_PROBE_IMAGES = (1024, 512)


# Flags whose default depends on --data_set (the paper's appendix: the hand networks take 224x224
# depth crops and pre-train the refiner for 500 steps). A value given on the command line always wins.
DATA_SET_DEFAULTS = {
    "gaze": {"input_height": 35, "input_width": 55, "input_channel": 1, "initial_K_g": 1000, "batch_size": 512,
             "buffer_size": 25600, "learning_rate": 0.001, "synthetic_image_dir": "UnityEyes",
             "real_image_dir": "MPIIGaze", "self_regularization": "identity", "estimation_probe_step": 500},
    # 224x224 images: batch 32 (the refiner steps through it an image at a time, trainer.MICRO_BATCH_PIXELS),
    # the buffer at 640 MB.
    # Learning rate 1e-4: at 1e-3 Adam's first step saturates the tanh of the 10-block 7x7 refiner for good.
    "hand": {"input_height": 224, "input_width": 224, "input_channel": 1, "initial_K_g": 500, "batch_size": 32,
             "buffer_size": 3200, "learning_rate": 1e-4, "self_regularization": "identity",
             # Off: a probe's 200 steps do not teach the hourglass anything (84 px on the sample; README).
             "estimation_probe_step": 0},
    # Any two folders: the input follows the images and the networks and schedule follow the input
    # (resolve_folder_flags, once the folders are read). colour_cast: measured in README, 'Your own data'.
    "folders": {"self_regularization": "colour_cast", "estimation_probe_step": 0},  # no labels
}
# `python main.py` on the bundled gaze sample (only there): a first run that shows a result in about 15 minutes
# on 2 cores in fp32 (README, 'Results on the bundled sample'), probed often enough to see the realism probe
# fall. Flags given on the command line win; --sample_schedule=False gives the original's defaults.
SAMPLE_SCHEDULE = {"batch_size": 32, "buffer_size": 3200, "initial_K_g": 100, "initial_K_d": 50, "max_step": 150,
                   "log_step": 10, "eval_step": 50}  # 400 refiner steps: no estimation probe (every 500)
# --data_set=folders: inputs whose shorter side is under this get the eye networks, others the hand's. Their
# refiners see 19 and 127 pixels around a pixel: at 35 and 224 rows, about 55% of the shorter side each; this
# is the side where both are equally far (by ratio) from that share.
HAND_DESIGN_SIDE = 90
MAX_HISTORY_BYTES = 640 * 2 ** 20  # --data_set=folders: the history buffer's default size at most (the hand's)
MIN_FOLDER_INPUT = 12  # the eye discriminator's two stride-2 convolutions and 3x3 valid pool need this much


class ConfigError(ValueError):
    """A flag value that cannot work; str(e) names the flag and the value."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one `[!]` line, no usage dump."""

    def error(self, message):
        self.exit(2, f"[!] {message} (see python main.py --help)\n")


def str2bool(value):
    """Parse the original's boolean spelling: True/False, 1/0, any case."""
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y"):
        return True
    if text in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def int_list(value):
    """Parse `[8, 8]`, `8,8` or `8 8` as a list of ints; numbers only."""
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items = [item for item in re.split(r"[,\s]+", text) if item]
    if not all(re.fullmatch(r"[+-]?\d+", item) for item in items):
        raise argparse.ArgumentTypeError(f"expected a list of integers like 8,8, got {value!r}")
    return [int(item) for item in items]


def _build_parser():
    parser = _Parser(description="SimGAN: refine simulated images with adversarial training.")

    net = parser.add_argument_group("Network")
    net.add_argument("--kernel_dims", type=int_list, default=[], help="unused, kept for the original's command lines")
    net.add_argument("--stride_size", type=int_list, default=[], help="unused, kept for the original's command lines")
    net.add_argument("--channel_dims", type=int_list, default=[], help="unused, kept for the original's command lines")

    data = parser.add_argument_group("Data")
    data.add_argument("--data_set", default="gaze", choices=list(DATA_SET_DEFAULTS),
                      help="gaze: UnityEyes -> MPIIGaze eyes; hand: NYU hand depth, synthetic -> Kinect; "
                           "folders: any two folders of images, --synthetic_image_dir -> --real_image_dir")
    data.add_argument("--data_dir", default="data", help="root of the data sets; gaze data lives in DATA_DIR/gaze")
    data.add_argument("--input_height", type=int,
                      help="network input height; images are resized to it (gaze 35, hand 224, folders: from the real images)")
    data.add_argument("--input_width", type=int,
                      help="network input width; images are resized to it (gaze 55, hand 224, folders: from the real images)")
    data.add_argument("--input_channel", type=int,
                      help="network input channels, 1 (grey) or 3 (RGB) (gaze and hand 1; folders: 3 if the real images are colour)")
    data.add_argument("--crop_to_aspect_ratio", type=str2bool, default=False,
                      help="folders: cut each image's largest centred box of the input's aspect ratio before resizing "
                           "(False: stretch it, as the original and keras' image_dataset_from_directory do)")
    data.add_argument("--max_synthetic_num", type=int, default=-1, help="preprocess at most this many UnityEyes frames (-1: all)")
    data.add_argument("--real_image_dir", help="real images: gaze MPIIGaze, under DATA_DIR/gaze; folders: any folder")
    data.add_argument("--synthetic_image_dir",
                      help="synthetic images: gaze UnityEyes, tried as given, then under DATA_DIR/gaze; folders: any folder")

    train = parser.add_argument_group("Training")
    train.add_argument("--task", default="generative", choices=["generative", "estimation"], help="generative: train or apply the refiner; estimation: the gaze estimator")
    train.add_argument("--is_train", type=str2bool, default=True,
                       help="False: refine every synthetic image with the model at --load_path "
                            "(--task=estimation: evaluate the estimator at --load_path on the real images)")
    train.add_argument("--max_step", type=int, default=10000, help="adversarial iterations after pre-training")
    train.add_argument("--reg_scale", type=float, default=0.5, help="lambda: weight of the self-regularization (L1) loss")
    train.add_argument("--self_regularization", choices=["identity", "channel_mean", "colour_cast", "derivatives"],
                       help="psi of the self-regularization |psi(refined) - psi(synthetic)|: identity (the original's; "
                            "gaze, hand), the mean of the colour channels, colour_cast: a cast over the whole "
                            "image free, the colours of its parts anchored (folders), or derivatives: neighbouring "
                            "pixels' differences and the image's mean (slow changes nearly free)")
    train.add_argument("--affine_correction", type=str2bool, default=False,
                       help="refiner: a brightness and contrast change of the whole image after its last convolution, "
                            "outside the self-regularization (README, 'When refined images stay too close')")
    train.add_argument("--noise_channels", type=int, default=0,
                       help="refiner: planes of random noise beside the synthetic image, fresh at every call")
    train.add_argument("--coordinate_channels", type=str2bool, default=False,
                       help="refiner and discriminator: each pixel's row and column beside the image")
    train.add_argument("--final_reg_scale", type=float,
                       help="lower (or raise) --reg_scale linearly to this over the adversarial iterations "
                            "(default: constant)")
    train.add_argument("--initial_K_g", type=int, help="refiner pre-training steps, self-regularization only (gaze 1000, hand 500)")
    train.add_argument("--initial_K_d", type=int, default=200, help="discriminator pre-training steps")
    train.add_argument("--K_g", type=int, default=2, help="refiner steps per adversarial iteration")
    train.add_argument("--K_d", type=int, default=1, help="discriminator steps per adversarial iteration")
    train.add_argument("--batch_size", type=int, help="images per batch, even: the discriminator takes half refined, half history (gaze 512, hand 32)")
    train.add_argument("--buffer_size", type=int, help="refined images kept in the history buffer (gaze 25600, hand 3200)")
    train.add_argument("--num_epochs", type=int, default=12, help="unused by the GAN loop; the estimator's epoch cap")
    train.add_argument("--estimator_filters", type=int, default=256,
                       help="hand estimator: channels of the hourglass residual modules (Newell et al.'s 256)")
    train.add_argument("--estimator_depth", type=int, default=3,
                       help="hand estimator: halvings in each hourglass; the input's sides must be multiples of 4 * 2**depth")
    train.add_argument("--estimator_stacks", type=int, default=2, help="hand estimator: stacked hourglasses (the paper: 2)")
    train.add_argument("--heatmap_sigma", type=float, default=1.0,
                       help="hand estimator: standard deviation of the target Gaussians, in heatmap cells (4 input pixels)")
    train.add_argument("--validation_share", type=float, default=0.1,
                       help="estimator: share of the synthetic files held out to decide when to stop")
    train.add_argument("--random_seed", type=int, default=123, help="seeds numpy, TensorFlow and the data order")
    train.add_argument("--learning_rate", type=float, help="learning rate of both optimizers (gaze 0.001, hand 0.0001)")
    train.add_argument("--checkpoint_secs", type=int, default=300, help="seconds between checkpoints")
    train.add_argument("--max_grad_norm", type=float, default=50.0, help="each gradient tensor is clipped to this norm")
    train.add_argument("--optimizer", default="adam", help="adam or sgd")

    misc = parser.add_argument_group("Misc")
    misc.add_argument("--log_step", type=int, default=20, help="steps between summaries and sample grids")
    misc.add_argument("--eval_step", type=int, default=500,
                      help="refiner steps between the probes of refinement (probe/ in TensorBoard); 0: none")
    misc.add_argument("--estimation_probe_step", type=int,
                      help="refiner steps between estimation probes: small estimators trained on refined held-out "
                           "images, their error on labelled real ones; they choose the best refiner (gaze 500, about "
                           "3%% of training time; hand 0: none, its probe learns nothing in that time)")
    misc.add_argument("--refiner", default="latest", choices=["latest", "best"],
                      help="test mode and --refiner_path: the run's latest refiner (the original's) or the one its "
                           "probes found best (refiner_best.keras; README, 'Keeping the best refiner')")
    misc.add_argument("--probe_images", type=int, default=256,
                      help="synthetic and real images held out of training for the probes (at most a fifth of each)")
    misc.add_argument("--log_dir", default="logs", help="checkpoints, TensorBoard events and params.json go in LOG_DIR/NAME")
    misc.add_argument("--sample_dir", default="samples", help="sample grids go in SAMPLE_DIR/NAME")
    misc.add_argument("--output_dir", default="outputs", help="test mode writes refined images to OUTPUT_DIR/NAME")
    misc.add_argument("--load_path", default="", help="model name (or path) to resume from or to refine with")
    misc.add_argument("--refiner_path", default="",
                      help="estimator: train on crops refined by this generative model (name under LOG_DIR, or path)")
    misc.add_argument("--debug", type=str2bool, default=False, help="print the losses of every step")
    misc.add_argument("--sample_schedule", type=str2bool, default=True,
                      help="on the bundled gaze sample, a schedule sized for it (about 15 minutes on 2 cores) for "
                           "the flags not given; False: the original's defaults there too")
    misc.add_argument("--gpu_memory_fraction", type=float, default=1.0, help="share of GPU memory TensorFlow may take (1.0: grow as needed)")
    misc.add_argument("--mixed_precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                      help="auto: bf16 on a CPU with native bfloat16 (AMX or AVX512-BF16: 1.8-3.2x faster, README), "
                           "else fp32; fp16 (with loss scaling) is for GPUs")
    misc.add_argument("--distribution", default="auto", choices=["auto", "none", "mirrored", "multi_worker"],
                      help="auto: MirroredStrategy over all GPUs when there are two or more, else none; mirrored: "
                           "over the GPUs (or --cpu_replicas CPUs); multi_worker: the cluster of TF_CONFIG")
    misc.add_argument("--cpu_replicas", type=int, default=1,
                      help="split the CPU into this many logical devices (to try --distribution=mirrored without GPUs)")
    misc.add_argument("--jit_compile", type=str2bool, default=False,
                      help="compile the step functions with XLA (measured 2x slower on CPU; try it on a GPU)")
    misc.add_argument("--max_image_summary", type=int, default=7, help="images per TensorBoard image summary")
    misc.add_argument("--sample_image_grid", type=int_list, default=[8, 8], help="rows and columns of the sample grid, e.g. 8,8")
    return parser


def get_config(argv=None):
    """Parse the command line (sys.argv when argv is None); unknown flags are an error.

    config.given_flags: the flags the command line named (not saved in params.json: not a flag).
    """
    argv = sys.argv[1:] if argv is None else argv
    config = _build_parser().parse_args(argv)
    for flag, default in DATA_SET_DEFAULTS[config.data_set].items():
        if getattr(config, flag) is None:
            setattr(config, flag, default)
    config.given_flags = _given_flags(argv)
    return config


def _given_flags(argv):
    """The flags argv names: parsed again with no defaults, so only what was given is set."""
    parser = _build_parser()
    for action in parser._actions:  # argparse has no public way to drop every default
        action.default = argparse.SUPPRESS
    return frozenset(vars(parser.parse_args(argv)))


def apply_sample_schedule(config):
    """Training on the bundled gaze sample: SAMPLE_SCHEDULE for the flags not given (none with
    --sample_schedule=False). Returns {flag: value} of those set."""
    if not (config.sample_schedule and config.is_train and config.task == "generative"):
        return {}
    given = getattr(config, "given_flags", frozenset())  # a config made in code names none
    chosen = {flag: value for flag, value in SAMPLE_SCHEDULE.items() if flag not in given}
    for flag, value in chosen.items():
        setattr(config, flag, value)
    return chosen


def image_shape(config):
    """(height, width, channels) of the networks' inputs."""
    return config.input_height, config.input_width, config.input_channel


def check_config(config):
    """Raise ConfigError for the first flag value that cannot work."""
    def require(ok, flag, message):
        if not ok:
            raise ConfigError(f"--{flag}={getattr(config, flag)}: {message}")

    if config.data_set == "folders":
        _check_folder_flags(config, require)
    for flag in ("input_height", "input_width", "input_channel", "batch_size", "buffer_size",
                 "log_step", "checkpoint_secs", "max_image_summary", "num_epochs", "cpu_replicas", "probe_images"):
        require(getattr(config, flag) is None or getattr(config, flag) > 0, flag, "must be positive")
    for flag in ("max_step", "initial_K_g", "initial_K_d", "K_g", "K_d", "eval_step", "estimation_probe_step"):
        require(getattr(config, flag) is None or getattr(config, flag) >= 0, flag, "must not be negative")
    if None in (config.batch_size, config.buffer_size, config.input_channel, config.learning_rate):
        return  # --data_set=folders: the rest is checked again once the images have set them
    if config.is_train and config.task == "generative":  # refining and the estimator: any batch size will do
        require(config.batch_size >= 2 and config.batch_size % 2 == 0, "batch_size",
                "must be even and at least 2 (the discriminator takes half refined, half history)")
        require(config.buffer_size >= config.batch_size, "buffer_size",
                f"must hold at least one batch (--batch_size={config.batch_size})")
    require(config.input_channel in (1, 3), "input_channel", "must be 1 (grayscale) or 3 (RGB)")
    require(config.learning_rate > 0, "learning_rate", "must be positive")
    require(config.max_grad_norm > 0, "max_grad_norm", "must be positive")
    require(config.reg_scale >= 0, "reg_scale", "must not be negative")
    require(config.final_reg_scale is None or config.final_reg_scale >= 0, "final_reg_scale", "must not be negative")
    require(config.noise_channels >= 0, "noise_channels", "must not be negative")
    require(config.optimizer in ("adam", "sgd"), "optimizer", "must be adam or sgd")
    require(config.max_synthetic_num == -1 or config.max_synthetic_num > 0, "max_synthetic_num",
            "must be -1 (all) or positive")
    require(0 < config.gpu_memory_fraction <= 1, "gpu_memory_fraction", "must be in (0, 1]")
    require(len(config.sample_image_grid) == 2 and min(config.sample_image_grid) > 0,
            "sample_image_grid", "must be two positive integers, rows,cols")
    require(config.is_train or bool(config.load_path), "is_train",
            "test mode needs a trained model: pass --load_path=NAME")
    for flag in ("kernel_dims", "stride_size", "channel_dims"):
        require(all(value > 0 for value in getattr(config, flag)), flag, "must be positive integers")
    require(0 < config.validation_share < 1, "validation_share", "must be between 0 and 1")
    require(not config.refiner_path or config.task == "estimation", "refiner_path",
            "refines the estimator's training images: use it with --task=estimation")
    if config.task == "estimation" and config.data_set == "gaze":
        for flag in ("input_height", "input_width"):
            require(getattr(config, flag) >= MIN_ESTIMATOR_INPUT, flag,
                    f"the estimator's unpadded convolutions need at least {MIN_ESTIMATOR_INPUT}")
    if config.task == "estimation" and config.data_set == "hand":
        for flag in ("estimator_filters", "estimator_depth", "estimator_stacks", "heatmap_sigma"):
            require(getattr(config, flag) > 0, flag, "must be positive")
        multiple = 4 * 2 ** config.estimator_depth  # the heatmaps' stride 4, then each hourglass halving
        for flag in ("input_height", "input_width"):
            require(getattr(config, flag) % multiple == 0, flag,
                    f"the hand estimator (--estimator_depth={config.estimator_depth}) needs a multiple of {multiple}")


def _check_folder_flags(config, require):
    """--data_set=folders: its folders named, no labels to estimate from, an input its networks can take."""
    require(config.task == "generative", "task", "--data_set=folders has no labels to train an estimator on")
    require(bool(config.synthetic_image_dir), "synthetic_image_dir",
            "--data_set=folders needs the folder of synthetic images (python -m data.folder_sample --out DIR "
            "writes a pair to try)")
    require(bool(config.real_image_dir) or not config.is_train, "real_image_dir",
            "--data_set=folders needs the folder of real images to train")
    for flag in ("input_height", "input_width"):
        require(getattr(config, flag) is None or getattr(config, flag) >= MIN_FOLDER_INPUT, flag,
                f"the discriminator's strided convolutions need at least {MIN_FOLDER_INPUT}")


def network_design(data_set, height, width):
    """Which of the paper's designs (model.REFINER_DESIGNS: "gaze", the eye's, or "hand") an input gets."""
    if data_set != "folders":
        return data_set
    return "gaze" if min(height, width) < HAND_DESIGN_SIDE else "hand"


def resolve_folder_flags(config, height, width, channels):
    """Set the --data_set=folders flags not given: the input (height, width, channels: what the images say),
    then the schedule of the paper's data set whose networks that input gets, the history buffer at most
    MAX_HISTORY_BYTES. Returns the flags set, {flag: value}."""
    chosen = {flag: value for flag, value in (("input_height", height), ("input_width", width),
                                              ("input_channel", channels)) if getattr(config, flag) is None}
    for flag, value in chosen.items():
        setattr(config, flag, value)
    design = network_design("folders", config.input_height, config.input_width)
    defaults = dict(DATA_SET_DEFAULTS[design])
    batch = config.batch_size or defaults["batch_size"]
    image_bytes = 4 * config.input_height * config.input_width * config.input_channel  # float32
    batches = min(defaults["buffer_size"] // defaults["batch_size"], MAX_HISTORY_BYTES // (image_bytes * batch))
    defaults["buffer_size"] = max(1, batches) * batch
    for flag in ("initial_K_g", "batch_size", "buffer_size", "learning_rate"):
        if getattr(config, flag) is None:
            chosen[flag] = defaults[flag]
            setattr(config, flag, defaults[flag])
    return chosen


def check_config_against_replicas(config, replicas):
    """--batch_size is the global batch: every replica takes an equal share (and, training the GAN, an even one)."""
    if replicas == 1 or (not config.is_train and config.task == "generative") or config.batch_size is None:
        return  # (None: --data_set=folders, checked again once the images set it)
    share = 2 * replicas if config.task == "generative" else replicas
    if config.batch_size % share:
        why = (f"each of the {replicas} replicas needs an even share (half refined, half history)"
               if config.task == "generative" else f"the {replicas} replicas need equal shares")
        raise ConfigError(f"--batch_size={config.batch_size}: {why}; use a multiple of {share}")


def probe_images(config, num_synthetic, num_real):
    """How many synthetic and real images the probes hold out of training: 0 when they are off."""
    if not (config.is_train and config.task == "generative" and config.eval_step):
        return 0
    count = min(config.probe_images, num_synthetic // 5, num_real // 5)
    return count if count >= MIN_PROBE_IMAGES else 0


def estimation_probe_images(config, num_synthetic, num_real):
    """(synthetic, real) labelled images the estimation probe holds out of training, of the images the realism probes
    left: (0, 0) when it is off, would never run in this run, or would have too few."""
    if not (config.is_train and config.task == "generative" and config.data_set != "folders"
            and 0 < config.estimation_probe_step <= config.initial_K_g + config.K_g * config.max_step):
        return 0, 0
    synthetic, real = (min(most, count // 5) for most, count in zip(ESTIMATION_PROBE_IMAGES, (num_synthetic, num_real)))
    return (synthetic, real) if min(synthetic, real) >= MIN_PROBE_IMAGES else (0, 0)


def check_config_against_data(config, data):
    """The checks that need the data (its counts, nothing else): ConfigError before any network is built."""
    rows, cols = config.sample_image_grid
    held_out = probe_images(config, data.num_synthetic, len(data.real_images))
    if config.is_train and config.task == "generative" and config.eval_step and not held_out:
        print(f"[!] --eval_step={config.eval_step}: no probes, the data sets are too small to hold out "
              f"{MIN_PROBE_IMAGES} images of each (a fifth at most)")
    num_synthetic = data.num_synthetic - held_out
    num_synthetic -= estimation_probe_images(config, num_synthetic, len(data.real_images) - held_out)[0]
    if config.is_train and config.task == "generative" and rows * cols > num_synthetic:
        raise ConfigError(f"--sample_image_grid={rows},{cols}: needs {rows * cols} test images but the "
                          f"synthetic set has {num_synthetic}")
    if data.estimation_sizes is not None:
        _check_estimation_sets(config, *data.estimation_sizes)


def _check_estimation_sets(config, num_training, num_validation):
    """The estimator needs a full training batch, a validation image where the data set holds some out, and
    (measured on the gaze sample) enough steps to learn."""
    if num_validation is not None and (num_validation < 1 or num_training < config.batch_size):
        raise ConfigError(f"--batch_size={config.batch_size}: the estimator's training split holds {num_training} "
                          f"labelled crops (--validation_share={config.validation_share} of the synthetic set "
                          f"held out); use a smaller batch or more synthetic images")
    if num_training < config.batch_size:
        raise ConfigError(f"--batch_size={config.batch_size}: the estimator's training set holds {num_training} images")
    if config.data_set != "gaze":
        return
    steps = (num_training // config.batch_size) * config.num_epochs
    if steps < MIN_ESTIMATOR_STEPS:
        batch = _batch_for_steps(num_training, config.num_epochs)
        per_epoch = num_training // batch
        advice = (f"--batch_size={batch} gives {per_epoch} steps per epoch, {per_epoch * config.num_epochs} in all"
                  if per_epoch * config.num_epochs >= MIN_ESTIMATOR_STEPS
                  else "use more synthetic images or a larger --num_epochs")
        print(f"[!] --batch_size={config.batch_size}: {num_training} training crops make only {steps} optimizer "
              f"steps in {config.num_epochs} epochs, too few to train the estimator (on the bundled sample it stays "
              f"about 15 degrees off, with no other sign of trouble); {advice}")


def _batch_for_steps(num_training, num_epochs):
    """The largest power-of-two batch that gives at least GOOD_ESTIMATOR_STEPS steps (1 if none does)."""
    batch = 1
    while (num_training // (2 * batch)) * num_epochs >= GOOD_ESTIMATOR_STEPS:
        batch *= 2
    return batch
