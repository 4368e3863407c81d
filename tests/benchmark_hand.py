"""The hand experiment's refiner training step (`--data_set=hand`): 224x224 depth crops, batch 8.

One adversarial refiner step (refiner forward and backward, the discriminator's forward and the
gradient through it, the Adam update) in fp32 and in mixed bfloat16, in seconds per step and in
GFLOP/s against the fp32 convolution ceiling at the same image size, measured between the steps.
The hand refiner is about 0.4 TFLOP per image forward (20 7x7 convolutions of 64 maps at 224x224):
on a CPU a step takes minutes, so benchmark.py runs this section only with --hand.
"""
import argparse
import types

import keras
import tensorflow as tf

from benchmark_common import conv_flops, make_config, median, quiet, section, show, sync, tf_ceiling, timed
from trainer import Trainer
from utils import cpu_has_bf16

NO_DATA = types.SimpleNamespace()  # the step takes its batch as an argument


def hand_trainer(config, paths, policy):
    """A hand Trainer whose networks compute in `policy` (variables stay float32)."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        return Trainer(config, paths, NO_DATA)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def step_seconds(trainer, images, steps):
    """Seconds per adversarial refiner step (losses brought to the host), after one untimed step (tracing)."""
    def step():
        return sync(trainer.refiner_step(images)[0].values())

    step()
    return median([timed(step)[0] for _ in range(steps)])


def measure_hand(args, tmp, results):
    """Print the hand refiner step's figures in fp32 and bf16 (bf16 only where the CPU or GPU has it)."""
    batch, size = args.hand_batch, 224
    with quiet():
        config, paths = make_config(argparse.Namespace(batch=batch), tmp, "--data_set=hand", "--load_path=hand",
                                    f"--buffer_size={batch}")
    policies = {"fp32": "float32"}
    if tf.config.list_physical_devices("GPU") or cpu_has_bf16() or args.hand_bf16:
        policies["bf16"] = "mixed_bfloat16"
    images = tf.random.uniform((batch, size, size, 1), -1, 1)
    measure_ceiling = tf_ceiling(batch, size, size)
    section(f"Hand refiner step (--data_set=hand): batch {batch} at {size}x{size}, median of {args.hand_steps} "
            f"steps after one untimed")
    for name, policy in policies.items():
        with quiet():
            trainer = hand_trainer(config, paths, policy)
        flops = 3 * (conv_flops(trainer.refiner) + conv_flops(trainer.discriminator)) * batch
        seconds = step_seconds(trainer, images, args.hand_steps)
        ceiling = measure_ceiling(args.ceiling_secs)
        show(f"{name}: seconds per step", f"{seconds:.2f}", "s", f"({flops / 1e12:.2f} TFLOP a step)")
        show(f"{name}: GFLOP/s", f"{flops / seconds / 1e9:.1f}",
             "", f"= {100 * flops / seconds / 1e9 / ceiling:.0f}% of the fp32 ceiling ({ceiling:.1f} GFLOP/s)")
        results.update({f"hand_{name}_s_per_step": seconds, f"hand_{name}_gflops": flops / seconds / 1e9,
                        f"hand_{name}_ceiling_pct": 100 * flops / seconds / 1e9 / ceiling})
    if "bf16" not in policies:
        print("  bf16 skipped: this CPU has no native bfloat16 (AMX or AVX512-BF16), where it is emulated and "
              "about 16x slower; --hand_bf16 measures it anyway")
