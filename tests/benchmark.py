"""How fast SimGAN runs on this machine: training iteration, test mode, preprocessing, memory.

Run from anywhere: ``python tests/benchmark.py [--batch 64] [--steps N] [--repeats R] [--quick]``.
A script, not a test: pytest collects test_*.py only. It writes everything into a temporary folder.

What it prints, each figure a median with the number of repetitions beside it:
- the ceiling: fp32 GFLOP/s of one 3x3 64->64 convolution (forward, NHWC, in a tf.function);
- the training iteration (K_g refiner steps, each pushing to the history buffer, then K_d
  discriminator steps on a history sample), fed from tensors in memory and from the real tf.data
  pipelines, side by side with the same iteration written idiomatically in PyTorch (if installed),
  with XLA (jit_compile) and with bfloat16 mixed precision, and where its time goes;
- test mode (refine a folder of crops: decode, refine, encode, write) against its compute bound;
- UnityEyes preprocessing (640x480 jpg + json -> crop PNG) in frames/s;
- the peak resident memory of `python main.py` at the default flags for a few iterations;
- a last line `key=value ...` with every figure, for scripts.

The machine may be shared: the configurations are measured in interleaved rounds (each round runs
every one of them once, in an order rotated each round, and measures the ceiling between them), and
every ratio is the median of the per-round ratios, so a slow spell affects both sides of a ratio
alike; the ratio of the best rounds is printed beside it.

FLOPs count convolutions only (pooling, activations, losses and Adam are left out), from the Keras
layer shapes: 2 * H_out * W_out * k * k * C_in * C_out per convolution per image, and a backward
pass counts as 2x its forward pass for every network the gradient flows through.
"""
import argparse
import contextlib
import io
import itertools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # the Trainer's and the cropper's progress bars
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from config import check_config, get_config  # noqa: E402
from data.gaze_data import load_gaze_data, real_dataset, synthetic_dataset  # noqa: E402
from data.sample_data import write_sample  # noqa: E402
from data.unityeyes import CROP_SUFFIX, prepare_crops  # noqa: E402
from layers import denormalize  # noqa: E402
from trainer import Trainer  # noqa: E402
from utils import prepare_dirs, save_image  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # a benchmark-only dependency, never in requirements.txt
    torch = None

TORCH_INSTALL = "pip install torch==2.13.0"
CEILING_CHANNELS = 64
MEMORY_TIMEOUT_SECS = 900


def parse_args(argv=None):
    """The flags, with the sizes that --quick shrinks filled in."""
    parser = argparse.ArgumentParser(description="Benchmark SimGAN's training, test mode, preprocessing and memory.")
    parser.add_argument("--batch", type=int, default=None, help="batch size of the training iteration and test mode "
                                                                "(default 64, --quick 16)")
    parser.add_argument("--steps", type=int, default=None, help="training iterations per configuration and round "
                                                                "(default 2, --quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds / repetitions of every measurement "
                                                                  "(default 3, --quick 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a minute or two: fewer iterations, "
                                                             "smaller folders, a shorter memory run")
    args = parser.parse_args(argv)
    args.batch = args.batch or (16 if args.quick else 64)
    args.steps = args.steps or (1 if args.quick else 2)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.warmup = 1                                   # untimed: tracing, XLA compiling, the buffer in steady state
    args.ceiling_secs = 0.3 if args.quick else 0.6    # each measurement of the ceiling
    args.num_frames = 96 if args.quick else 384       # synthetic frames of the training / test-mode sample
    args.num_real = 64 if args.quick else 256
    args.preprocess_frames = 192 if args.quick else 800
    if args.batch < 2 or args.batch % 2:
        parser.error(f"--batch={args.batch}: must be even and at least 2")
    args.num_frames = max(args.num_frames, args.batch, 64)  # 64: main.py's default 8x8 sample grid
    return args


# ---- measuring ----

def median(values):
    """The median of a list of measurements."""
    return statistics.median(values)


def timed(function, *arguments):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function(*arguments)
    return time.perf_counter() - start, result


@contextlib.contextmanager
def quiet():
    """Swallow the project's `[*]` progress lines while it is being measured."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def sync(values):
    """Bring losses to the host, as the training loop does after every iteration."""
    return [float(value) for value in values]


def cpu_name():
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags():
    """The CPU's feature flags (avx512_bf16, amx_bf16, ...); empty where /proc/cpuinfo is missing."""
    try:
        with open("/proc/cpuinfo") as handle:
            return set(next(line for line in handle if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def num_cpus():
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---- FLOPs from the layer shapes ----

def conv_flops(model):
    """Forward FLOPs per image of a Keras model's convolutions: 2 * H_out * W_out * k * k * C_in * C_out each."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += conv_flops(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kernel_height, kernel_width, channels_in, channels_out = layer.kernel.shape
            total += 2 * height * width * kernel_height * kernel_width * channels_in * channels_out
    return total


def iteration_flops(refiner, discriminator, batch, K_g, K_d):
    """One adversarial iteration: K_g refiner steps (forward and backward through both networks) and
    K_d discriminator steps (half a batch refined without gradients, then forward and backward of the
    discriminator on a fake and a real batch)."""
    refiner_step = 3 * (refiner + discriminator) * batch
    discriminator_step = refiner * batch // 2 + 3 * discriminator * 2 * batch
    return K_g * refiner_step + K_d * discriminator_step


# ---- the ceiling ----

def tf_ceiling(batch, height, width):
    """A measure(seconds) -> GFLOP/s of one 3x3 64->64 'SAME' convolution, forward, NHWC fp32, tf.function."""
    images = tf.random.normal((batch, height, width, CEILING_CHANNELS))
    kernel = tf.random.normal((3, 3, CEILING_CHANNELS, CEILING_CHANNELS), stddev=0.05)
    convolve = tf.function(lambda: tf.nn.conv2d(images, kernel, 1, "SAME"))
    flops = 2 * batch * height * width * 9 * CEILING_CHANNELS * CEILING_CHANNELS

    def measure(seconds):
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < seconds:
            float(convolve()[0, 0, 0, 0])
            calls += 1
        return flops * calls / (time.perf_counter() - start) / 1e9

    measure(0)  # trace, and let oneDNN pick its kernel
    return measure


def torch_ceiling(batch, height, width):
    """The same convolution in PyTorch (NCHW, its default layout), for reference."""
    images = torch.randn(batch, CEILING_CHANNELS, height, width)
    convolve = torch.nn.Conv2d(CEILING_CHANNELS, CEILING_CHANNELS, 3, padding=1, bias=False)
    flops = 2 * batch * height * width * 9 * CEILING_CHANNELS * CEILING_CHANNELS

    def measure(seconds):
        calls, start = 0, time.perf_counter()
        with torch.no_grad():
            while calls < 2 or time.perf_counter() - start < seconds:
                convolve(images)
                calls += 1
        return flops * calls / (time.perf_counter() - start) / 1e9

    measure(0)
    return measure


# ---- the data ----

def make_config(args, tmp, *flags):
    """A checked config whose folders all lie in tmp, with summaries and checkpoints out of the way."""
    config = get_config([f"--data_dir={tmp}/data", f"--log_dir={tmp}/logs", f"--sample_dir={tmp}/samples",
                         f"--output_dir={tmp}/outputs", f"--batch_size={args.batch}", "--sample_image_grid=2,2",
                         "--log_step=1000000", "--checkpoint_secs=1000000", *flags])
    check_config(config)
    prepare_dirs(config)
    return config


class Feeds:
    """The training batches: a few pipeline batches held in memory (cycled), and the live pipelines."""

    def __init__(self, config, data, batch, held=4):
        shape = (config.input_height, config.input_width, config.input_channel)
        self.make_synthetic = lambda seed: synthetic_dataset(data.synthetic_paths, shape, batch, seed)
        self.make_real = lambda seed: real_dataset(data.real_images, shape, batch, seed)
        synthetic = list(self.make_synthetic(1).take(held))
        real = list(self.make_real(1).take(held // 2))
        self.memory = (itertools.cycle(synthetic), itertools.cycle(real))
        self.pipeline = (iter(self.make_synthetic(2)), iter(self.make_real(2)))
        self.synthetic_held, self.real_held = synthetic, real


# ---- the TensorFlow iteration ----

def jit_trainer(config, data):
    """A Trainer built with --jit_compile=True: its step functions compiled with XLA."""
    return Trainer(argparse.Namespace(**{**vars(config), "jit_compile": True}), data)


def fill_history(trainer, refined):
    """Fill the buffer, as pre-training does at the default flags, so pushes overwrite at random."""
    for _ in range(-(-trainer.history_buffer.capacity // len(refined))):
        trainer.history_buffer.push(refined)


def tf_iteration(trainer, feed, K_g, K_d):
    """One adversarial iteration as Trainer._train_both runs it, losses brought to the host at the end."""
    synthetic_batches, real_batches = feed
    for _ in range(K_g):
        refiner_losses, refined = trainer.refiner_step(next(synthetic_batches))
        trainer.history_buffer.push(refined)
    for _ in range(K_d):
        history = trainer.history_buffer.sample()
        discriminator_losses = trainer.discriminator_step(next(synthetic_batches), history, next(real_batches))
    trainer.step.assign_add(1)
    return sync(list(refiner_losses.values()) + list(discriminator_losses.values()))


def tf_runner(trainer, feed, K_g, K_d):
    """A run(iterations) -> seconds per iteration; fills the history buffer first."""
    _, refined = trainer.refiner_step(next(feed[0]))
    fill_history(trainer, refined)

    def run(iterations):
        start = time.perf_counter()
        for _ in range(iterations):
            losses = tf_iteration(trainer, feed, K_g, K_d)
        run.losses = losses
        return (time.perf_counter() - start) / iterations

    return run


def bf16_trainer(config, data):
    """A Trainer whose networks compute in bfloat16 (variables and losses stay float32)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        return Trainer(config, data)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---- the PyTorch iteration ----

if torch is not None:
    class TorchResnetBlock(torch.nn.Module):
        """conv-ReLU-conv, add the input, ReLU: layers.resnet_block."""

        def __init__(self, filters):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(filters, filters, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(filters, filters, 3, padding=1)

        def forward(self, inputs):
            return F.relu(inputs + self.conv2(F.relu(self.conv1(inputs))))

    class TorchSimGAN:
        """model.py's refiner and discriminator and trainer.py's two steps, written the PyTorch way (NCHW)."""

        def __init__(self, config, seed=0):
            torch.manual_seed(seed)
            nn, channels = torch.nn, config.input_channel
            self.refiner = nn.Sequential(
                nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU(),
                *[TorchResnetBlock(64) for _ in range(4)],
                nn.Conv2d(64, channels, 1), nn.Tanh())
            # Keras 'SAME' with stride 2 pads 35 -> 18 and 18 -> 9 rows; padding=1 gives the same shapes.
            self.discriminator = nn.Sequential(
                nn.Conv2d(channels, 96, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(96, 64, 3, stride=2, padding=1), nn.ReLU(),
                nn.MaxPool2d(3, stride=1),
                nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(),
                nn.Conv2d(32, 32, 1), nn.ReLU(),
                nn.Conv2d(32, 2, 1))                                   # (batch, 2, 7, 12) patch logits
            for module in itertools.chain(self.refiner.modules(), self.discriminator.modules()):
                if isinstance(module, nn.Conv2d):  # Glorot weights, zero bias, as layers.conv2d
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
            self.reg_scale, self.clip = config.reg_scale, config.max_grad_norm
            self.refiner_optimizer = torch.optim.Adam(self.refiner.parameters(), config.learning_rate, eps=1e-8)
            self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(), config.learning_rate,
                                                            eps=1e-8)
            self.half_batch = config.batch_size // 2
            self.capacity = config.buffer_size
            shape = (config.input_channel, config.input_height, config.input_width)
            self.history = torch.zeros(self.capacity, *shape)
            self.history_size = 0
            self.generator = torch.Generator().manual_seed(seed)

        @staticmethod
        def patch_cross_entropy(logits, label):
            labels = torch.full((logits.shape[0], *logits.shape[2:]), label, dtype=torch.long)
            return F.cross_entropy(logits, labels, reduction="none").sum(dim=(1, 2))

        def _apply(self, loss, model, optimizer):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for parameter in model.parameters():  # Keras' clipnorm clips each gradient tensor on its own
                torch.nn.utils.clip_grad_norm_(parameter, self.clip)
            optimizer.step()

        def refiner_step(self, synthetic):
            self.discriminator.requires_grad_(False)
            refined = self.refiner(synthetic)
            realism = self.patch_cross_entropy(self.discriminator(refined), 1)
            regularization = self.reg_scale * (refined - synthetic).abs().sum(dim=(1, 2, 3))
            loss = (realism + regularization).mean()
            self._apply(loss, self.refiner, self.refiner_optimizer)
            self.discriminator.requires_grad_(True)
            return [loss.detach(), realism.mean().detach(), regularization.mean().detach()], refined.detach()

        def discriminator_step(self, synthetic, history, real):
            with torch.no_grad():
                fresh = self.refiner(synthetic[: self.half_batch])
            fake = self.patch_cross_entropy(self.discriminator(torch.cat([fresh, history])), 0)
            real = self.patch_cross_entropy(self.discriminator(real), 1)
            loss = (fake + real).mean()
            self._apply(loss, self.discriminator, self.discriminator_optimizer)
            return [loss.detach(), fake.mean().detach(), real.mean().detach()]

        def push(self, batch):
            if self.history_size < self.capacity:
                stored = min(len(batch), self.capacity - self.history_size)
                self.history[self.history_size: self.history_size + stored] = batch[:stored]
                self.history_size += stored
            else:
                slots = torch.randint(self.capacity, (self.half_batch,), generator=self.generator)
                picks = torch.randint(len(batch), (self.half_batch,), generator=self.generator)
                self.history[slots] = batch[picks]

        def sample(self):
            return self.history[torch.randint(self.history_size, (self.half_batch,), generator=self.generator)]


def to_torch(batches):
    """NHWC TensorFlow batches -> NCHW torch tensors, PyTorch's default layout."""
    return [torch.from_numpy(np.ascontiguousarray(batch.numpy().transpose(0, 3, 1, 2))) for batch in batches]


def torch_conv_flops(model, input_shape):
    """The Keras count for a torch model: 2 * H_out * W_out * k * k * C_in * C_out per convolution."""
    total = []

    def count(module, inputs, output):
        kernel_height, kernel_width = module.kernel_size
        total.append(2 * output.shape[2] * output.shape[3] * kernel_height * kernel_width
                     * module.in_channels * module.out_channels // module.groups)

    hooks = [module.register_forward_hook(count) for module in model.modules()
             if isinstance(module, torch.nn.Conv2d)]
    with torch.no_grad():
        output = model(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    return sum(total), tuple(output.shape[1:])


def torch_runner(gan, feeds, K_g, K_d):
    """tf_runner for TorchSimGAN, fed the same batches held in memory (as NCHW tensors)."""
    synthetic_batches = itertools.cycle(to_torch(feeds.synthetic_held))
    real_batches = itertools.cycle(to_torch(feeds.real_held))
    _, refined = gan.refiner_step(next(synthetic_batches))
    while gan.history_size < gan.capacity:
        gan.push(refined)

    def run(iterations):
        start = time.perf_counter()
        for _ in range(iterations):
            for _ in range(K_g):
                refiner_losses, refined = gan.refiner_step(next(synthetic_batches))
                gan.push(refined)
            for _ in range(K_d):
                discriminator_losses = gan.discriminator_step(next(synthetic_batches), gan.sample(),
                                                              next(real_batches))
            sync(refiner_losses + discriminator_losses)
        return (time.perf_counter() - start) / iterations

    return run


def parameter_count(model):
    """Trainable parameters of a Keras or a torch model."""
    if isinstance(model, keras.Model):
        return int(sum(np.prod(variable.shape) for variable in model.trainable_variables))
    return int(sum(parameter.numel() for parameter in model.parameters()))


# ---- the sections ----

def section(title):
    """Print a section heading."""
    print(f"\n== {title}", flush=True)


def show(label, value, unit="", detail=""):
    """Print one figure, its label aligned."""
    print(f"  {label:<46} {value}{(' ' + unit) if unit else ''}{('  ' + detail) if detail else ''}", flush=True)


def measure_training(args, tmp, results):
    """Ceiling, the iteration in every configuration (interleaved rounds), the breakdown, the traces."""
    with quiet():
        config = make_config(args, tmp)
        data = load_gaze_data(config)
        trainer = Trainer(config, data)
    K_g, K_d, batch = config.K_g, config.K_d, config.batch_size
    shape = (config.input_height, config.input_width, config.input_channel)
    refiner_flops, discriminator_flops = conv_flops(trainer.refiner), conv_flops(trainer.discriminator)
    flops = iteration_flops(refiner_flops, discriminator_flops, batch, K_g, K_d)
    results.update(refiner_gflop_per_image=refiner_flops / 1e9, discriminator_gflop_per_image=discriminator_flops / 1e9,
                   iteration_gflop=flops / 1e9)
    section("FLOPs (convolutions only, from the Keras layer shapes: 2*H_out*W_out*k*k*C_in*C_out per conv per "
            "image; backward = 2x forward)")
    show("refiner forward", f"{refiner_flops / 1e9:.4f}", "GFLOP/image")
    show("discriminator forward", f"{discriminator_flops / 1e9:.4f}", "GFLOP/image")
    show(f"one iteration (K_g={K_g}, K_d={K_d}, batch {batch})", f"{flops / 1e9:.1f}", "GFLOP",
         "= K_g*3*(R+D)*B + K_d*(R*B/2 + 3*D*2B)")

    feeds = Feeds(config, data, batch)
    measure_ceiling = tf_ceiling(batch, config.input_height, config.input_width)
    configurations, trainers = build_configurations(config, data, trainer, feeds, shape)
    for run in configurations.values():
        run(args.warmup)
    rounds = run_rounds(args, configurations, measure_ceiling, flops)
    if torch is not None:
        measure_torch_ceiling = torch_ceiling(batch, config.input_height, config.input_width)
        rounds["torch_ceilings"] = [measure_torch_ceiling(args.ceiling_secs) for _ in range(args.repeats)]
    report_training(args, results, config, flops, rounds, bf16_losses=configurations["bf16"].losses)
    report_traces(results, {"": trainer, "jit ": trainers["jit"]})
    measure_breakdown(args, results, trainer, feeds, K_g, K_d)
    with quiet():
        trainer.checkpoint_manager.save()
    return config, refiner_flops, trainers["bf16"]


def build_configurations(config, data, trainer, feeds, shape):
    """{name: run(iterations) -> seconds per iteration}, in the order each round runs them."""
    K_g, K_d = config.K_g, config.K_d
    configurations = {"tf_mem": tf_runner(trainer, feeds.memory, K_g, K_d),
                      "tf_pipe": tf_runner(trainer, feeds.pipeline, K_g, K_d)}
    if torch is not None:
        gan = TorchSimGAN(config)
        check_torch_mirror(gan, trainer, shape, conv_flops(trainer.refiner), conv_flops(trainer.discriminator))
        configurations["torch"] = torch_runner(gan, feeds, K_g, K_d)
    with quiet():
        trainers = {"jit": jit_trainer(config, data), "bf16": bf16_trainer(config, data)}
    configurations["jit"] = tf_runner(trainers["jit"], feeds.memory, K_g, K_d)
    configurations["bf16"] = tf_runner(trainers["bf16"], feeds.memory, K_g, K_d)
    return configurations, trainers


def run_rounds(args, configurations, measure_ceiling, flops):
    """Every configuration once per round, in an order rotated each round, the ceiling measured between them.

    A configuration's share of the ceiling uses the two ceiling measurements beside it.
    """
    times = {name: [] for name in configurations}
    shares = {name: [] for name in configurations}
    ceilings = [measure_ceiling(args.ceiling_secs)]
    names = list(configurations)
    for round_index in range(args.repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = configurations[name](args.steps)
            ceilings.append(measure_ceiling(args.ceiling_secs))
            times[name].append(seconds)
            shares[name].append(flops / seconds / 1e9 / ((ceilings[-2] + ceilings[-1]) / 2))
    return {"times": times, "shares": shares, "ceilings": ceilings}


def check_torch_mirror(gan, trainer, shape, refiner_flops, discriminator_flops):
    """The torch networks must have the Keras networks' parameters, convolution FLOPs and output shape."""
    torch_shape = (shape[2], shape[0], shape[1])
    torch_refiner_flops, _ = torch_conv_flops(gan.refiner, torch_shape)
    torch_discriminator_flops, logits_shape = torch_conv_flops(gan.discriminator, torch_shape)
    keras_logits = tuple(trainer.discriminator.output.shape[1:])
    same = (parameter_count(gan.refiner) == parameter_count(trainer.refiner)
            and parameter_count(gan.discriminator) == parameter_count(trainer.discriminator)
            and (torch_refiner_flops, torch_discriminator_flops) == (refiner_flops, discriminator_flops)
            and logits_shape == (keras_logits[2], *keras_logits[:2]))
    if not same:
        raise SystemExit("[!] the PyTorch networks no longer mirror model.py: update TorchSimGAN in "
                         "tests/benchmark.py")


def report_training(args, results, config, flops, rounds, bf16_losses):
    """Print the ceiling and every configuration's figures; fill results."""
    batch, K_g, K_d = config.batch_size, config.K_g, config.K_d
    times, shares, ceilings = rounds["times"], rounds["shares"], rounds["ceilings"]
    section(f"Ceiling: one 3x3 {CEILING_CHANNELS}->{CEILING_CHANNELS} conv, batch {batch} at "
            f"{config.input_height}x{config.input_width}, fp32, forward (median of {len(ceilings)}: before, "
            f"between and after the configurations of every round)")
    ceiling = median(ceilings)
    show("TensorFlow (NHWC, tf.function)", f"{ceiling:.1f}", "GFLOP/s", f"(best {max(ceilings):.1f})")
    results["ceiling_gflops"] = ceiling
    if rounds.get("torch_ceilings"):
        torch_ceiling = median(rounds["torch_ceilings"])
        show("PyTorch (NCHW), for reference", f"{torch_ceiling:.1f}", "GFLOP/s",
             f"(median of {len(rounds['torch_ceilings'])})")
        results["torch_ceiling_gflops"] = torch_ceiling

    section(f"Training iteration: K_g={K_g} refiner steps + K_d={K_d} discriminator step, history push/sample, "
            f"batch {batch}, buffer {config.buffer_size} (full); median of {args.repeats} interleaved rounds x "
            f"{args.steps} iterations (the order rotates each round); ratios: median of the per-round ratios")
    print(f"  images/s: synthetic images the refiner trains on, K_g*batch = {K_g * batch} per iteration. "
          f"GFLOP/s: {flops / 1e9:.1f} GFLOP per iteration / seconds;\n  share of the ceiling: against the "
          f"ceiling measured just before and after that configuration in the same round.")
    labels = {"tf_mem": "(a) TensorFlow, fed from tensors in memory",
              "tf_pipe": "(b) TensorFlow, fed by the tf.data pipelines",
              "torch": "PyTorch, fed from tensors in memory",
              "jit": "TensorFlow + XLA (jit_compile=True), from memory",
              "bf16": "TensorFlow, mixed_bfloat16, from memory (FLOPs as fp32)"}
    for name, label in labels.items():
        if name not in times:
            continue
        seconds = median(times[name])
        print(f"  {label}")
        show("    seconds per iteration", f"{seconds:.3f}", "s",
             "(rounds: " + ", ".join(f"{value:.2f}" for value in times[name]) + ")")
        show("    images/s", f"{K_g * batch / seconds:.1f}")
        show("    GFLOP/s", f"{flops / seconds / 1e9:.1f}")
        show("    share of the ceiling", f"{100 * median(shares[name]):.1f}", "%")
        results.update({f"{name}_s_per_iter": seconds, f"{name}_img_s": K_g * batch / seconds,
                        f"{name}_gflops": flops / seconds / 1e9, f"{name}_ceiling_pct": 100 * median(shares[name])})
    # Contention on a shared machine comes and goes; OpenMP (torch) suffers from it more than TensorFlow's
    # work-stealing pool, so the ratio of the best rounds is shown beside the median of per-round ratios.
    ratio = lambda a, b: median([x / y for x, y in zip(times[a], times[b])])  # noqa: E731
    best = lambda a, b: min(times[a]) / min(times[b])  # noqa: E731
    pairs = {"pipeline_overhead_pct": ("tf_pipe", "tf_mem"), "jit_speedup": ("tf_mem", "jit"),
             "bf16_speedup": ("tf_mem", "bf16"), "tf_over_torch": ("torch", "tf_mem")}
    for key, (a, b) in pairs.items():
        if a in times and b in times:
            scale, offset = (100, -100) if key.endswith("pct") else (1, 0)
            results[key] = scale * ratio(a, b) + offset
            results[key + "_best"] = scale * best(a, b) + offset
    number = lambda value, unit: f"{value:+.1f}" if unit == "%" else f"{value:.2f}"  # noqa: E731
    both = lambda key, unit: (number(results[key], unit), unit,  # noqa: E731
                              f"(best rounds: {number(results[key + '_best'], unit)} {unit})")
    show("pipeline overhead ((b)-(a))/(a)", *both("pipeline_overhead_pct", "%"))
    show("XLA speed-up (time fp32 / time XLA)", *both("jit_speedup", "x"))
    show("bf16 speed-up (time fp32 / time bf16)", *both("bf16_speedup", "x"))
    print(f"  bf16 losses finite: {all(np.isfinite(bf16_losses))}")
    if "torch" in times:
        show("TF/torch speed ratio (time torch / time TF (a))", *both("tf_over_torch", "x"))
        print("  (> 1: TensorFlow is faster)")
    else:
        print(f"  PyTorch comparison skipped: torch is not installed ({TORCH_INSTALL})")
        results["tf_over_torch"] = "skipped"


def report_traces(results, trainers):
    """Every step function must have one concrete function after all the iterations."""
    section("Retracing (concrete functions per step function after every iteration above; 1 = no retrace)")
    counts = {}
    for prefix, trainer in trainers.items():
        for name, function in (("refiner_step", trainer.refiner_step),
                               ("discriminator_step", trainer.discriminator_step),
                               ("history push", trainer.history_buffer.push),
                               ("history sample", trainer.history_buffer.sample)):
            counts[prefix + name] = function.experimental_get_tracing_count()
    print("  " + ", ".join(f"{name}={count}" for name, count in counts.items()))
    retraces = sum(max(0, count - 1) for count in counts.values())
    show("retraces after the first iteration", retraces, "", "OK" if retraces == 0 else "[!] retracing")
    results["retraces"] = retraces


def measure_breakdown(args, results, trainer, feeds, K_g, K_d):
    """Each part of the iteration alone, fed from memory, beside a whole iteration; and the pipeline alone."""
    synthetic, real = feeds.memory
    iteration = tf_runner(trainer, feeds.memory, K_g, K_d)
    refined = trainer.refiner_step(next(synthetic))[1]
    history = trainer.history_buffer.sample()
    calls = max(2, args.steps)
    parts = {
        "refiner_step": lambda: sync(trainer.refiner_step(next(synthetic))[0].values()),
        "discriminator_step": lambda: sync(trainer.discriminator_step(next(synthetic), history, next(real)).values()),
        "history push": lambda: trainer.history_buffer.push(refined),
        "history sample": lambda: float(trainer.history_buffer.sample()[0, 0, 0, 0]),
    }
    per_iteration = {"refiner_step": K_g, "discriminator_step": K_d, "history push": K_g, "history sample": K_d}
    shares = {name: [] for name in parts}
    seconds = {name: [] for name in parts}
    for _ in range(args.repeats):
        whole = iteration(1)
        for name, part in parts.items():
            seconds[name].append(timed(lambda: [part() for _ in range(calls)])[0] / calls)
            shares[name].append(per_iteration[name] * seconds[name][-1] / whole)
    section(f"Where the iteration goes (each part alone, from memory, beside one whole iteration; median of "
            f"{args.repeats} x {calls} calls)")
    for name in parts:
        show(f"{name} x{per_iteration[name]}", f"{1000 * median(seconds[name]):.1f} ms each", "",
             f"{100 * median(shares[name]):.1f}% of the iteration")
        results[f"{name.replace(' ', '_')}_ms"] = 1000 * median(seconds[name])
    accounted = [sum(shares[name][index] for name in parts) for index in range(args.repeats)]
    show("sum of the parts / iteration", f"{100 * median(accounted):.1f}", "%")
    pipeline = pipeline_alone(args, feeds)
    show("synthetic pipeline alone (fresh iterator)", f"{pipeline:.1f} batches/s",
         "", f"{(K_g + K_d) / pipeline * 1000:.1f} ms of CPU per iteration when not overlapped")
    results["synthetic_pipeline_batches_s"] = pipeline


def pipeline_alone(args, feeds):
    """Synthetic batches/s of a fresh training pipeline with nothing else to do."""
    batches = max(4, args.steps * 4)
    rates = []
    for seed in range(args.repeats):
        iterator = iter(feeds.make_synthetic(100 + seed))
        next(iterator)
        seconds, _ = timed(lambda: [next(iterator) for _ in range(batches)])
        rates.append(batches / seconds)
    return median(rates)


def measure_test_mode(args, tmp, train_config, refiner_flops, bf16, results):
    """Trainer.test() on the sample's crops against its compute bound, and each of its stages alone."""
    with quiet():
        config = make_config(args, tmp, "--is_train=False", f"--load_path={train_config.model_dir}")
        data = load_gaze_data(config, load_real=False)
        trainer = Trainer(config, data)
    count, batch = len(data.synthetic_paths), config.batch_size
    shape = (config.input_height, config.input_width, config.input_channel)
    images = tf.random.uniform((batch, *shape), -1, 1)
    measure_ceiling = tf_ceiling(batch, config.input_height, config.input_width)
    scratch = os.path.join(tmp, "test_stages")
    os.makedirs(scratch)
    trainer.refine(images), bf16.refine(images)  # trace
    batches = -(-count // batch)
    decoded = synthetic_dataset(data.synthetic_paths, shape, batch, 0, training=False)
    pixels = denormalize(np.concatenate([crops for crops, _ in decoded]))  # real crops: PNG size depends on content
    stages = {
        "test": lambda: quietly(trainer.test),
        "refine fp32": lambda: [float(trainer.refine(images)[0, 0, 0, 0]) for _ in range(batches)],
        "refine bf16": lambda: [float(bf16.refine(images)[0, 0, 0, 0]) for _ in range(batches)],
        "decode": lambda: [len(paths) for _, paths in synthetic_dataset(data.synthetic_paths, shape, batch, 0,
                                                                         training=False)],
        "write": lambda: [save_image(image, os.path.join(scratch, f"{index}_refined.png"))
                          for index, image in enumerate(pixels)],
    }
    rates, shares = {name: [] for name in stages}, []
    for _ in range(args.repeats):
        shutil.rmtree(config.output_model_dir, ignore_errors=True)
        os.makedirs(config.output_model_dir)
        ceiling = measure_ceiling(args.ceiling_secs)
        for name, stage in stages.items():
            rates[name].append((batches * batch if name.startswith("refine") else count) / timed(stage)[0])
        shares.append(rates["test"][-1] / (ceiling * 1e9 / refiner_flops))
    report_test_mode(args, results, config, count, rates, shares, refiner_flops)


def quietly(function):
    """Call function without its progress lines."""
    with quiet():
        return function()


def report_test_mode(args, results, config, count, rates, shares, refiner_flops):
    """Print test mode's figures and each stage's throughput."""
    written = len(os.listdir(config.output_model_dir))
    rate = median(rates["test"])
    bound = median(rates["test"]) / median(shares)
    section(f"Test mode: Trainer.test() on {count} crops, batch {config.batch_size} (median of {args.repeats}; "
            f"the ceiling measured again beside each)")
    show("refined images/s (decode, refine, encode, write)", f"{rate:.1f}", "", f"({written} files written)")
    show("compute bound: ceiling / refiner forward FLOPs", f"{bound:.1f}", "images/s",
         f"({refiner_flops / 1e9:.3f} GFLOP per image)")
    show("share of the bound reached", f"{100 * median(shares):.1f}", "%")
    print("  each stage alone:")
    labels = {"decode": "decode + resize (the tf.data pipeline)", "refine fp32": "refiner, from memory",
              "refine bf16": "refiner in mixed_bfloat16, from memory", "write": "denormalize + save_image (serial)"}
    for name, label in labels.items():
        show(f"    {label}", f"{median(rates[name]):.1f}", "images/s")
    serial = 1 / sum(1 / median(rates[name]) for name in ("decode", "refine fp32", "write"))
    show("    one after the other (1 / sum of 1/rate)", f"{serial:.1f}", "images/s", "(what no overlap gives)")
    results.update(test_img_s=rate, test_bound_img_s=bound, test_bound_pct=100 * median(shares),
                   test_decode_img_s=median(rates["decode"]), test_refine_img_s=median(rates["refine fp32"]),
                   test_refine_bf16_img_s=median(rates["refine bf16"]), test_write_img_s=median(rates["write"]))


def measure_preprocessing(args, tmp, results):
    """prepare_crops on freshly written 640x480 UnityEyes frames, crops removed between repetitions."""
    directory = os.path.join(tmp, "preprocess", "gaze", "UnityEyes")
    with quiet():
        write_sample(os.path.join(tmp, "preprocess", "gaze"), num_synthetic=args.preprocess_frames, num_real=2, seed=7)
    rates = []
    for _ in range(args.repeats):
        for name in os.listdir(directory):
            if name.endswith(CROP_SUFFIX):
                os.remove(os.path.join(directory, name))
        seconds, report = timed(prepare_crops, directory)
        assert len(report.paths) == args.preprocess_frames, report.skipped
        rates.append(args.preprocess_frames / seconds)
    section(f"UnityEyes preprocessing: {args.preprocess_frames} frames of 640x480 (jpg + json -> crop PNG), "
            f"{num_cpus()} worker processes (median of {args.repeats})")
    show("frames/s", f"{median(rates):.1f}", "", f"(best {max(rates):.1f}; pool start-up included)")
    results["preprocess_frames_s"] = median(rates)


def measure_memory(args, tmp, results):
    """Peak RSS of `python main.py` at the default batch and buffer, for a few iterations, in a child process."""
    steps = ["--max_step=0", "--initial_K_g=1", "--initial_K_d=1"] if args.quick else \
        ["--max_step=2", "--initial_K_g=2", "--initial_K_d=1"]
    run = os.path.join(tmp, "memory")
    command = [sys.executable, "main.py", f"--data_dir={tmp}/data", *steps, "--log_step=1000",
               f"--log_dir={run}/logs", f"--sample_dir={run}/samples", f"--output_dir={run}/outputs"]
    log_path = os.path.join(tmp, "memory.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    main_peak_kb, started = 0, time.monotonic()
    while True:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
        if pid:
            break
        main_peak_kb = max(main_peak_kb, vm_hwm_kb(process.pid))
        if time.monotonic() - started > MEMORY_TIMEOUT_SECS:
            process.kill()
        time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    section(f"Peak memory: python main.py at the default batch 512 and buffer 25600, {' '.join(steps)} "
            f"(1 run, {seconds:.0f} s; the sample has {args.num_frames} synthetic images, at least the 8x8 grid's 64)")
    if process.returncode != 0:
        with open(log_path) as log:
            print(log.read()[-3000:])
        show("peak resident memory", "failed", "", f"(exit status {process.returncode})")
        results["peak_rss_mb"] = "failed"
        return
    # Not wait4's ru_maxrss: it keeps the pages the child shared with this (large) process between fork
    # and exec, and read 3.6 GB where main.py itself peaked at 1.7 GB. VmHWM starts afresh at exec.
    peak_mb = main_peak_kb / 1024
    show("peak resident memory (VmHWM of main.py, polled every 0.2 s)", f"{peak_mb:.0f}", "MB")
    results["peak_rss_mb"] = peak_mb


def vm_hwm_kb(pid):
    """A live process's peak resident memory so far (VmHWM), in kB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def header(args):
    """Print the run's sizes, the machine, the versions and the thread counts (and set torch's)."""
    flags = cpu_flags()
    print(f"SimGAN benchmark: batch {args.batch}, {args.repeats} rounds x {args.steps} iterations"
          f"{' (--quick)' if args.quick else ''}")
    print(f"machine: {cpu_name()}, {num_cpus()} CPUs, avx512_bf16: {'avx512_bf16' in flags}, "
          f"amx_bf16: {'amx_bf16' in flags}; load average at start {os.getloadavg()[0]:.2f}")
    versions = f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    print(f"software: {versions}, "
          + (f"torch {torch.__version__}" if torch else f"torch not installed ({TORCH_INSTALL})"))
    threads = num_cpus()
    if torch is not None:
        torch.set_num_threads(threads)
    intra = tf.config.threading.get_intra_op_parallelism_threads() or f"default = {threads}"
    inter = tf.config.threading.get_inter_op_parallelism_threads() or "default"
    print(f"threads: TensorFlow intra-op {intra} (one per CPU), inter-op {inter}; "
          + (f"torch.set_num_threads({threads})" if torch else "torch: -"))


def machine_line(results):
    """`key=value ...` of every figure, floats to 4 significant digits."""
    def text(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    return " ".join(f"{key}={text(value)}" for key, value in results.items())


def main(argv=None):
    """Run every measurement in a temporary folder and print the figures."""
    args = parse_args(argv)
    header(args)
    started = time.monotonic()
    results = {"batch": args.batch, "steps": args.steps, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="simgan-benchmark-") as tmp:
        with quiet():
            write_sample(os.path.join(tmp, "data", "gaze"), num_synthetic=args.num_frames, num_real=args.num_real,
                         seed=1)
        config, refiner_flops, bf16 = measure_training(args, tmp, results)
        measure_test_mode(args, tmp, config, refiner_flops, bf16, results)
        measure_preprocessing(args, tmp, results)
        measure_memory(args, tmp, results)
    results["total_s"] = time.monotonic() - started
    print(f"\n[*] done in {results['total_s']:.0f} s")
    print(machine_line(results))


if __name__ == "__main__":
    main()
