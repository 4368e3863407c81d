"""worker_processes.worker_pool: a pool whose work is done is shut down and joined; any other exit stops it, never hangs;
a worker that dies mid-task ends the work with WorkerLost, in every pool the program has."""
import faulthandler
import gc
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures.process import _ExecutorManagerThread
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

import worker_processes
from conftest import folder_flags, main_in_process
from data import folder_cache, folder_images, folder_sample, unityeyes
from data.sample_staging import run_tasks
from data.unityeyes import CROP_SUFFIX, prepare_crops
from utils import atomic_write
from worker_processes import WORKER_LOST, WorkerLost, worker_pool

STOP_SECONDS = 0.5  # worker_processes.POOL_STOP_SECONDS in these tests, so the kill path takes a moment, not 5 s
PROMPTLY = 6  # seconds: far below the tasks' minute and the deadlines, and room for a loaded machine
WAIT_SECONDS = 20  # how long a stand-in waits for the work it lets go first
# What the tests' stand-ins (monkeypatched in; fork takes them to the workers) call when they do not fail.
real_process_item, real_save_image, real_add = unityeyes.process_item, unityeyes.save_image, unityeyes._add
real_synthetic_image = folder_sample.synthetic_image
real_read_header, real_is_colour, real_input_row = (folder_images.read_header, folder_images.is_colour,
                                                    folder_images.input_row)


@pytest.fixture(autouse=True)
def quick_stop(monkeypatch):
    monkeypatch.setattr(worker_processes, "POOL_STOP_SECONDS", STOP_SECONDS)


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


def nothing_left():
    """True if no worker process and no executor thread is left."""
    threads = [thread for thread in threading.enumerate() if isinstance(thread, _ExecutorManagerThread)]
    return multiprocessing.active_children() == [] and threads == []


def announce_and_sleep(marker):
    """A task that takes a minute, after creating the file marker to say it has begun."""
    open(marker, "x").close()
    time.sleep(60)


def collect_garbage(_):
    """A task that runs a full garbage collection in its worker; the number of objects it freed."""
    return gc.collect()


def start_sleeping(pool, folder):
    """Hand both workers a minute-long task, and return once both are in it."""
    markers = [folder / "first", folder / "second"]
    pool.imap(announce_and_sleep, markers)  # the first chunks start at once, as a Pool's do
    while not all(marker.exists() for marker in markers):
        time.sleep(0.01)


def ignore_sigterm():
    """Worker initializer: a worker that never acts on SIGTERM, as one whose handler never got to run."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def never_stop(pool):
    pytest.fail("a pool whose work is done was stopped, not shut down and joined")


def spy_stops(monkeypatch):
    """A list that grows by one on each stop of a pool (the real stop still runs)."""
    stops, real_stop = [], worker_processes._stop_pool

    def stop(pool):
        stops.append(pool)
        real_stop(pool)
    monkeypatch.setattr(worker_processes, "_stop_pool", stop)
    return stops


def kill_self(signum=signal.SIGKILL):
    """A task whose worker dies: the OOM killer's SIGKILL, or a decoder's segfault."""
    faulthandler.disable()  # pytest's, inherited by the worker: no dump of the worker's stack on the test's output
    os.kill(os.getpid(), signum)
    time.sleep(60)


def wait_for(paths):
    """In a stand-in: wait until paths exist (the work it lets finish first), WAIT_SECONDS at most."""
    end = time.monotonic() + WAIT_SECONDS
    while not all(os.path.exists(path) for path in paths) and time.monotonic() < end:
        time.sleep(0.01)


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


@pytest.mark.parametrize("chunksize", [1, 3, 100])
def test_map_and_imap_give_the_results_in_order(chunksize):
    with deadline(20), worker_pool(2) as pool:
        assert pool.map(abs, range(-50, 0), chunksize=chunksize) == list(range(50, 0, -1))
        assert list(pool.imap(abs, range(-50, 0), chunksize=chunksize)) == list(range(50, 0, -1))
        assert pool.map(abs, []) == [] and list(pool.imap(abs, iter([]))) == []
    assert nothing_left()


class Finalized:
    """Cyclic garbage whose finalizer says, by a file named after it, which process collected it."""

    def __init__(self, folder):
        self.folder, self.cycle = folder, self

    def __del__(self):
        (self.folder / f"collected_in_{os.getpid()}").touch()


def test_a_worker_never_collects_the_garbage_it_was_forked_with(tmp_path):
    # A worker that did ran the finalizer of a TensorFlow iterator the parent had dropped, which waited
    # for good on a lock of a parent's thread: the pool hung.
    gc.disable()  # the garbage is still there at the fork
    try:
        Finalized(tmp_path)
        with deadline(20), worker_pool(2) as pool:
            pool.map(collect_garbage, range(4))
        assert list(tmp_path.iterdir()) == []
    finally:
        gc.enable()
    gc.collect()
    assert [path.name for path in tmp_path.iterdir()] == [f"collected_in_{os.getpid()}"]


def test_imap_is_lazy_and_keeps_a_bounded_number_of_tasks_in_flight():
    taken = []

    def tasks():  # endless: Executor.map, or a Pool's imap, would take it all
        for index in itertools.count():
            taken.append(index)
            yield index
    chunk, ahead = 3, 2 * worker_processes.POOL_CHUNKS_AHEAD  # two workers
    with deadline(20), worker_pool(2) as pool:
        results = pool.imap(abs, tasks(), chunksize=chunk)
        assert len(taken) == ahead * chunk  # the first chunks are under way before the first result is asked for
        assert list(itertools.islice(results, 30)) == list(range(30))
        assert len(taken) <= 30 + (ahead + 1) * chunk
    assert nothing_left()


def test_a_pool_whose_work_is_done_is_closed_and_its_workers_exit_on_their_own(monkeypatch):
    monkeypatch.setattr(worker_processes, "_stop_pool", never_stop)
    with deadline(20):
        for _ in range(20):
            with worker_pool(2) as pool:
                assert pool.map(abs, range(-50, 0)) == list(range(50, 0, -1))
                workers = pool.processes()
            assert [worker.exitcode for worker in workers] == [0, 0]  # not -SIGTERM: they took the sentinel
    assert nothing_left()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_the_block_stops_the_workers_within_the_bound(error, tmp_path):
    with deadline(20), pytest.raises(error):
        with worker_pool(2) as pool:
            start_sleeping(pool, tmp_path)
            workers = pool.processes()
            raised = time.monotonic()
            raise error("stop")
    assert time.monotonic() - raised < PROMPTLY  # not the minute the tasks would take
    assert [worker.exitcode for worker in workers] == [-signal.SIGTERM] * 2
    assert nothing_left()


def test_workers_leave_ctrl_c_to_the_parent_and_run_the_callers_initializer():
    with worker_pool(2, initializer=ignore_sigterm) as pool:
        handlers = pool.map(signal.getsignal, [signal.SIGINT, signal.SIGTERM], chunksize=1)
    assert handlers == [signal.SIG_IGN, signal.SIG_IGN]


def test_workers_that_ignore_sigterm_are_killed_after_the_bounded_wait(tmp_path):
    # Waiting for such a worker to end on SIGTERM waits forever: the hang this helper exists for.
    with deadline(20), pytest.raises(RuntimeError):
        with worker_pool(2, initializer=ignore_sigterm) as pool:
            start_sleeping(pool, tmp_path)
            workers = pool.processes()
            raised = time.monotonic()
            raise RuntimeError("stop")
    assert STOP_SECONDS <= time.monotonic() - raised < PROMPTLY
    assert [worker.exitcode for worker in workers] == [-signal.SIGKILL] * 2
    assert nothing_left()


def linger_at_exit(_):
    """A task that leaves a thread behind: its worker, told to end, waits a minute for the thread first."""
    threading.Thread(target=time.sleep, args=(60,)).start()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_workers_that_do_not_exit_when_the_work_is_done_are_stopped(monkeypatch):
    monkeypatch.setattr(worker_processes, "POOL_FINISH_SECONDS", STOP_SECONDS)
    stops = spy_stops(monkeypatch)
    with deadline(20):
        with worker_pool(2) as pool:
            pool.map(linger_at_exit, range(4), chunksize=1)
            done = time.monotonic()
    assert time.monotonic() - done < PROMPTLY and len(stops) == 1
    assert nothing_left()


def sleep_then_clean_up(marker):
    """announce_and_sleep, with a clean-up that a stop's second SIGTERM (the executor's, then ours) reaches."""
    try:
        announce_and_sleep(marker)
    finally:  # as atomic_write removes its temporary file
        os.kill(os.getpid(), signal.SIGTERM)
        open(f"{marker}.cleaned", "x").close()


def test_workers_whose_sigterm_raises_systemexit_clean_up_end_there_and_start_no_other_task(tmp_path):
    # ProcessPoolExecutor's worker loop would take the SystemExit for the task's error and go on with the
    # next task, until killed (in the middle of a file, say); these workers clean up and end at once.
    markers = [tmp_path / f"task{index}" for index in range(6)]
    with deadline(20), pytest.raises(RuntimeError):
        with worker_pool(2, initializer=unityeyes._exit_on_sigterm) as pool:
            pool.imap(sleep_then_clean_up, markers)
            while not (markers[0].exists() and markers[1].exists()):
                time.sleep(0.01)
            workers = pool.processes()
            raise RuntimeError("stop")
    assert [worker.exitcode for worker in workers] == [1, 1]  # not -SIGKILL
    assert [marker.exists() for marker in markers] == [True, True, False, False, False, False]
    assert os.path.exists(f"{markers[0]}.cleaned") and os.path.exists(f"{markers[1]}.cleaned")
    assert nothing_left()


def stop_or_announce(marker):
    if marker is None:
        worker_processes._stopping = True  # in the worker, as a SIGTERM that came between two tasks leaves it
    else:
        open(marker, "x").close()


def test_a_worker_stopped_between_tasks_starts_no_other(tmp_path):
    with deadline(20), pytest.raises(WorkerLost):
        with worker_pool(1) as pool:
            pool.map(stop_or_announce, [None, tmp_path / "next"])
    assert not (tmp_path / "next").exists() and nothing_left()


def test_leaving_with_tasks_in_flight_stops_the_pool(monkeypatch):
    stops = spy_stops(monkeypatch)
    with deadline(20):
        with worker_pool(2) as pool:
            for _ in pool.imap(time.sleep, [0] + [60] * 8):
                left = time.monotonic()
                break  # the first result is enough; eight sleeps are still handed out
    assert len(stops) == 1 and time.monotonic() - left < PROMPTLY
    assert nothing_left()


def sleep_or_die(task):
    """Sleep a minute, or die once the sleeper is in its sleep: by a signal, or by sys.exit in the task."""
    death, sleeper = task
    if death is None:
        announce_and_sleep(sleeper)
    wait_for([sleeper])
    if death == "exit":
        sys.exit(3)  # in a worker: not the parent's SystemExit
    kill_self(getattr(signal, death))


@pytest.mark.parametrize("initializer", [None, ignore_sigterm])
@pytest.mark.parametrize("death", ["SIGKILL", "SIGSEGV", "exit"])
def test_a_worker_that_dies_mid_task_ends_the_work_with_worker_lost_promptly(death, initializer, tmp_path):
    # The other worker is in a minute-long task, and may ignore SIGTERM: the stop waits for it no more.
    sleeper = tmp_path / "sleeper"
    started = time.monotonic()
    with deadline(20), pytest.raises(WorkerLost) as lost:
        with worker_pool(2, initializer=initializer) as pool:
            for _ in pool.imap(sleep_or_die, [(None, sleeper), (death, sleeper)]):
                pytest.fail("a result came: the minute went by")
    assert time.monotonic() - started < PROMPTLY
    assert str(lost.value) == WORKER_LOST and "\n" not in WORKER_LOST
    assert nothing_left()


# ---- the UnityEyes crops


def test_the_crop_pool_starts_and_finishes_many_times_in_a_row(tmp_path, monkeypatch):
    folder = unity_folder(tmp_path / "frames", unityeyes._PARALLEL_MIN)
    monkeypatch.setattr(worker_processes, "_stop_pool", never_stop)
    pools = []
    real_pool = worker_processes.worker_pool

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


def save_halfway(pixels, path, **kwargs):
    """unityeyes.save_image's stand-in: the crops after the twelfth stay half-written (a minute)."""
    if int(os.path.basename(path)[:-len(CROP_SUFFIX)]) <= 12:
        return real_save_image(pixels, path, **kwargs)
    atomic_write(path, lambda handle: (handle.write(b"half a crop"), time.sleep(60)))


def add_once_a_crop_is_half_written(report, prefix, result):
    """unityeyes._add's stand-in: the fifth crop, the last one wanted, waits for a worker halfway through a file."""
    if len(report.paths) == 4:
        end = time.monotonic() + WAIT_SECONDS
        while not leftovers(prefix) and time.monotonic() < end:
            time.sleep(0.01)
    return real_add(report, prefix, result)


def test_stopping_the_crop_pool_early_is_bounded_and_leaves_no_temporary_crop(tmp_path, monkeypatch):
    source = unity_folder(tmp_path / "source", unityeyes._PARALLEL_MIN + 40)
    stops = spy_stops(monkeypatch)
    monkeypatch.setattr(unityeyes, "save_image", save_halfway)
    monkeypatch.setattr(unityeyes, "_add", add_once_a_crop_is_half_written)
    with deadline(60):
        for attempt in range(5):
            folder = shutil.copytree(source, tmp_path / f"run{attempt}")
            started = time.monotonic()
            report = prepare_crops(folder, max_num=5, workers=2)  # breaks out with crops being written
            assert time.monotonic() - started < PROMPTLY
            assert [os.path.basename(path) for path in report.paths] == [f"{i}{CROP_SUFFIX}" for i in range(1, 6)]
            assert multiprocessing.active_children() == [] and not leftovers(folder)
    assert len(stops) == 5


# ---- every pool of the program: a worker killed mid-task ends the work with WorkerLost, and what was
# written stays. The dying stand-ins are module level, so the tasks that name them pickle; fork makes the
# monkeypatches reach the workers.

VICTIM = "img100.png"  # the image whose header or decoding kills its worker
SAMPLE_OUT = []  # the folder the dying render waits on, set before the pool forks


def die_in_a_worker():
    """SIGKILL this worker; never the test's own process, should a stand-in run there."""
    assert multiprocessing.parent_process() is not None, "a dying stand-in ran in the test's process"
    kill_self()


def write_images(folder, count, start=0):
    """count small colour images folder/img{i}.png."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(start)
    for index in range(start, start + count):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(os.path.join(folder, f"img{index}.png"))


def render_after_the_camera_images(rng, size):
    """folder_sample.synthetic_image's stand-in: the renders come after the camera images; die once those are in."""
    out, count = SAMPLE_OUT
    wait_for([folder_sample.real_path(out, index) for index in range(count)])
    die_in_a_worker()


def crop_or_die(task):
    """unityeyes.process_item's stand-in: frame 40 kills its worker once the crops of 1 to 39 are made."""
    directory, stem = task[:2]
    if stem == "40":
        wait_for([os.path.join(directory, f"{index}{CROP_SUFFIX}") for index in range(1, 40)])
        die_in_a_worker()
    return real_process_item(task)


def header_or_die(path):
    if path.endswith(os.sep + VICTIM):
        die_in_a_worker()
    return real_read_header(path)


def colour_or_die(path, mode):
    if path.endswith(os.sep + "img10.png"):  # one of the 64 whose colour is looked at
        die_in_a_worker()
    return real_is_colour(path, mode)


def row_or_die(path, shape, crop):
    if path.endswith(os.sep + VICTIM):
        die_in_a_worker()
    return real_input_row(path, shape, crop)


def hidden(folder):
    """Temporary files left in folder (atomic writes' hidden names)."""
    return [str(path) for path in folder.rglob(".tmp-*")]


def test_a_worker_killed_in_run_tasks_ends_with_worker_lost():
    tasks = [(pow, (2, n)) for n in range(8)] + [(kill_self, ())] + [(pow, (2, n)) for n in range(8)]
    with deadline(20), pytest.raises(WorkerLost):
        run_tasks(tasks, workers=2)
    assert nothing_left()


def test_a_worker_killed_writing_a_bundled_sample_keeps_the_images_written(tmp_path, monkeypatch):
    out, count = tmp_path / "pair", 200  # 2 x 200 images: written in worker processes
    SAMPLE_OUT[:] = out, count
    monkeypatch.setattr(folder_sample, "synthetic_image", render_after_the_camera_images)
    with deadline(60), pytest.raises(WorkerLost):
        folder_sample.write_folder_pair(out, count, synthetic_size=(8, 8), real_size=(8, 8), workers=2)
    assert nothing_left() and not hidden(out)
    written = {path: path.stat().st_mtime_ns for path in (out / folder_sample.REAL).iterdir()}
    assert len(written) == count
    monkeypatch.setattr(folder_sample, "synthetic_image", real_synthetic_image)
    with deadline(60):  # run again to continue: only the renders are written
        pair = folder_sample.write_folder_pair(out, count, synthetic_size=(8, 8), real_size=(8, 8), workers=2)
    assert pair.written == count
    assert {path: path.stat().st_mtime_ns for path in (out / folder_sample.REAL).iterdir()} == written


def test_a_worker_killed_making_unityeyes_crops_ends_with_worker_lost_and_keeps_the_crops_made(tmp_path,
                                                                                              monkeypatch):
    folder = unity_folder(tmp_path / "frames", unityeyes._PARALLEL_MIN)
    monkeypatch.setattr(unityeyes, "process_item", crop_or_die)
    with deadline(60), pytest.raises(WorkerLost):
        prepare_crops(folder, workers=2)
    assert nothing_left() and not leftovers(folder)  # the workers stopped by SIGTERM removed their temporary crops
    made = {stem: os.stat(folder / f"{stem}{CROP_SUFFIX}").st_mtime_ns for stem in range(1, 40)}
    monkeypatch.setattr(unityeyes, "process_item", real_process_item)
    with deadline(60):  # run again to continue: the crops made are checked and kept, not made again
        report = prepare_crops(folder, workers=2)
    assert len(report.paths) == unityeyes._PARALLEL_MIN and not report.skipped and not report.remade
    assert {stem: os.stat(folder / f"{stem}{CROP_SUFFIX}").st_mtime_ns for stem in range(1, 40)} == made


@pytest.mark.parametrize("reading", ["headers", "colours"])
def test_a_worker_killed_listing_a_folder_ends_with_worker_lost_and_keeps_the_last_listing(reading, tmp_path,
                                                                                          monkeypatch):
    folder, cache = tmp_path / "images", tmp_path / "cache"
    count = folder_cache.PARALLEL_MIN
    write_images(folder, count)
    assert folder_cache.scan_folder(str(folder), str(cache), sample_colour=False).opened == len(os.listdir(folder))
    listing = (cache / "listing.json").read_bytes()  # an earlier complete start's
    if reading == "headers":
        write_images(folder, count, start=count)  # new files: their headers are read in a pool
        monkeypatch.setattr(folder_images, "read_header", header_or_die)
    else:  # the colour of 64 images is looked at in a pool
        monkeypatch.setattr(folder_images, "is_colour", colour_or_die)
    with deadline(60), pytest.raises(WorkerLost):
        folder_cache.scan_folder(str(folder), str(cache), sample_colour=reading == "colours")
    assert nothing_left() and not hidden(cache)
    assert (cache / "listing.json").read_bytes() == listing
    monkeypatch.setattr(folder_images, "read_header", real_read_header)
    monkeypatch.setattr(folder_images, "is_colour", real_is_colour)
    with deadline(60):  # run again to continue: only what was not listed yet is read
        again = folder_cache.scan_folder(str(folder), str(cache), sample_colour=reading == "colours")
    assert again.opened == (count if reading == "headers" else 0) and len(again.entries) == len(os.listdir(folder))


def test_a_worker_killed_decoding_a_folder_ends_with_worker_lost_and_keeps_the_listing(tmp_path, monkeypatch):
    folder, cache = tmp_path / "images", tmp_path / "cache"
    write_images(folder, 2 * folder_cache.PARALLEL_MIN)
    listing = folder_cache.scan_folder(str(folder), str(cache), sample_colour=False)
    monkeypatch.setattr(folder_images, "input_row", row_or_die)
    with deadline(60), pytest.raises(WorkerLost):
        folder_cache.input_rows(listing, (16, 16, 3), False, "synthetic")
    assert nothing_left() and not hidden(cache)  # no half-written rows
    monkeypatch.setattr(folder_images, "input_row", real_input_row)
    with deadline(60):  # run again to continue: the listing stands, the rows are made
        again = folder_cache.scan_folder(str(folder), str(cache), sample_colour=False)
        rows, paths, skipped = folder_cache.input_rows(again, (16, 16, 3), False, "synthetic")
    assert again.opened == 0 and len(rows) == len(paths) == 2 * folder_cache.PARALLEL_MIN and not skipped


def test_the_program_says_a_lost_worker_in_one_line(tmp_path, monkeypatch):
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_images(synthetic, 2 * folder_cache.PARALLEL_MIN)
    write_images(real, 8)
    monkeypatch.setattr(folder_images, "read_header", header_or_die)
    with deadline(180):
        result = main_in_process("--data_set=folders", f"--synthetic_image_dir={synthetic}",
                                 f"--real_image_dir={real}", *folder_flags(tmp_path / "data", tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "[!]" in line] == [f"[!] {WORKER_LOST}"]
    assert nothing_left()
