"""What `--data_set=folders` learns about a folder of images, kept apart from it (the folder may be read-only).

Each folder is read recursively; every file Pillow opens is an image (data/folder_images.py), every
other file is skipped and counted. What is learned lives in DATA_DIR/folders/<folder name>-<hash of its path>/:

- `listing.json`: each file's size, modification time and header (size and mode, or why it is skipped),
  and for a sample of them whether their pixels hold colour. A second start opens only the files that
  are new or changed since.
- `rows_{H}x{W}x{C}.npy` (`..._crop.npy` with --crop_to_aspect_ratio) and its `.json` manifest: every
  usable image decoded once, resized to the network's input as the original resized, as uint8 rows
  that training reads a batch at a time (data/npy_file.py). When the folder changes, the images that
  did not change are copied from the old rows, and only the others are decoded again.

Training reads the rows, never the image files: a file that changes during training changes nothing
until the next start, which notices it. Decoding per batch with tf.data was measured against this in
tests/benchmark_scale.py (README, Performance).
"""
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from data import folder_images
from data.npy_file import RowSubset, read_rows, temporary_rows, update_rows, write_rows
from utils import atomic_write
from worker_processes import default_workers, worker_pool

LISTING_VERSION = 1
ROWS_VERSION = 1
COLOUR_SAMPLE = 64     # images of the real folder whose pixels are checked for colour, evenly spaced
PARALLEL_MIN = 64      # fewer files than this are read here: starting processes would cost more
WRITE_CHUNK = 256      # rows in memory at a time while the rows are written: 50 MB at 256x256x3


@dataclass
class Listing:
    """A folder's usable images (natural order) and what was left out, from its listing.json and the files."""
    root: str
    cache_dir: str
    entries: list          # [path, size, mtime_ns, height, width, mode, colour or None], path relative, posix
    skipped: dict = field(default_factory=dict)  # {reason: [relative path, ...]}
    opened: int = 0        # headers read this start (new or changed files)


def cache_dir_of(data_dir, folder):
    """DATA_DIR/folders/<name>-<10 hex digits of its real path>: one folder's listing and rows."""
    real = os.path.realpath(folder)
    digest = hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return os.path.join(data_dir, "folders", f"{os.path.basename(real) or 'root'}-{digest}")


# ---- listing ----

def _read_json(path, version):
    """The JSON at path when it is of this version, else None (missing, damaged or older)."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) and values.get("version") == version else None


def _write_json(path, values):
    """values at path atomically; False (and a line) when the cache folder cannot be written."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = json.dumps(values, separators=(",", ":"))
        atomic_write(path, lambda handle: handle.write(text.encode("utf-8", "surrogateescape")))
    except OSError as error:
        print(f"[!] Cannot write {path} ({error}): the folder is read again next start")
        return False
    return True


def _header_task(task):
    root, path = task
    return folder_images.read_header(os.path.join(root, path))


def _colour_task(task):
    root, path, mode = task
    try:
        return folder_images.is_colour(os.path.join(root, path), mode)
    except Exception:  # Pillow raises many types for a file damaged past its header; judged when decoded
        return None


def _in_order(function, tasks, desc):
    """[function(task) for task in tasks], in worker processes when there are many, with a progress bar."""
    if len(tasks) < PARALLEL_MIN:
        return [function(task) for task in tasks]
    with worker_pool(default_workers()) as pool:
        chunk = max(1, min(256, len(tasks) // (default_workers() * 8)))
        return list(tqdm(pool.imap(function, tasks, chunksize=chunk), total=len(tasks), desc=desc))


def scan_folder(root, cache_dir, sample_colour):
    """The Listing of root; headers read only for files new or changed since listing.json, which is updated.

    sample_colour: also tell for up to COLOUR_SAMPLE evenly spaced images whether their pixels hold colour.
    """
    files, skipped = folder_images.walk_files(root)
    cached = _read_json(os.path.join(cache_dir, "listing.json"), LISTING_VERSION) or {}
    known = {entry[0]: entry for entry in cached.get("files", [])}
    entries, tasks = [], []
    for path in files:
        stamp = folder_images.file_stamp(os.path.join(root, path))
        if stamp is None:
            skipped.setdefault(folder_images.UNREADABLE, []).append(path)
            continue
        old = known.get(path)
        if old is not None and tuple(old[1:3]) == stamp:
            entries.append(old)
        else:
            entries.append([path, *stamp, None, None, None, None, None])
            tasks.append(len(entries) - 1)
    headers = _in_order(_header_task, [(root, entries[row][0]) for row in tasks], f"Read {root}")
    for row, header in zip(tasks, headers):
        entries[row][3:8] = [None, None, None, None, header] if isinstance(header, str) else [*header, None, None]
    changed = bool(tasks) or len(entries) != len(known)
    if sample_colour:
        changed |= _sample_colour(root, [entry for entry in entries if entry[7] is None])
    if changed:
        _write_json(os.path.join(cache_dir, "listing.json"), dict(version=LISTING_VERSION, root=root, files=entries))
    usable = []
    for entry in entries:
        if entry[7] is None:
            usable.append(entry[:7])
        else:
            skipped.setdefault(entry[7], []).append(entry[0])
    return Listing(root, cache_dir, usable, skipped, len(tasks))


def _sample_colour(root, entries):
    """Tell, for up to COLOUR_SAMPLE evenly spaced entries not yet told, whether their pixels hold colour."""
    chosen = [entries[int(index)] for index in np.unique(np.linspace(0, len(entries) - 1, COLOUR_SAMPLE).round())
              ] if entries else []
    untold = [entry for entry in chosen if entry[6] is None]
    for entry, colour in zip(untold, _in_order(_colour_task, [(root, entry[0], entry[5]) for entry in untold],
                                               f"Check colours in {root}")):
        entry[6] = colour
    return bool(untold)


# ---- the rows at the input size ----

def _rows_files(cache_dir, shape, crop):
    stem = os.path.join(cache_dir, f"rows_{shape[0]}x{shape[1]}x{shape[2]}{'_crop' if crop else ''}")
    return f"{stem}.npy", f"{stem}.json"


def _row_task(task):
    root, path, shape, crop = task
    return folder_images.input_row(os.path.join(root, path), shape, crop)


def input_rows(listing, shape, crop, what):
    """(rows (N, H, W, C) uint8 read by index, their relative paths, {reason: [path, ...]} skipped decoding).

    From the cache as it is when it holds the listing's images as they are now; when some changed, were
    added or removed, the cache is patched: only those images decoded and only their rows written (the
    manifest's slots of removed ones left empty until they are half the file, then it is made anew).
    """
    rows_path, manifest_path = _rows_files(listing.cache_dir, shape, crop)
    manifest = _read_json(manifest_path, ROWS_VERSION)
    if manifest is not None:
        try:
            rows = read_rows(rows_path)
            if len(rows) == len(manifest["rows"]):
                patched = _patch_rows(listing, shape, crop, what, manifest, rows_path, manifest_path)
                if patched is not None:
                    return patched
        except ValueError as error:
            print(f"[!] Decoding {what} again: {rows_path} is {error}")
    return _make_rows(listing, shape, crop, what, manifest, rows_path, manifest_path)


def _cached(rows_path, slots, skipped):
    """What input_rows returns from the rows file and its manifest's slots (None: an empty slot)."""
    filled = [index for index, slot in enumerate(slots) if slot is not None]
    return (RowSubset(read_rows(rows_path), filled), [slots[index][0] for index in filled],
            _skips(skipped))


def _patch_rows(listing, shape, crop, what, manifest, rows_path, manifest_path):
    """The cache brought up to the listing by decoding only what changed; None when it is better made anew."""
    slots, skipped = manifest["rows"], manifest["skipped"]
    current = {entry[0]: tuple(entry[:3]) for entry in listing.entries}
    known = {tuple(skip[:3]) for skip in skipped} | {tuple(slot) for slot in slots if slot is not None}
    slot_of = {slot[0]: index for index, slot in enumerate(slots) if slot is not None}
    stale = [index for path, index in slot_of.items() if tuple(slots[index]) != current.get(path)]
    new = [key for key in current.values() if key not in known]
    if not stale and not new and len(known) == len(current):
        return _cached(rows_path, slots, skipped)
    if 2 * (sum(slot is None for slot in slots) + len(stale)) > len(slots):
        return None  # mostly empty slots: the file is made anew instead
    for index in stale:
        slots[index] = None
    live = set(current.values())
    skipped = [skip for skip in skipped if tuple(skip[:3]) in live]
    print(f"[*] Decoding {len(new)} new or changed {what} images at {shape[0]}x{shape[1]}x{shape[2]} into "
          f"{listing.cache_dir} ({len(current) - len(new)} kept as they were)")
    try:
        os.remove(manifest_path)  # the rows change under it: a crash from here on makes the cache anew
        _write_new_rows(listing.root, new, shape, crop, slots, skipped, rows_path)
    except OSError as error:
        print(f"[!] Cannot update {rows_path} ({error}): making it anew")
        return None
    _write_json(manifest_path, dict(version=ROWS_VERSION, rows=slots, skipped=skipped))
    return _cached(rows_path, slots, skipped)


def _write_new_rows(root, new, shape, crop, slots, skipped, rows_path):
    """Decode the new (path, size, mtime) keys into the empty slots, then after the last row, WRITE_CHUNK rows
    at a time; slots and skipped updated."""
    free = [index for index, slot in enumerate(slots) if slot is None]
    replaced, appended = {}, []
    with _decoded(root, [key[0] for key in new], shape, crop) as decoded:
        for key, row in zip(new, decoded):
            if isinstance(row, str):
                skipped.append([*key, row])
            elif free:
                index = free.pop(0)
                replaced[index], slots[index] = row, list(key)
            else:
                appended.append(row)
                slots.append(list(key))
            if len(replaced) + len(appended) >= WRITE_CHUNK:
                update_rows(rows_path, replaced, [np.stack(appended)] if appended else [])
                replaced, appended = {}, []
        update_rows(rows_path, replaced, [np.stack(appended)] if appended else [])


@contextlib.contextmanager
def _decoded(root, paths, shape, crop):
    """The rows (or reasons) of the images at paths under root, in order, lazily: in worker processes when
    there are many."""
    tasks = ((root, path, shape, crop) for path in paths)
    if len(paths) < PARALLEL_MIN:
        yield map(_row_task, tasks)
        return
    with worker_pool(default_workers()) as pool:
        yield pool.imap(_row_task, tasks, chunksize=16)


def _skips(skipped):
    reasons = {}
    for path, _, _, reason in skipped:
        reasons.setdefault(reason, []).append(path)
    return reasons


def _old_rows(manifest, rows_path):
    """({(path, size, mtime): row} of the old cache that still reads, {(path, size, mtime): reason}, its rows)."""
    if manifest is None:
        return {}, {}, None
    skipped = {tuple(skip[:3]): skip[3] for skip in manifest["skipped"]}
    try:
        rows = read_rows(rows_path)
    except ValueError:
        return {}, skipped, None
    if len(rows) != len(manifest["rows"]):
        return {}, skipped, None
    return {tuple(slot): index for index, slot in enumerate(manifest["rows"]) if slot is not None}, skipped, rows


def _make_rows(listing, shape, crop, what, manifest, rows_path, manifest_path):
    old, old_skipped, old_rows = _old_rows(manifest, rows_path)
    entries = [entry for entry in listing.entries if tuple(entry[:3]) not in old_skipped]
    to_decode = [entry for entry in entries if tuple(entry[:3]) not in old]
    print(f"[*] Decoding {len(to_decode)} {what} images at {shape[0]}x{shape[1]}x{shape[2]} into {listing.cache_dir}"
          f"{f' ({len(entries) - len(to_decode)} unchanged ones copied)' if len(to_decode) < len(entries) else ''}"
          f": once, a later start reads them as they are")
    current = {tuple(entry[:3]) for entry in listing.entries}
    kept, skipped = [], [[*key, reason] for key, reason in old_skipped.items() if key in current]

    def batches():
        with _decoded(listing.root, [entry[0] for entry in to_decode], shape, crop) as decoded:
            chunk = []
            for entry in tqdm(entries, desc=f"Decode {what} images",
                              disable=None if len(to_decode) >= 1000 else True):
                key = tuple(entry[:3])
                row = old_rows[old[key]] if key in old else next(decoded)
                if isinstance(row, str):
                    skipped.append([*key, row])
                    continue
                kept.append(list(key))
                chunk.append(row)
                if len(chunk) == WRITE_CHUNK:
                    yield np.stack(chunk)
                    chunk = []
            if chunk:
                yield np.stack(chunk)

    rows = _write_rows_cache(batches, shape, rows_path, manifest_path, kept, skipped)
    return rows, [row[0] for row in kept], _skips(skipped)


def _write_rows_cache(batches, shape, rows_path, manifest_path, kept, skipped):
    """The rows of batches() written to rows_path, then the manifest; in a temporary file when the cache
    folder cannot be written. The old manifest goes first: a crash midway never pairs it with new rows."""
    skipped_before = list(skipped)
    try:
        os.makedirs(os.path.dirname(rows_path), exist_ok=True)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
        write_rows(rows_path, shape, np.uint8, batches())
    except OSError as error:
        print(f"[!] Cannot cache the decoded images in {os.path.dirname(rows_path)} ({error}): they are decoded "
              f"again next start")
        kept.clear()
        skipped[:] = skipped_before  # those of earlier starts stay reported; this pass adds its own again
        return temporary_rows(None, shape, np.uint8, batches, "the decoded images")
    _write_json(manifest_path, dict(version=ROWS_VERSION, rows=kept, skipped=skipped))
    return read_rows(rows_path)
