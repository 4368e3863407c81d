"""The benchmark's PyTorch reference: model.py's networks and trainer.py's two steps, written the PyTorch way.

A module of tests/benchmark.py, not a test. PyTorch is a benchmark-only dependency, never in
requirements.txt: without it `torch` is None here and the benchmark skips the comparison.
"""
import itertools
import time

import keras
import numpy as np

from benchmark_common import CEILING_CHANNELS, ceiling_flops, gflops_meter, sync

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # a benchmark-only dependency, never in requirements.txt
    torch = None

TORCH_INSTALL = "pip install torch==2.13.0"


def torch_ceiling(batch, height, width):
    """The ceiling's convolution in PyTorch (NCHW, its default layout), for reference."""
    images = torch.randn(batch, CEILING_CHANNELS, height, width)
    convolve = torch.nn.Conv2d(CEILING_CHANNELS, CEILING_CHANNELS, 3, padding=1, bias=False)
    measure = torch.no_grad()(gflops_meter(lambda: convolve(images), ceiling_flops(batch, height, width)))
    measure(0)
    return measure


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
    """benchmark_training.tf_runner for TorchSimGAN, fed the same batches held in memory (as NCHW tensors)."""
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
                         "tests/benchmark_torch.py")
