"""The estimation task's caches beside the UnityEyes crops and their crop index (hidden, so scans skip them).

- LABELS_NAME: each crop's .json (name, size, mtime_ns) and its gaze label (NaN: no usable look_vec). A later
  start reads only the .json files whose size or mtime changed, or that are new; removed ones drop out.
- `.estimator_rows_{H}x{W}x{C}.npy` and its `.npz` manifest (each crop's name, size and mtime_ns, in row
  order): every labelled crop cut to the estimator's input size once, as uint8 rows read a batch at a time
  (data/npy_file.py). When crops change, the rows of the unchanged ones are copied and only the others cut.

Each file is checked as the crop index is (size and mtime_ns; os.stat per file, about a second per million).
A cache that cannot be written costs a line and the work again next start; a damaged one is made again.
"""
import os

import numpy as np
from tqdm import tqdm

from data.npy_file import read_rows, write_rows
from utils import atomic_write

LABELS_NAME = ".labels_index.npz"
LABELS_VERSION = 1
ROWS_VERSION = 1
CHUNK = 4096  # rows assembled in memory at a time while the rows file is written


def _packed(names):
    """Names as one uint8 array, NUL-terminated (no file name holds NUL): no object array, no pickle."""
    return np.frombuffer("".join(name + "\0" for name in names).encode("utf-8", "surrogateescape"), np.uint8)


def _unpacked(array):
    return array.tobytes().decode("utf-8", "surrogateescape").split("\0")[:-1]


def stamps(paths):
    """(N, 2) int64 (size, mtime_ns) of each path; -1 where it cannot be stat'ed."""
    values = np.full((len(paths), 2), -1, np.int64)
    for row, path in enumerate(paths):
        try:
            stat = os.stat(path)
        except OSError:
            continue
        values[row] = stat.st_size, stat.st_mtime_ns
    return values


def _load(path, version, arrays, what):
    """{name: array} of the .npz at path when it is of this version; None when missing, or damaged (one line)."""
    try:
        with np.load(path) as index:
            if int(index["version"]) != version:
                raise ValueError(f"version {int(index['version'])}, not {version}")
            values = {name: index[name] for name in arrays}
        values["names"] = _unpacked(values["names"])
        if len(values["stamps"]) != len(values["names"]) or values["stamps"].shape[1:] != (2,):
            raise ValueError(f"{len(values['names'])} names but stamps of shape {values['stamps'].shape}")
    except FileNotFoundError:
        return None
    except Exception as error:  # a damaged file raises many types (zipfile, numpy, a refused pickle, ...)
        print(f"[!] Ignoring {path} ({type(error).__name__}: {error}): {what} again")
        return None
    return values


def _save(path, what, **arrays):
    """arrays as an .npz at path, atomically; False (and one line) when it cannot be written."""
    try:
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
    except OSError as error:
        print(f"[!] Cannot write {path} ({error}): {what} again next start")
        return False
    return True


def _matches(names, values, old):
    """(N,) int64: the row of old holding each name with the same stamp, -1 where none (or no stamp)."""
    source = np.full(len(names), -1, np.int64)
    if old is None:
        return source
    if old["names"] == names:
        same = (old["stamps"] == values).all(axis=1)
        source[same] = np.flatnonzero(same)
    else:
        position = dict(zip(old["names"], range(len(old["names"]))))
        rows = np.fromiter((position.get(name, -1) for name in names), np.int64, len(names))
        found = rows >= 0
        same = np.zeros(len(names), bool)
        same[found] = (old["stamps"][rows[found]] == values[found]).all(axis=1)
        source[same] = rows[same]
    source[values[:, 0] < 0] = -1
    return source


def cached_labels(json_paths, directory, label_of):
    """(N, 3) float32 labels of json_paths (all in directory), NaN rows where label_of(path) gave None.

    label_of is called only for the files new or changed since the index in directory was written.
    """
    names = [os.path.basename(path) for path in json_paths]
    values = stamps(json_paths)
    index_path = os.path.join(directory, LABELS_NAME)
    old = _load(index_path, LABELS_VERSION, ("names", "stamps", "gaze"), "reading every .json")
    source = _matches(names, values, old)
    gaze = np.full((len(names), 3), np.nan, np.float32)
    known = source >= 0
    if known.any():
        gaze[known] = old["gaze"][source[known]]
    to_read = np.flatnonzero(~known & (values[:, 0] >= 0)).tolist()  # a missing .json has no label to read
    for row in tqdm(to_read, desc="Read UnityEyes labels", disable=None if len(to_read) >= 1000 else True):
        label = label_of(json_paths[row])
        if label is not None:
            gaze[row] = label
    kept = values[:, 0] >= 0  # a missing .json is not indexed: looked for again next start
    kept_names = names if kept.all() else [name for name, keep in zip(names, kept) if keep]
    if to_read or old is None or old["names"] != kept_names:
        _save(index_path, "every .json is read", version=np.int64(LABELS_VERSION), names=_packed(kept_names),
              stamps=values[kept], gaze=gaze[kept])
    return gaze


def rows_files(directory, shape):
    stem = os.path.join(directory, f".estimator_rows_{shape[0]}x{shape[1]}x{shape[2]}")
    return f"{stem}.npy", f"{stem}.npz"


def cached_rows(paths, shape, directory, cut, what="crops"):
    """NpyRows (N, *shape) uint8 of the crops of paths (all in directory) at the input size, from the rows cache
    in directory when its manifest names these crops as they are now; else made again, the rows of unchanged crops
    copied and the others cut by cut(paths) (an iterable of uint8 row batches, in order). None (after one line)
    when the cache cannot be written: the caller then cuts them its own way."""
    names = [os.path.basename(path) for path in paths]
    values = stamps(paths)  # before cutting: a crop changed meanwhile has another stamp at the next start
    rows_path, manifest_path = rows_files(directory, shape)
    old = _load(manifest_path, ROWS_VERSION, ("names", "stamps"), f"cutting the {what}")
    old_rows = None
    if old is not None:
        try:
            old_rows = read_rows(rows_path)
            if old_rows.shape != (len(old["names"]), *shape) or old_rows.dtype != np.uint8:
                raise ValueError(f"of {old_rows.dtype} {old_rows.shape}, not uint8 {(len(old['names']), *shape)}")
        except ValueError as error:
            print(f"[!] Cutting the {what} again: {rows_path} is {error}")
            old, old_rows = None, None
    source = _matches(names, values, old)
    if old is not None and old["names"] == names and (source >= 0).all():
        return old_rows
    to_cut = np.flatnonzero(source < 0)
    print(f"[*] Cutting {len(to_cut)} {what} to {shape[0]}x{shape[1]}x{shape[2]} into {rows_path}"
          f"{f' ({len(names) - len(to_cut)} unchanged ones copied)' if len(to_cut) < len(names) else ''}"
          f": once, a later start reads them as they are")

    def batches():
        cut_rows = (row for batch in (cut([paths[row] for row in to_cut]) if len(to_cut) else ()) for row in batch)
        for start in tqdm(range(0, len(names), CHUNK), desc=f"Cut {what}", unit="chunk",
                          disable=None if len(to_cut) >= 1000 else True):
            rows = source[start:start + CHUNK]
            chunk = np.empty((len(rows), *shape), np.uint8)
            copied = rows >= 0
            if copied.any():
                chunk[copied] = old_rows[rows[copied]]
            for slot in np.flatnonzero(~copied):
                chunk[slot] = next(cut_rows)
            yield chunk

    try:
        if os.path.exists(manifest_path):  # first: a crash midway never pairs the old manifest with new rows
            os.remove(manifest_path)
        write_rows(rows_path, shape, np.uint8, batches())
    except OSError as error:
        print(f"[!] Cannot cache the {what} at the input size in {directory} ({error}): they are cut again at "
              f"each start")
        return None
    _save(manifest_path, f"the {what} are cut", version=np.int64(ROWS_VERSION), names=_packed(names), stamps=values)
    return read_rows(rows_path)
