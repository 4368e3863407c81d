"""utils.worker_pool: a pool whose work is done is closed and joined; any other exit stops it, never hangs."""
import json
import multiprocessing
import os
import shutil
import signal
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

import utils
from data import unityeyes
from data.unityeyes import CROP_SUFFIX, prepare_crops
from utils import worker_pool

STOP_SECONDS = 0.5  # utils.POOL_STOP_SECONDS in these tests, so the kill path takes a moment, not 5 s
PROMPTLY = 6  # seconds: far below the tasks' minute and the deadlines, and room for a loaded machine


@pytest.fixture(autouse=True)
def quick_stop(monkeypatch):
    monkeypatch.setattr(utils, "POOL_STOP_SECONDS", STOP_SECONDS)


@contextmanager
def deadline(seconds):
    """Fail the test, rather than hang the suite, if the block runs longer than seconds."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def announce_and_sleep(marker):
    """A task that takes a minute, after creating the file marker to say it has begun."""
    open(marker, "x").close()
    time.sleep(60)


def start_sleeping(pool, folder):
    """Hand both workers a minute-long task, and return once both are in it."""
    markers = [folder / "first", folder / "second"]
    pool.map_async(announce_and_sleep, markers, chunksize=1)
    while not all(marker.exists() for marker in markers):
        time.sleep(0.01)


def ignore_sigterm():
    """Pool initializer: a worker that never acts on SIGTERM, as one whose handler never got to run."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def never_stop(pool):
    pytest.fail("a pool whose work is done was stopped, not closed and joined")


def spy_stops(monkeypatch):
    """A list that grows by one on each stop of a pool (the real stop still runs)."""
    stops, real_stop = [], utils._stop_pool

    def stop(pool):
        stops.append(pool)
        real_stop(pool)
    monkeypatch.setattr(utils, "_stop_pool", stop)
    return stops


def unity_folder(directory, count):
    """count UnityEyes frames (copies of one gray frame and its JSON) in directory."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640), dtype=np.uint8)).save(directory / "1.jpg", quality=90)
    landmarks = [f"({300 + 30 * np.cos(a):.3f}, {280 + 12 * np.sin(a):.3f}, 9.0)" for a in np.linspace(0, 6, 16)]
    (directory / "1.json").write_text(json.dumps({"interior_margin_2d": landmarks}))
    for stem in range(2, count + 1):
        os.link(directory / "1.jpg", directory / f"{stem}.jpg")
        os.link(directory / "1.json", directory / f"{stem}.json")
    return directory


def leftovers(directory):
    """Temporary files a stopped worker left in directory (the crop index is no leftover)."""
    return [name for name in os.listdir(directory) if name.startswith(".") and name != unityeyes.INDEX_NAME]


# ---- the helper


def test_a_pool_whose_work_is_done_is_closed_and_its_workers_exit_on_their_own(monkeypatch):
    monkeypatch.setattr(utils, "_stop_pool", never_stop)
    with deadline(20):
        for _ in range(20):
            with worker_pool(2) as pool:
                workers = list(pool._pool)
                assert pool.map(abs, range(-50, 0)) == list(range(50, 0, -1))
            assert [worker.exitcode for worker in workers] == [0, 0]  # not -SIGTERM: they took the sentinel
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_the_block_stops_the_workers_within_the_bound(error, tmp_path):
    with deadline(20), pytest.raises(error):
        with worker_pool(2) as pool:
            workers = list(pool._pool)
            start_sleeping(pool, tmp_path)
            raised = time.monotonic()
            raise error("stop")
    assert time.monotonic() - raised < PROMPTLY  # not the minute the tasks would take
    assert [worker.exitcode for worker in workers] == [-signal.SIGTERM] * 2
    assert multiprocessing.active_children() == []


def test_workers_leave_ctrl_c_to_the_parent_and_run_the_callers_initializer():
    with worker_pool(2, initializer=ignore_sigterm) as pool:
        handlers = pool.map(signal.getsignal, [signal.SIGINT, signal.SIGTERM], chunksize=1)
    assert handlers == [signal.SIG_IGN, signal.SIG_IGN]


def test_workers_that_ignore_sigterm_are_killed_after_the_bounded_wait(tmp_path):
    # Pool.terminate() alone waits forever for such a worker: the hang this helper exists for.
    with deadline(20), pytest.raises(RuntimeError):
        with worker_pool(2, initializer=ignore_sigterm) as pool:
            workers = list(pool._pool)
            start_sleeping(pool, tmp_path)
            raised = time.monotonic()
            raise RuntimeError("stop")
    assert STOP_SECONDS <= time.monotonic() - raised < PROMPTLY
    assert [worker.exitcode for worker in workers] == [-signal.SIGKILL] * 2
    assert multiprocessing.active_children() == []


def test_leaving_with_tasks_in_flight_stops_the_pool(monkeypatch):
    stops = spy_stops(monkeypatch)
    with deadline(20):
        with worker_pool(2) as pool:
            for _ in pool.imap(time.sleep, [0] + [60] * 8):
                left = time.monotonic()
                break  # the first result is enough; eight sleeps are still handed out
    assert len(stops) == 1 and time.monotonic() - left < PROMPTLY
    assert multiprocessing.active_children() == []


# ---- the UnityEyes crops


def test_the_crop_pool_starts_and_finishes_many_times_in_a_row(tmp_path, monkeypatch):
    folder = unity_folder(tmp_path / "frames", unityeyes._PARALLEL_MIN)
    monkeypatch.setattr(utils, "_stop_pool", never_stop)
    pools = []
    real_pool = utils.worker_pool

    def counted(*args, **kwargs):
        pools.append(args)
        return real_pool(*args, **kwargs)
    monkeypatch.setattr(unityeyes, "worker_pool", counted)
    with deadline(60):
        for attempt in range(30):
            # Without its index every start checks all 64 crops again, in a pool (the first one makes them).
            (folder / unityeyes.INDEX_NAME).unlink(missing_ok=True)
            report = prepare_crops(folder, workers=2)
            assert len(report.paths) == unityeyes._PARALLEL_MIN and not report.skipped
    assert len(pools) == 30
    assert multiprocessing.active_children() == [] and not leftovers(folder)


def test_stopping_the_crop_pool_early_is_bounded_and_leaves_no_temporary_crop(tmp_path, monkeypatch):
    source = unity_folder(tmp_path / "source", unityeyes._PARALLEL_MIN + 40)
    stops = spy_stops(monkeypatch)
    with deadline(60):
        for attempt in range(5):
            folder = shutil.copytree(source, tmp_path / f"run{attempt}")
            report = prepare_crops(folder, max_num=5, workers=2)  # breaks out with crops in flight
            assert [os.path.basename(path) for path in report.paths] == [f"{i}{CROP_SUFFIX}" for i in range(1, 6)]
            assert multiprocessing.active_children() == [] and not leftovers(folder)
    assert len(stops) == 5
