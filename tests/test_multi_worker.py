"""Two worker processes on localhost under MultiWorkerMirroredStrategy: a SIGTERM to one stops both cleanly.

The other worker is never signalled: it must save the same checkpoint and exit by itself, not wait in
a collective operation for a partner that has gone. A relaunch of both resumes from that checkpoint. The first launch trains in bfloat16, the relaunch
in float32: what crosses workers must be of a type their collectives take, in either precision.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, checkpoint_counters, folder_flags
from data.gaze_sample import write_sample

# No warm-up phases: each step function traced is seconds per process, and the adversarial steps are the point.
SCHEDULE = ["--initial_K_g=0", "--initial_K_d=0", "--K_g=2", "--K_d=1", "--batch_size=4", "--buffer_size=16",
            "--log_step=1", "--sample_image_grid=2,2", "--max_image_summary=2", "--checkpoint_secs=3600",
            "--distribution=multi_worker", "--load_path=cluster", "--debug=True", "--mixed_precision=fp32"]


def free_ports(count):
    """Ports nothing listens on now (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_workers(root, *flags):
    """Both workers of a two-worker cluster, each with its own temporary folder (TMPDIR), stdout piped."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        tmp = root / f"tmp_{index}"
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen(
            [sys.executable, "main.py", *folder_flags(root / "data", root), *SCHEDULE, *flags],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(root / f"stderr_{index}.txt", "w"), text=True))
    return workers


def finish(workers, root, timeout=180):
    """Wait for both workers; their stdout and stderr; neither may be left running."""
    outputs = []
    try:
        for index, worker in enumerate(workers):
            stdout, _ = worker.communicate(timeout=timeout)
            outputs.append((stdout, (root / f"stderr_{index}.txt").read_text()))
    finally:
        for worker in workers:
            worker.kill()
    return outputs


@pytest.fixture(scope="module")
def cluster_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    write_sample(root / "data" / "gaze", num_synthetic=16, num_real=12, seed=5)
    return root


def test_a_sigterm_to_one_worker_checkpoints_and_stops_both_and_a_relaunch_resumes(cluster_root):
    root, model_dir = cluster_root, cluster_root / "logs" / "generative_cluster"
    workers = start_workers(root, "--max_step=100000", "--mixed_precision=bf16")  # collectives take no bfloat16
    printed = []
    for line in workers[0].stdout:  # the chief's --debug lines, until the adversarial phase runs
        printed.append(line)
        if re.match(r"\[\*\] step \d+: refiner/realism_loss", line):
            break
    workers[1].send_signal(signal.SIGTERM)  # the other worker: the chief must learn of it and stop too
    (chief_out, chief_err), (other_out, other_err) = finish(workers, root)
    assert [worker.returncode for worker in workers] == [0, 0], chief_err[-2000:] + other_err[-2000:]
    assert "Traceback" not in chief_err + other_err
    assert "SIGTERM" in other_out and "every worker saved the checkpoint" in chief_out
    assert "2 replicas, MultiWorkerMirroredStrategy, bf16" in "".join(printed)
    refiner_steps, discriminator_steps, iterations = checkpoint_counters(model_dir)
    assert iterations >= 1 and refiner_steps == 2 * iterations and discriminator_steps == iterations
    checkpoints = sorted(name for name in os.listdir(model_dir) if name.endswith(".index"))
    assert checkpoints == [f"ckpt-{refiner_steps + discriminator_steps}.index"]  # one agreed save, by the chief
    assert not os.listdir(root / "tmp_1")  # the other worker's own checkpoints are gone
    assert not [name for name in os.listdir(root / "logs") if name.startswith("workertemp")]

    workers = start_workers(root, f"--max_step={iterations + 1}")  # in fp32: a checkpoint of either precision resumes
    (chief_out, chief_err), (_, other_err) = finish(workers, root)
    assert [worker.returncode for worker in workers] == [0, 0], chief_err[-2000:] + other_err[-2000:]
    assert f"iteration {iterations}" in chief_out  # the Restored line
    assert checkpoint_counters(model_dir) == (refiner_steps + 2, discriminator_steps + 1, iterations + 1)
