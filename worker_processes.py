"""Worker processes for host work (cropping, decoding, drawing the samples): a pool that never hangs.

Standard library only, no TensorFlow, so the data package's worker processes can import it.
"""
import collections
import concurrent.futures
import contextlib
import functools
import gc
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool

MAX_WORKERS = 32  # a cap on worker processes, so a 128-core node does not start 128 decoders
POOL_STOP_SECONDS = 5  # how long stopped workers get to exit on SIGTERM before they are killed
POOL_FINISH_SECONDS = 60  # how long workers whose work is done get to exit before they are stopped
POOL_CHUNKS_AHEAD = 2  # a pool's imap keeps this many chunks per worker in flight, no more


def default_workers():
    """Processes for host work (cropping, drawing the sample): the CPUs this process may use, 2 to 32."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 2
    return max(2, min(cpus, MAX_WORKERS))


def process_context():
    """fork on Linux: cheap, and it does not re-import the caller's TensorFlow; elsewhere only spawn is safe."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


WORKER_LOST = ("a worker process died (killed, out of memory, or crashed in a decoder) while preparing the data; "
               "what was written so far is kept: run again to continue")


class WorkerLost(RuntimeError):
    """A worker process died mid-task (SIGKILL from the OOM killer, a segfault in an image decoder, a task that
    exited): its result never comes, so the work ends here instead of waiting forever. str(e) is one line."""

    def __init__(self, message=None):
        super().__init__(message or WORKER_LOST)


class WorkerPool:
    """What worker_pool yields: Pool-like map and imap over a ProcessPoolExecutor, in order, in chunks.

    imap keeps at most POOL_CHUNKS_AHEAD chunks per worker in flight, submitting one as each is taken,
    so a million tasks never sit in memory at once (Executor.map submits them all). A worker that dies
    breaks the executor, whose pending futures then raise BrokenProcessPool: that is raised as WorkerLost.
    """

    def __init__(self, executor, workers):
        self._executor = executor
        self._ahead = max(1, workers) * POOL_CHUNKS_AHEAD
        self._pending = set()  # futures submitted whose results no one has taken yet
        self._submitted = False  # a chunk was submitted: the workers were forked (with fork; spawn inherits nothing)
        self._seen = {}        # pid -> Process: every worker started, also once the executor forgets them
        self._shutdown = None  # the thread running the executor's shutdown(), once started
        self.lost = False      # a worker died: the executor is broken

    def map(self, function, iterable, chunksize=1):
        """[function(item) for item in iterable], computed in the workers."""
        return list(self.imap(function, iterable, chunksize))

    def imap(self, function, iterable, chunksize=1):
        """function(item) for item in iterable, in order, lazily; the first chunks start now, as Pool.imap's do."""
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, not {chunksize}")
        items, window = iter(iterable), collections.deque()
        self._fill(window, function, items, chunksize)
        return self._results(window, function, items, chunksize)

    def _fill(self, window, function, items, chunksize):
        while len(window) < self._ahead:
            chunk = list(itertools.islice(items, chunksize))
            if not chunk:
                return
            try:
                with _out_of_the_workers_collector(forking=not self._submitted):  # the first submit forks them all
                    future = self._executor.submit(_run_chunk, function, chunk)
            except BrokenProcessPool as error:
                raise self._lost() from error
            self._submitted = True
            self._pending.add(future)
            window.append(future)

    def _results(self, window, function, items, chunksize):
        while window:
            future = window.popleft()
            self._fill(window, function, items, chunksize)
            try:
                results = future.result()
            except BrokenProcessPool as error:
                raise self._lost() from error
            finally:
                self._pending.discard(future)
            del future
            yield from results

    def _lost(self):
        self.lost = True
        return WorkerLost()

    def in_flight(self):
        """True while a submitted chunk has not finished (its result may be taken or not)."""
        return any(not future.done() for future in self._pending)

    def cancel(self):
        """Cancel the chunks no worker has started."""
        for future in self._pending:
            future.cancel()

    def processes(self):
        """The worker processes started so far (multiprocessing.Process objects).

        ProcessPoolExecutor has no public list of its processes: its `_processes` ({pid: Process}, None once
        shut down) is the only way to reach them, to SIGKILL those that ignore SIGTERM and to join them.
        """
        current = self._executor._processes
        if current is not None:
            self._seen.update(current)
        return list(self._seen.values())


@contextlib.contextmanager
def worker_pool(workers, initializer=None):
    """A WorkerPool for a with block: shut down and joined when its work is done, else stopped, never hung.

    The work is done when the block ends without an exception and no chunk is in flight: the executor's
    shutdown() lets each worker take its end-of-work sentinel and exit on its own. An exception (WorkerLost
    when a worker died), a Ctrl-C, or a block that leaves chunks in flight (a loop that stops early) stops
    the pool instead: SIGTERM, and SIGKILL for any worker still alive POOL_STOP_SECONDS later. Workers
    ignore Ctrl-C's SIGINT, so an interrupt is the parent's KeyboardInterrupt alone, not a traceback from
    every worker; initializer (the caller's) runs in each worker after that.
    """
    executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=process_context(),
                                                      initializer=_start_worker, initargs=(initializer,))
    pool = WorkerPool(executor, workers)
    finished = False
    try:
        yield pool
        finished = not pool.lost and not pool.in_flight() and _finish_pool(pool)
    finally:
        if not finished:
            _stop_pool(pool)


@contextlib.contextmanager
def _out_of_the_workers_collector(forking):
    """The parent's objects of this moment, garbage included, kept from the garbage collector of a worker forked now.

    A worker that collected the parent's cyclic garbage would run its finalizers, and a TensorFlow iterator's
    waits for a lock held by a parent's thread that fork did not copy: the worker and its pool hung for good
    (seen in a process that had trained). gc.freeze() sets them aside for good in the worker; in the parent
    only until the fork is done. Only around a fork: unfreezing moves every object to the oldest generation.
    """
    if not forking:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


_stopping = False  # in a worker: SIGTERM came, and the caller's handler for it ran


def _start_worker(initializer):
    """Worker initializer: Ctrl-C is the parent's to handle (it stops the pool), then the caller's initializer.

    A caller's SIGTERM handler (one that raises SystemExit, so a worker removes its temporary files) is
    wrapped to note the signal: see _run_chunk.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        signal.signal(signal.SIGTERM, functools.partial(_note_sigterm, handler))


def _note_sigterm(handler, signum, frame):
    """The caller's handler for the first SIGTERM only: a stop may send two (the executor's and ours), and
    a second SystemExit raised in the first one's clean-up would cut it short (a temporary file left)."""
    global _stopping
    if not _stopping:
        _stopping = True
        handler(signum, frame)


def _run_chunk(function, chunk):
    """Worker: [function(item) for item in chunk]; a SystemExit ends the worker, as in a multiprocessing.Pool.

    ProcessPoolExecutor's worker loop takes any BaseException for the task's error and goes on with the
    next task: a worker stopped by SIGTERM-as-SystemExit would keep working until it is killed, maybe in
    the middle of a file; and a task's sys.exit() would end the parent. So the worker exits here (the
    parent sees a worker lost), and one whose SIGTERM came between tasks starts no other.
    """
    if _stopping:
        _exit_worker(1)
    try:
        return [function(item) for item in chunk]
    except SystemExit as stop:
        _exit_worker(stop.code if isinstance(stop.code, int) else int(stop.code is not None))


def _exit_worker(status):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more to say
            pass
    os._exit(status)


def _shut_down(pool, **options):
    """The thread that runs the executor's shutdown(wait=True, **options): one per pool, as two at once would
    both close its result queue. In a thread we may stop waiting for: a worker stuck never holds the program."""
    if pool._shutdown is None:
        pool._shutdown = threading.Thread(target=pool._executor.shutdown, kwargs=options, name="shut-down-worker-pool",
                                          daemon=True)
        pool._shutdown.start()
    return pool._shutdown


def _finish_pool(pool):
    """Shut the executor down, its workers taking their sentinels; False if that took over POOL_FINISH_SECONDS."""
    pool.processes()  # noted now: shutdown() forgets them
    closer = _shut_down(pool)
    closer.join(POOL_FINISH_SECONDS)
    return not closer.is_alive()


def _stop_pool(pool):
    """Cancel the chunks not started, shut the executor down, SIGTERM the workers, SIGKILL those alive
    POOL_STOP_SECONDS later, and join them all: bounded, whatever state the executor is in.

    shutdown(wait=True) waits for the running chunks, and a broken executor SIGTERMs its workers and then
    joins them with no time limit, forever for one that ignores SIGTERM: so it runs in a thread we stop
    waiting for (the one of a finish that took too long, if any), and it ends once the workers are killed.
    """
    processes = pool.processes()
    pool.cancel()
    stopper = _shut_down(pool, cancel_futures=True)
    try:
        for process in processes:
            if process.exitcode is None:
                process.terminate()
        _join_all(processes, POOL_STOP_SECONDS)
    finally:
        for process in processes:
            if process.exitcode is None:
                process.kill()
        _join_all(processes, POOL_STOP_SECONDS)  # no zombie is left ...
        stopper.join(POOL_STOP_SECONDS)           # ... and no thread of the executor's


def _join_all(processes, seconds):
    """Join each process, all within seconds."""
    deadline = time.monotonic() + seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
