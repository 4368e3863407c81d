"""What the bundled samples' writers share (data/gaze_sample.py, data/hand_sample.py): never a half sample
in place, never real data replaced, the work spread over processes, the same command line.

A sample is a few folders a loader finds by name (UnityEyes/ + MPIIGaze/, train/ + test/), so a folder
there must be whole: all is written into a staging folder beside them and renamed into place in a fixed
order whose last folder means the others are there. Each folder carries a marker, so a later write may
replace it; a folder without one (real data) is never touched.
"""
import argparse
import contextlib
import errno
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from utils import OutputError
from worker_processes import WorkerLost, default_workers, worker_pool


@dataclass(frozen=True)
class SampleLayout:
    """The folders of one kind of sample, and the names that tell them from real data."""

    writer: str  # the module that writes them, named in the markers and in errors
    folders: tuple  # renamed into place in this order: the last one there means all are
    marker_name: str  # in each folder, so a later write may replace it
    staging_name: str  # beside the folders: everything is written here first

    def is_sample(self, folder):
        """True if folder holds this layout's marker: the bundled sample, never to be mixed with real data."""
        return (Path(folder) / self.marker_name).is_file()

    def check_targets(self, root):
        """FileExistsError if a folder of the layout in root holds data the writer did not write."""
        for name in self.folders:
            target = Path(root, name)
            if target.exists() and not (target.is_dir() and (self.is_sample(target) or not any(target.iterdir()))):
                raise FileExistsError(errno.EEXIST, f"{target} holds data not written by {self.writer}; "
                                                    "move it away or choose another folder", str(target))

    @contextlib.contextmanager
    def staged(self, root, **marker):
        """A with block that writes the folders into the staging folder it yields; installed if it ends well.

        marker: what the markers record besides the writer (the seed, the counts). A block that raises
        leaves the staging folder, which the next call removes, and installs nothing; a call interrupted
        between the renames leaves the first folders, which the next call replaces. One call per root.
        """
        root = Path(root)
        self.check_targets(root)
        staging = root / self.staging_name
        if staging.exists():
            shutil.rmtree(staging)  # what an interrupted call left
        for name in self.folders:
            (staging / name).mkdir(parents=True)
        yield staging
        text = json.dumps({"written_by": self.writer, **marker}, indent=1) + "\n"
        for name in self.folders:
            (staging / name / self.marker_name).write_text(text, encoding="utf-8")
        for name in self.folders:
            target = root / name
            if target.exists():
                target.rename(staging / f"replaced-{name}")  # deleted with the staging folder
            (staging / name).rename(target)
        shutil.rmtree(staging)


def check_counts(seed, **counts):
    """ValueError naming the argument if a count is not a whole number >= 1, or the seed not one >= 0."""
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, not {seed!r}")


def _call(task):
    function, args = task
    return function(*args)


def run_tasks(tasks, workers=None, worth_processes=True):
    """[function(*args) for each (function, args) task], in worker processes (None: one per usable CPU).

    worth_processes: False runs them here, as workers <= 1 does (a few images do not pay for starting
    processes). The first failure is raised, and worker_pool stops the tasks still in flight.
    """
    workers = default_workers() if workers is None else workers
    if workers <= 1 or not worth_processes:
        return [_call(task) for task in tasks]
    # Not threads: the drawing is many small numpy calls that hold the GIL, so 2 threads measured no
    # faster than 1.
    with worker_pool(workers) as pool:
        return pool.map(_call, tasks, chunksize=1)


def command_line(argv, description, out_help, counts, seed, write, summary):
    """Parse --out, a --NAME per count and --seed, write(out, *counts, seed=seed) and print one line.

    counts: {name: (default, help)}, passed to write in this order; summary: a str.format template of
    the report's fields. A bad argument or a folder that cannot be written is one line on stderr and
    exit status 2, not a traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help=out_help)
    for name, (default, text) in counts.items():
        parser.add_argument(f"--{name}", type=int, default=default, help=text)
    parser.add_argument("--seed", type=int, default=seed, help="random seed; the same seed writes the same files")
    args = parser.parse_args(argv)
    try:
        report = write(args.out, *(getattr(args, name) for name in counts), seed=args.seed)
    except (ValueError, OSError, WorkerLost) as error:
        parser.exit(2, f"[!] {error}\n")
    print(summary.format_map(vars(report)))


def use_bundled_sample(folder, complete, write, missing, real_data, readme_section):
    """Write the bundled sample into folder (write(folder)) unless it is complete there; say it is what runs.

    missing: what was looked for and not found; real_data: what the sample stands in for.
    """
    if not complete:
        print(f"[*] No {missing}: generating the bundled sample in {folder} (once). For real data see README.md, "
              f"'{readme_section}'.")
        try:
            write(folder)
        except OSError as error:
            raise OutputError(f"cannot write the bundled sample in {folder}: {error.strerror or error}") from None
    print(f"[*] Using the bundled sample in {folder}, not {real_data}")
