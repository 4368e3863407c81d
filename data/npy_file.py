"""Arrays on disk as .npy files: written row by row, read by row index, never held in memory whole.

The published data sets do not fit in memory next to training (NYU's hand crops at 224x224 are
3.6 GB a kind), so the caches are plain .npy files (numpy, or any .npy reader, opens them) that
`NpyWriter` fills as the rows are made and `NpyRows` reads a batch at a time with positioned reads.
Not a memory map: every page of a mapped file a run has touched counts in its resident memory, and a
shuffled epoch touches them all; positioned reads go through the page cache, which the kernel frees.
"""
import os
import shutil
import tempfile
import zipfile

import numpy as np
from tqdm import tqdm

from utils import atomic_write

HEADER_BYTES = 128  # room for any shape: the header is written last, when the row count is known
MAGIC = b"\x93NUMPY\x01\x00"


def _read_header(handle):
    """(shape, fortran_order, dtype) of the .npy whose start handle is at; the rows follow where it stops."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


class NpyRows:
    """The rows of a .npy file (C order, any shape and plain dtype), read on demand: rows[indices]."""

    def __init__(self, path):
        self.path = os.fspath(path)
        with open(self.path, "rb") as handle:
            try:
                shape, fortran_order, dtype = _read_header(handle)
            except (ValueError, OSError, SyntaxError) as error:
                raise ValueError(f"not a .npy file ({error})") from None
            self.offset = handle.tell()
        if fortran_order or dtype.hasobject or not shape:
            raise ValueError("not a C-order array of plain values with rows")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        expected = self.offset + self.row_bytes * shape[0]
        if os.path.getsize(self.path) < expected:
            raise ValueError(f"truncated: {os.path.getsize(self.path)} bytes, {expected} expected")
        self._descriptor = os.open(self.path, os.O_RDONLY)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        """An int gives one row; an array of ints (any order, repeats allowed) gives those rows."""
        if np.ndim(index) == 0:
            return self[np.array([index])][0]
        indices = np.asarray(index, np.int64)
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        rows = np.empty((len(indices), *self.shape[1:]), self.dtype)
        view = rows.reshape(len(indices), self.row_bytes // self.dtype.itemsize).view(np.uint8)
        for slot, row in enumerate(indices % max(len(self), 1)):
            data = os.pread(self._descriptor, self.row_bytes, self.offset + int(row) * self.row_bytes)
            view[slot] = np.frombuffer(data, np.uint8)
        return rows

    def __del__(self):
        descriptor = getattr(self, "_descriptor", None)
        if descriptor is not None:
            os.close(descriptor)


def _header(shape, dtype):
    """A version 1.0 header padded to HEADER_BYTES: the rows start at the same place whatever the count."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": tuple(int(size) for size in shape)})
    body = text.encode("latin1")
    padding = HEADER_BYTES - len(MAGIC) - 2 - len(body) - 1
    if padding < 0:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte .npy header")
    return MAGIC + (HEADER_BYTES - len(MAGIC) - 2).to_bytes(2, "little") + body + b" " * padding + b"\n"


class NpyWriter:
    """Append rows of one shape and dtype to a .npy file; `close` writes the header with the final count.

    Used as `atomic_write(path, lambda handle: ...)`'s writer: a run stopped halfway leaves no cache.
    """

    def __init__(self, handle, row_shape, dtype):
        self.handle, self.row_shape, self.dtype = handle, tuple(row_shape), np.dtype(dtype)
        self.count = 0
        handle.write(b"\0" * HEADER_BYTES)

    def append(self, rows):
        rows = np.ascontiguousarray(rows, self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]}, not {self.row_shape}")
        self.handle.write(rows.tobytes())
        self.count += len(rows)

    def close(self):
        self.handle.seek(0)
        self.handle.write(_header((self.count, *self.row_shape), self.dtype))
        self.handle.seek(0, os.SEEK_END)


def update_rows(path, replaced, appended):
    """Rewrite some rows of the .npy at path in place ({row index: row}) and append rows (an iterable of row
    batches) after its last, then its header's count: only those rows are written, however large the file.

    Not atomic: the caller makes sure a crash midway leaves nothing that trusts the file (data/folder_cache.py
    removes its manifest first). Returns the new row count.
    """
    rows = read_rows(path)
    offset, row_bytes, count = rows.offset, rows.row_bytes, len(rows)
    with open(path, "r+b") as handle:
        for index, row in replaced.items():
            handle.seek(offset + index * row_bytes)
            handle.write(np.ascontiguousarray(row, rows.dtype).tobytes())
        handle.seek(offset + count * row_bytes)
        handle.truncate()  # rows past the header's count (a write cut short before) are not ours
        for batch in appended:
            batch = np.ascontiguousarray(batch, rows.dtype)
            if batch.shape[1:] != rows.shape[1:]:
                raise ValueError(f"rows of shape {batch.shape[1:]}, not {rows.shape[1:]}")
            handle.write(batch.tobytes())
            count += len(batch)
        handle.seek(0)
        handle.write(_header((count, *rows.shape[1:]), rows.dtype))
    return count


def write_rows(path, row_shape, dtype, batches):
    """Write the row batches of an iterable as one .npy at path, atomically; returns the rows written."""
    written = []

    def write(handle):
        writer = NpyWriter(handle, row_shape, dtype)
        for rows in batches:
            writer.append(rows)
        writer.close()
        written.append(writer.count)

    atomic_write(path, write)
    return written[0]


def read_rows(path):
    """NpyRows of path; ValueError with the reason when it is not a readable .npy of rows."""
    try:
        return NpyRows(path)
    except OSError as error:
        raise ValueError(f"unreadable ({error.strerror})") from None



def npz_member_rows(path, name, chunk_rows, desc):
    """(shape, row chunks) of array name of the .npz at path, streamed from its zip member: never the whole array.

    For converting the single-file caches of earlier versions. ValueError (with the reason) when the file
    or the array does not read, or is stored column by column (no rows to stream); raised on the first
    chunk when the damage is further in (the member's CRC is checked at its end).
    """
    try:
        archive = zipfile.ZipFile(path)
        member = archive.open(f"{name}.npy")
        shape, fortran_order, dtype = _read_header(member)
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{name}: {str(error).splitlines()[0][:200]}") from None
    if fortran_order:
        archive.close()
        raise ValueError(f"{name}: stored column by column")

    def chunks():
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        with archive, member, tqdm(total=shape[0], desc=desc, disable=None if shape[0] >= 10000 else True) as bar:
            for start in range(0, shape[0], chunk_rows):
                count = min(chunk_rows, shape[0] - start)
                try:
                    data = member.read(count * row_bytes)
                except (OSError, EOFError, zipfile.BadZipFile) as error:
                    raise ValueError(f"{name}: {str(error).splitlines()[0][:200]}") from None
                if len(data) != count * row_bytes:
                    raise ValueError(f"{name}: truncated")
                bar.update(count)
                yield np.frombuffer(data, dtype).reshape(count, *shape[1:])

    return tuple(shape), dtype, chunks()


def write_temporary_rows(folder, row_shape, dtype, batches):
    """NpyRows of row batches written to a hidden temporary .npy in folder, whose name is removed at once.

    The open NpyRows keeps the file's content until it is dropped (the end of the run, or a crash), so
    nothing is left behind. OSError (OutputError) when folder cannot be written.
    """
    directory = tempfile.mkdtemp(prefix=".simgan-rows-", dir=folder)
    try:
        path = os.path.join(directory, "rows.npy")
        write_rows(path, row_shape, dtype, batches)
        return read_rows(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def temporary_rows(folder, row_shape, dtype, make_batches, what):
    """write_temporary_rows in folder, else (a read-only folder, a full disk) in the system's temporary folder.

    make_batches() gives the row batches; a retry calls it again. what: the rows, for the line that says so.
    """
    try:
        return write_temporary_rows(folder, row_shape, dtype, make_batches())
    except OSError as error:
        print(f"[!] Cannot write {what} in {folder} ({error}): writing them to {tempfile.gettempdir()}")
        return write_temporary_rows(tempfile.gettempdir(), row_shape, dtype, make_batches())


class RowSubset:
    """Some rows of an image array (NpyRows or numpy), by index, without copying them: rows[i] reads only those."""

    def __init__(self, rows, indices):
        self.rows, self.indices = rows, np.asarray(indices, np.int64)
        self.shape, self.dtype = (len(self.indices), *rows.shape[1:]), rows.dtype

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.rows[self.indices[index]]
