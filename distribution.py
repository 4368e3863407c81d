"""Devices, precision and tf.distribute: what trains, on which devices, and which process writes.

`--distribution=auto` mirrors over every GPU when there are two or more and uses no strategy
otherwise; `mirrored` mirrors over the GPUs, or over `--cpu_replicas` logical CPUs on a machine
without GPUs; `multi_worker` reads the cluster from TF_CONFIG. Without a strategy TensorFlow's
default strategy stands in, so the trainers have one code path: `distribute` splits a global
batch into the replicas' shares, the steps run on every replica, and their losses are summed.
"""
import functools
import json
import os

import keras
import tensorflow as tf

from config import ConfigError
from utils import cpu_has_bf16, gpu_memory_mb

PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def configure_devices(config):
    """GPU memory (growth, or a hard share) and --cpu_replicas logical CPUs, before TensorFlow starts them."""
    gpus = tf.config.list_physical_devices("GPU")
    totals = gpu_memory_mb() if gpus and config.gpu_memory_fraction < 1.0 else []
    try:
        for index, gpu in enumerate(gpus):  # TF2's form of the original's per_process_gpu_memory_fraction
            if index < len(totals):
                limit = int(totals[index] * config.gpu_memory_fraction)
                tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        if config.cpu_replicas > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * config.cpu_replicas)
    except RuntimeError:  # TensorFlow started its devices already, in an earlier run in this process
        if len(tf.config.list_logical_devices("CPU")) != config.cpu_replicas:
            raise ConfigError(f"--cpu_replicas={config.cpu_replicas}: TensorFlow's devices were set up already "
                              f"in this process; only a fresh process can split the CPU") from None


def configure_precision(choice):
    """Set Keras' global dtype policy; returns the precision used. Variables stay float32 in every case."""
    if choice == "auto":
        # Measured by tests/benchmark.py (README, Performance): faster on every CPU with native bfloat16 tried
        # (1.8x with AVX512-BF16, 3.2x with AMX), the same losses within 1.5%.
        choice = "bf16" if not tf.config.list_physical_devices("GPU") and cpu_has_bf16() else "fp32"
    keras.mixed_precision.set_global_policy(PRECISIONS[choice])
    return choice


def planned_replicas(config):
    """How many replicas --distribution will give, from the flags and the physical devices alone."""
    if not config.is_train and config.task == "generative":
        return 1  # refining runs on one device
    gpus = len(tf.config.list_physical_devices("GPU"))
    choice = config.distribution
    if choice == "auto":
        choice = "mirrored" if gpus >= 2 else "none"
    if choice == "none":
        return 1
    if choice == "mirrored":
        return gpus or config.cpu_replicas
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    return max(1, workers) * max(1, gpus)


def make_strategy(config):
    """The tf.distribute strategy of --distribution (TensorFlow's default strategy for none)."""
    choice = config.distribution
    if choice == "multi_worker":  # before anything starts TensorFlow's runtime: it sets up the collectives
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if choice == "auto":
        choice = "mirrored" if len(gpus) >= 2 else "none"
    if choice == "none":
        return tf.distribute.get_strategy()
    if gpus:
        return tf.distribute.MirroredStrategy(gpus)
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())


def is_chief(strategy):
    """True for the process that writes summaries, samples, params.json and the run's checkpoints."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return resolver.task_type == "chief" or (not has_chief and resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def worker_count(strategy):
    """How many processes train together: more than 1 only for a MultiWorkerMirroredStrategy over a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def any_worker(strategy, flag):
    """True on every worker when flag is True on any: for decisions all workers must take alike."""
    return bool(_replica_sum(strategy)(tf.constant(float(flag))) > 0)


@functools.lru_cache(maxsize=None)
def _replica_sum(strategy):
    """A compiled sum over every replica of the cluster of a value each process gives (one trace a strategy)."""
    def replica_share(value):
        local = tf.identity(value)  # placed on this replica's device: all_reduce needs one
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)

    @tf.function
    def replica_sum(value):
        return strategy.experimental_local_results(strategy.run(replica_share, args=(value,)))[0]
    return replica_sum


def describe(strategy, precision):
    """One line: the devices, the replicas, the strategy and the precision training runs with."""
    if strategy.num_replicas_in_sync > 1 or getattr(strategy, "cluster_resolver", None) is not None:
        devices = strategy.extended.worker_devices
    else:  # the default strategy: TensorFlow's default device
        devices = [device.name for device in
                   (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))[:1]]
    name = type(strategy).__name__
    name = {"_DefaultDistributionStrategy": "no strategy",
            "CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}.get(name, name)
    return (f"[*] Training on {', '.join(devices)}: {strategy.num_replicas_in_sync} replica"
            f"{'s' if strategy.num_replicas_in_sync > 1 else ''}, {name}, {precision}")


def distributed_batches(strategy, make_dataset, global_batch):
    """An iterator of global batches, each replica's share read by its own worker's input pipeline.

    make_dataset(replica_batch, shard) gives one pipeline's dataset of per-replica batches, shard =
    (pipelines, this pipeline's index): in a cluster each worker reads only its own items, so the input
    work does not grow with the number of workers. On one device it is the dataset of global batches.
    """
    def dataset(context):
        return make_dataset(context.get_per_replica_batch_size(global_batch),
                            (context.num_input_pipelines, context.input_pipeline_id))

    return iter(strategy.distribute_datasets_from_function(dataset))


def local_batch(strategy, batch):
    """This process's part of a batch from distributed_batches as one tensor: the whole batch on one device."""
    return tf.concat(strategy.experimental_local_results(batch), axis=0)


def distribute(strategy, batch):
    """A global batch (a tensor or a structure of them) as each replica's equal share, in replica order.

    A batch already shared out (from distributed_batches) is returned as it is.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1 or isinstance(tf.nest.flatten(batch)[0], tf.distribute.DistributedValues):
        return batch

    def share(context):
        index = context.replica_id_in_sync_group
        return tf.nest.map_structure(
            lambda tensor: tensor[index * (tensor.shape[0] // replicas):(index + 1) * (tensor.shape[0] // replicas)],
            batch)

    return strategy.experimental_distribute_values_from_function(share)


def run_on_replicas(strategy, step, *args):
    """step(*args) on every replica; losses (dict) summed over replicas, any other outputs gathered in order.

    The step's outputs must be float32 whatever the precision it computed in: TensorFlow's collectives
    across workers take no bfloat16.
    Each replica's losses are its share of the global batch mean (tf.nn.compute_average_loss with the
    global batch size), so their sum is the mean over the global batch, as on one device.
    """
    outputs = strategy.run(step, args=args)  # step itself, not a wrapper: strategies unwrap a tf.function
    losses, images = (outputs[0], outputs[1:]) if isinstance(outputs, tuple) else (outputs, ())
    losses = {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for name, value in losses.items()}
    if not images:
        return losses
    return (losses, *[strategy.gather(image, axis=0) for image in images])
