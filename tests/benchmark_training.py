"""The benchmark's training sections: the ceiling, the iteration in every configuration, where it goes.

A module of tests/benchmark.py, not a test. The training iteration (K_g refiner steps, each pushing to
the history buffer, then K_d discriminator steps on a history sample) is timed fed from tensors in
memory and from the real tf.data pipelines, with XLA, with bfloat16 and (if installed) in PyTorch, in
interleaved rounds with the ceiling measured between them.
"""
import argparse
import itertools
import time

import keras
import numpy as np

import benchmark_torch
from benchmark_common import (CEILING_CHANNELS, conv_flops, make_config, median, quiet, section, show, sync,
                              tf_ceiling, timed)
from benchmark_torch import TORCH_INSTALL
from data.gaze_data import load_gaze_data
from data.pipelines import array_batches, synthetic_dataset
from distribution import make_strategy
from trainer import Trainer


def iteration_flops(refiner, discriminator, batch, K_g, K_d):
    """One adversarial iteration: K_g refiner steps (forward and backward through both networks) and
    K_d discriminator steps (half a batch refined without gradients, then forward and backward of the
    discriminator on a fake and a real batch)."""
    refiner_step = 3 * (refiner + discriminator) * batch
    discriminator_step = refiner * batch // 2 + 3 * discriminator * 2 * batch
    return K_g * refiner_step + K_d * discriminator_step


# ---- the batches ----

class Feeds:
    """The training batches: a few pipeline batches held in memory (cycled), and the live pipelines."""

    def __init__(self, config, data, batch, held=4):
        shape = (config.input_height, config.input_width, config.input_channel)
        self.make_synthetic = lambda seed: synthetic_dataset(data.synthetic_paths, shape, batch, seed)
        self.make_real = lambda seed: array_batches(data.real_images, shape, batch, seed)
        synthetic = list(self.make_synthetic(1).take(held))
        real = list(self.make_real(1).take(held // 2))
        self.memory = (itertools.cycle(synthetic), itertools.cycle(real))
        self.pipeline = (iter(self.make_synthetic(2)), iter(self.make_real(2)))
        self.synthetic_held, self.real_held = synthetic, real


# ---- the TensorFlow iteration ----

def jit_trainer(config, paths, data):
    """A Trainer built with --jit_compile=True: its step functions compiled with XLA."""
    return Trainer(argparse.Namespace(**{**vars(config), "jit_compile": True}), paths, data)


def fill_history(trainer, refined):
    """Fill the buffer, as pre-training does at the default flags, so pushes overwrite at random."""
    for _ in range(-(-trainer.history_buffer.capacity // len(refined))):
        trainer.history_buffer.push(refined)


def tf_iteration(trainer, feed, K_g, K_d):
    """One adversarial iteration as Trainer._train_adversarially runs it, losses brought to the host at the end."""
    synthetic_batches, real_batches = feed
    for _ in range(K_g):
        refiner_losses, refined = trainer.refiner_step(next(synthetic_batches))
        trainer.history_buffer.push(refined)
    for _ in range(K_d):
        history = trainer.history_buffer.sample()
        discriminator_losses = trainer.discriminator_step(next(synthetic_batches)[:len(history)], history, next(real_batches))
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


def mirrored_trainer(config, paths, data):
    """A Trainer under MirroredStrategy over the two logical CPUs benchmark.py made: what the strategy costs."""
    mirrored = argparse.Namespace(**{**vars(config), "distribution": "mirrored", "cpu_replicas": 2})
    return Trainer(mirrored, paths, data, make_strategy(mirrored))


def bf16_trainer(config, paths, data):
    """A Trainer whose networks compute in bfloat16 (variables and losses stay float32)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        return Trainer(config, paths, data)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---- the sections ----

def measure_training(args, tmp, results):
    """Ceiling, the iteration in every configuration (interleaved rounds), the breakdown, the traces.

    Returns the run's paths (its checkpoint is what test mode refines with), the refiner's forward
    FLOPs per image and the bfloat16 trainer.
    """
    with quiet():
        config, paths = make_config(args, tmp)
        data = load_gaze_data(config)
        trainer = Trainer(config, paths, data)
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
    configurations, trainers = build_configurations(config, paths, data, trainer, feeds, shape)
    for run in configurations.values():
        run(args.warmup)
    rounds = run_rounds(args, configurations, measure_ceiling, flops)
    if benchmark_torch.torch is not None:
        measure_torch_ceiling = benchmark_torch.torch_ceiling(batch, config.input_height, config.input_width)
        rounds["torch_ceilings"] = [measure_torch_ceiling(args.ceiling_secs) for _ in range(args.repeats)]
    report_training(args, results, config, flops, rounds, bf16_losses=configurations["bf16"].losses)
    report_traces(results, {"": trainer, "jit ": trainers["jit"]})
    measure_breakdown(args, results, trainer, feeds, K_g, K_d)
    with quiet():
        trainer.checkpoints.save(trainer.global_step)
    return paths, refiner_flops, trainers["bf16"]


def build_configurations(config, paths, data, trainer, feeds, shape):
    """{name: run(iterations) -> seconds per iteration}, in the order each round runs them."""
    K_g, K_d = config.K_g, config.K_d
    configurations = {"tf_mem": tf_runner(trainer, feeds.memory, K_g, K_d),
                      "tf_pipe": tf_runner(trainer, feeds.pipeline, K_g, K_d)}
    if benchmark_torch.torch is not None:
        gan = benchmark_torch.TorchSimGAN(config)
        benchmark_torch.check_torch_mirror(gan, trainer, shape, conv_flops(trainer.refiner),
                                           conv_flops(trainer.discriminator))
        configurations["torch"] = benchmark_torch.torch_runner(gan, feeds, K_g, K_d)
    with quiet():
        trainers = {"jit": jit_trainer(config, paths, data), "bf16": bf16_trainer(config, paths, data),
                    "mirrored": mirrored_trainer(config, paths, data)}
    for name in trainers:
        configurations[name] = tf_runner(trainers[name], feeds.memory, K_g, K_d)
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
              "bf16": "TensorFlow, mixed_bfloat16, from memory (FLOPs as fp32)",
              "mirrored": "TensorFlow, MirroredStrategy over 2 logical CPUs (--cpu_replicas=2), from memory"}
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
             "bf16_speedup": ("tf_mem", "bf16"), "tf_over_torch": ("torch", "tf_mem"),
             "mirrored_slowdown": ("mirrored", "tf_mem")}
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
    show("2 CPU replicas / 1 device (time mirrored / time (a))", *both("mirrored_slowdown", "x"))
    print("  (the same CPU cores either way: no speed-up is possible; this is what the strategy costs)")
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
        for name, function in (("refiner_step", trainer.compiled_steps["refiner"]),
                               ("discriminator_step", trainer.compiled_steps["discriminator"]),
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
        "discriminator_step": lambda: sync(trainer.discriminator_step(next(synthetic)[:len(history)], history, next(real)).values()),
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
