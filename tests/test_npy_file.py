"""Arrays on disk: written row batch by row batch, read by row index, plain .npy files for any reader."""
import os

import numpy as np
import pytest

from data.npy_file import HEADER_BYTES, NpyRows, read_rows, write_rows
from utils import OutputError


def test_rows_written_in_batches_read_back_by_index_in_any_order(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (10, 3, 4, 2), dtype=np.uint8)
    assert write_rows(tmp_path / "a.npy", (3, 4, 2), np.uint8, [rows[:3], rows[3:3], rows[3:]]) == 10
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), rows)  # numpy reads it as it is
    on_disk = read_rows(tmp_path / "a.npy")
    assert len(on_disk) == 10 and on_disk.shape == rows.shape and on_disk.dtype == np.uint8
    picks = np.array([9, 0, 4, 4, -1])
    np.testing.assert_array_equal(on_disk[picks], rows[picks])
    np.testing.assert_array_equal(on_disk[3], rows[3])
    assert on_disk[np.array([], int)].shape == (0, 3, 4, 2)
    with pytest.raises(IndexError):
        on_disk[np.array([10])]


def test_other_dtypes_and_an_empty_array(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_rows(tmp_path / "f.npy", (3,), np.float32, [values])
    np.testing.assert_array_equal(read_rows(tmp_path / "f.npy")[np.array([2, 1])], values[[2, 1]])
    write_rows(tmp_path / "e.npy", (5, 5), np.uint8, [])
    assert read_rows(tmp_path / "e.npy").shape == (0, 5, 5) and np.load(tmp_path / "e.npy").shape == (0, 5, 5)


def test_numpy_files_of_any_header_are_read(tmp_path):
    rows = np.arange(60, dtype=np.uint8).reshape(5, 12)
    np.save(tmp_path / "numpy.npy", rows)  # numpy's own header, not ours
    np.testing.assert_array_equal(read_rows(tmp_path / "numpy.npy")[np.arange(5)], rows)


def test_rows_of_the_wrong_shape_are_refused_and_nothing_is_left(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_rows(tmp_path / "a.npy", (3,), np.uint8, [np.zeros((2, 4), np.uint8)])
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    write_rows(tmp_path / "a.npy", (2,), np.uint8, [np.ones((3, 2), np.uint8)])

    def failing():
        yield np.zeros((1, 2), np.uint8)
        raise OSError(28, "No space left on device")
    with pytest.raises(OutputError):
        write_rows(tmp_path / "a.npy", (2,), np.uint8, failing())
    assert os.listdir(tmp_path) == ["a.npy"]
    assert read_rows(tmp_path / "a.npy").shape == (3, 2)


@pytest.mark.parametrize("content", [b"", b"garbage" * 40, "truncated", "fortran", "objects"])
def test_what_is_not_a_readable_array_of_rows_is_a_valueerror(tmp_path, content):
    path = tmp_path / "bad.npy"
    if content == "truncated":
        write_rows(path, (100,), np.uint8, [np.ones((10, 100), np.uint8)])
        os.truncate(path, HEADER_BYTES + 999)
    elif content == "fortran":
        np.save(path, np.asfortranarray(np.ones((4, 3), np.uint8)))
    elif content == "objects":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError):
        read_rows(path)
    with pytest.raises(ValueError):
        read_rows(tmp_path / "missing.npy")


def test_reading_every_row_does_not_grow_resident_memory(tmp_path):
    """Positioned reads, not a memory map: a shuffled pass over 64 MB does not keep it in the process."""
    rows, batch = 4096, np.full((256, 16384), 7, np.uint8)
    write_rows(tmp_path / "big.npy", (16384,), np.uint8, (batch for _ in range(rows // 256)))
    on_disk = read_rows(tmp_path / "big.npy")
    before = resident_kib()
    for indices in np.array_split(np.random.default_rng(0).permutation(rows), 64):
        assert on_disk[indices].sum() == 7 * 16384 * len(indices)
    assert isinstance(on_disk, NpyRows)
    assert resident_kib() - before < 32 * 1024  # a memory map would hold all 64 MB read, while it is open


def resident_kib():
    """The process's resident memory now (a memory map's touched pages count in it)."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def test_rows_are_replaced_in_place_and_appended(tmp_path):
    from data.npy_file import update_rows
    path = tmp_path / "rows.npy"
    write_rows(path, (2, 3), np.uint8, [np.zeros((4, 2, 3), np.uint8)])
    count = update_rows(path, {1: np.full((2, 3), 7, np.uint8)}, [np.full((2, 2, 3), 9, np.uint8)])
    rows = np.load(path)  # numpy's own reader agrees with the header
    assert count == 6 and rows.shape == (6, 2, 3)
    assert rows[1].min() == rows[1].max() == 7 and rows[4:].min() == 9 and rows[[0, 2, 3]].max() == 0
