"""The gaze data loader: finding data, the sample fallback, the cache, the pipelines, archives and downloads."""
import functools
import http.server
import io
import os
import shutil
import tarfile
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from config import get_config
from data import download, gaze_data, mpiigaze
from data.gaze_data import load_gaze_data
from data.image_folder import write_real_samples
from data.gaze_labels import read_look_vec
from data.npy_file import NpyRows
from data.pipelines import array_batches, synthetic_dataset
from data.reports import DataError
from data.gaze_sample import write_sample

SHAPE = (35, 55, 1)


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    """DATA_DIR holding a tiny bundled sample in the real data sets' layout: DATA_DIR/gaze/{UnityEyes,MPIIGaze}."""
    root = tmp_path_factory.mktemp("data")
    write_sample(root / "gaze", num_synthetic=24, num_real=20, seed=5)
    return root


def config_for(data_dir, tmp_path, *flags):
    return get_config([f"--data_dir={data_dir}", f"--sample_dir={tmp_path / 'samples'}", *flags])


def refining_config(data_dir, tmp_path):
    """Test mode's config: it uses the synthetic images only."""
    return config_for(data_dir, tmp_path, "--is_train=False", "--load_path=run")


def test_loads_both_domains_and_caches_the_real_images(sample_root, tmp_path):
    data = load_gaze_data(config_for(sample_root, tmp_path))
    assert len(data.synthetic_paths) == 24 and not data.is_sample
    assert data.real_images.shape == (20, 36, 60) and data.real_images.dtype == np.uint8
    assert data.real_gaze.shape == (20, 3)
    assert isinstance(data.real_images, NpyRows)  # read from disk a batch at a time, never whole
    images, gaze, _ = mpiigaze.load_cache(sample_root / "gaze")
    np.testing.assert_array_equal(images[np.arange(20)], data.real_images[np.arange(20)])
    assert not (tmp_path / "samples").exists()  # loading writes nothing but the cache


def test_real_samples_are_an_explicit_step_written_once(sample_root, tmp_path):
    data = load_gaze_data(config_for(sample_root, tmp_path))
    write_real_samples(data, str(tmp_path / "samples"), seed=1)
    assert sorted(os.listdir(tmp_path / "samples")) == sorted(f"real_{i}.png" for i in range(20))
    before = {name: os.stat(tmp_path / "samples" / name).st_mtime_ns for name in os.listdir(tmp_path / "samples")}
    write_real_samples(data, str(tmp_path / "samples"), seed=2)
    assert {name: os.stat(tmp_path / "samples" / name).st_mtime_ns
            for name in os.listdir(tmp_path / "samples")} == before


def remove_cache(gaze_dir):
    for path in (*mpiigaze.cache_files(gaze_dir), os.path.join(gaze_dir, mpiigaze.OLD_CACHE)):
        if os.path.exists(path):
            os.remove(path)


def test_an_old_gaze_npz_is_converted_once_with_a_line(sample_root, tmp_path, capsys):
    gaze_dir = sample_root / "gaze"
    data = load_gaze_data(config_for(sample_root, tmp_path))
    images, gaze, right_eye = data.real_images[np.arange(20)], data.real_gaze, data.real_right_eye
    remove_cache(gaze_dir)
    np.savez(gaze_dir / mpiigaze.OLD_CACHE, real=images, gaze=gaze, right_eye=right_eye)  # as earlier versions wrote
    converted = load_gaze_data(config_for(sample_root, tmp_path))
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "gaze.npz" in line]
    assert line.startswith("[*] Converting") and "once" in line
    assert not (gaze_dir / mpiigaze.OLD_CACHE).exists()
    np.testing.assert_array_equal(converted.real_images[np.arange(20)], images)
    np.testing.assert_array_equal(converted.real_gaze, gaze)
    load_gaze_data(config_for(sample_root, tmp_path))
    assert "gaze.npz" not in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["old_without_labels", "labels_garbage", "images_truncated"])
def test_a_cache_that_cannot_be_used_is_rebuilt_with_a_line(sample_root, tmp_path, capsys, damage):
    gaze_dir = sample_root / "gaze"
    load_gaze_data(config_for(sample_root, tmp_path))
    images_path, labels_path = mpiigaze.cache_files(gaze_dir)
    if damage == "old_without_labels":
        remove_cache(gaze_dir)
        np.savez(gaze_dir / mpiigaze.OLD_CACHE, real=np.zeros((3, 36, 60), np.uint8))
    elif damage == "labels_garbage":
        open(labels_path, "wb").write(b"garbage")
    else:
        os.truncate(images_path, os.path.getsize(images_path) - 1)
    capsys.readouterr()
    data = load_gaze_data(config_for(sample_root, tmp_path))
    out = capsys.readouterr().out
    assert "[!]" in out and "Traceback" not in out
    assert len(data.real_images) == 20 and len(mpiigaze.load_cache(gaze_dir)[0]) == 20


def test_a_cache_that_cannot_be_written_leaves_the_images_in_memory(sample_root, tmp_path, capsys, monkeypatch):
    remove_cache(sample_root / "gaze")

    def full_disk(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(mpiigaze, "write_rows", full_disk)
    data = load_gaze_data(config_for(sample_root, tmp_path))
    assert "[!] Cannot cache the real images" in capsys.readouterr().out
    assert data.real_images.shape == (20, 36, 60) and not os.path.exists(mpiigaze.cache_files(sample_root / "gaze")[1])


def test_test_mode_needs_no_real_images(sample_root, tmp_path):
    data = load_gaze_data(refining_config(sample_root, tmp_path))
    assert len(data.real_images) == 0 and len(data.synthetic_paths) == 24 and data.split is None


def test_a_named_folder_without_frames_lists_the_paths_tried(tmp_path):
    (tmp_path / "empty").mkdir()
    config = config_for(tmp_path, tmp_path, f"--synthetic_image_dir={tmp_path / 'empty'}")
    with pytest.raises(DataError, match="tried .*empty"):
        load_gaze_data(config)
    with pytest.raises(DataError, match=r"tried nowhere, .*nowhere"):
        load_gaze_data(config_for(tmp_path, tmp_path, "--synthetic_image_dir=nowhere"))


def test_default_folders_without_data_fall_back_to_the_sample_once(tmp_path, monkeypatch, capsys):
    calls = []

    def tiny_sample(gaze_dir, seed):
        calls.append(gaze_dir)
        write_sample(gaze_dir, num_synthetic=8, num_real=6, seed=seed)

    monkeypatch.setattr(gaze_data, "SAMPLE_GAZE_DIR", tmp_path / "sample" / "gaze")
    monkeypatch.setattr(gaze_data, "write_sample", tiny_sample)
    monkeypatch.chdir(tmp_path)  # the default --data_dir=data is relative: an empty folder here
    for _ in range(2):
        data = load_gaze_data(get_config([f"--sample_dir={tmp_path / 'samples'}"]))
        assert data.is_sample and len(data.synthetic_paths) == 8 and len(data.real_images) == 6
    assert len(calls) == 1
    assert "generating the bundled sample" in capsys.readouterr().out
    with pytest.raises(DataError):  # a user who names a data folder never gets the sample instead
        load_gaze_data(get_config([f"--data_dir={tmp_path / 'mine'}"]))


def test_the_bundled_sample_takes_a_schedule_sized_for_it_and_given_flags_win(tmp_path, monkeypatch, capsys):
    from config import SAMPLE_SCHEDULE
    monkeypatch.setattr(gaze_data, "SAMPLE_GAZE_DIR", tmp_path / "sample" / "gaze")
    write_sample(tmp_path / "sample" / "gaze", num_synthetic=8, num_real=6, seed=1)
    monkeypatch.chdir(tmp_path)
    config = get_config(["--max_step=7", "--batch_size=512"])
    load_gaze_data(config)
    assert (config.max_step, config.batch_size) == (7, 512)  # given: they win
    assert (config.initial_K_g, config.eval_step) == (SAMPLE_SCHEDULE["initial_K_g"], SAMPLE_SCHEDULE["eval_step"])
    assert "--sample_schedule=False" in capsys.readouterr().out
    original = get_config(["--sample_schedule=False"])
    load_gaze_data(original)
    assert (original.max_step, original.initial_K_g, original.batch_size) == (10000, 1000, 512)
    real_data = get_config([f"--data_dir={tmp_path / 'sample'}"])  # the same images, named: real data's defaults
    load_gaze_data(real_data)
    assert (real_data.max_step, real_data.batch_size) == (10000, 512)


def test_missing_real_data_offline_says_where_to_put_it(sample_root, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    (data_dir / "gaze").mkdir(parents=True)
    os.symlink(sample_root / "gaze" / "UnityEyes", data_dir / "gaze" / "UnityEyes")
    fetch = download.fetch_mpiigaze
    monkeypatch.setattr(gaze_data, "fetch_mpiigaze", lambda g, r: fetch(g, r, url="http://127.0.0.1:9/MPIIGaze.tar.gz"))
    with pytest.raises(DataError, match=r"cannot download .*by hand .*MPIIGaze.Data.Normalized.p00.day01\.mat"):
        load_gaze_data(config_for(data_dir, tmp_path))
    assert os.listdir(data_dir / "gaze") == ["UnityEyes"]  # no partial archive left behind


def test_read_look_vec(sample_root):
    path = load_gaze_data(refining_config(sample_root, sample_root)).synthetic_paths[0]
    look_vec = read_look_vec(path)
    assert look_vec.shape == (3,) and abs(np.linalg.norm(look_vec) - 1) < 1e-3


# ---- pipelines ----

def test_synthetic_training_batches_are_fixed_size_seeded_and_repeat(sample_root, tmp_path):
    paths = load_gaze_data(refining_config(sample_root, tmp_path)).synthetic_paths
    first = [batch.numpy() for batch, _ in zip(synthetic_dataset(paths[:6], SHAPE, 4, seed=1), range(4))]
    again = [batch.numpy() for batch, _ in zip(synthetic_dataset(paths[:6], SHAPE, 4, seed=1), range(4))]
    assert all(batch.shape == (4, *SHAPE) and batch.dtype == np.float32 for batch in first)
    assert all(-1 <= batch.min() and batch.max() <= 1 for batch in first)
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    other = next(iter(synthetic_dataset(paths[:6], SHAPE, 4, seed=2))).numpy()
    assert not np.array_equal(first[0], other)


def test_a_crop_damaged_during_training_is_skipped_not_fatal(sample_root, tmp_path):
    paths = load_gaze_data(refining_config(sample_root, tmp_path)).synthetic_paths[:4]
    copies = []
    for index, path in enumerate(paths):
        copies.append(str(tmp_path / f"{index}_cropped.png"))
        with open(path, "rb") as source, open(copies[-1], "wb") as target:
            target.write(source.read() if index else b"\x89PNG garbage")
    batches = iter(synthetic_dataset(copies, SHAPE, 3, seed=1))
    assert [next(batches).shape for _ in range(4)] == [(3, *SHAPE)] * 4  # the three good crops, epoch after epoch


def test_synthetic_evaluation_batches_keep_order_and_the_last_partial_batch(sample_root, tmp_path):
    paths = load_gaze_data(refining_config(sample_root, tmp_path)).synthetic_paths
    batches = list(synthetic_dataset(paths[:7], (35, 55, 3), 4, seed=0, training=False))
    assert [len(images) for images, _ in batches] == [4, 3]
    assert [p.decode() for _, names in batches for p in names.numpy()] == paths[:7]
    assert batches[0][0].shape == (4, 35, 55, 3)


def batch_values(batch):
    return sorted(np.rint((batch.numpy()[:, 0, 0, 0] + 1) * 127.5).astype(int))


def test_real_batches_are_drawn_without_replacement_each_epoch():
    images = np.repeat(np.arange(8, dtype=np.uint8)[:, None, None] * 30, 36, axis=1).repeat(60, axis=2)
    batches = iter(array_batches(images, SHAPE, 4, seed=3))
    epochs = []
    for _ in range(3):  # three epochs of two batches
        epoch = [next(batches), next(batches)]
        assert sorted(batch_values(epoch[0]) + batch_values(epoch[1])) == [i * 30 for i in range(8)]
        epochs.append(batch_values(epoch[0]))
    assert len({tuple(values) for values in epochs}) > 1  # reshuffled each epoch


def test_each_input_pipeline_reads_its_own_share(tmp_path):
    """Two workers' shards: disjoint, together every image, each a whole epoch of its own per pass."""
    images = np.repeat(np.arange(8, dtype=np.uint8)[:, None, None] * 30, 36, axis=1).repeat(60, axis=2)
    np.save(tmp_path / "images.npy", images)
    on_disk = mpiigaze.read_rows(tmp_path / "images.npy")
    shares = [batch_values(next(iter(array_batches(on_disk, SHAPE, 4, seed=1, shard=(2, index)))))
              for index in range(2)]
    assert sorted(shares[0] + shares[1]) == [i * 30 for i in range(8)]
    in_order = [batch_values(batch) for batch in array_batches(on_disk, SHAPE, 3, shard=(2, 1))]
    assert in_order == [[30, 90, 150], [210]]
    with pytest.raises(ValueError, match="no items"):  # not an endless stream of empty epochs
        array_batches(on_disk[np.arange(1)], SHAPE, 3, seed=1, shard=(2, 1))


def legacy_resize(uint8_images, size=SHAPE[:2]):
    """The original's resize, by TensorFlow's own legacy op: bilinear, no antialiasing, no half-pixel centres."""
    images = tf.constant(np.asarray(uint8_images, np.float32)[..., None])
    return tf.compat.v1.image.resize_bilinear(images, size, align_corners=False, half_pixel_centers=False).numpy()


def test_crops_are_resized_as_the_original(sample_root, tmp_path):
    paths = load_gaze_data(refining_config(sample_root, tmp_path)).synthetic_paths[:4]
    images, _ = next(iter(synthetic_dataset(paths, SHAPE, 4, seed=0, training=False)))
    crops = np.stack([np.asarray(Image.open(path)) for path in paths])  # 84x140 uint8
    np.testing.assert_allclose(images.numpy(), legacy_resize(crops) / 127.5 - 1, atol=1e-6)
    antialiased = tf.image.resize(crops[..., None], SHAPE[:2], antialias=True).numpy() / 127.5 - 1
    assert np.abs(images.numpy() - antialiased).max() > 0.05  # what the port did before: visibly different


def test_real_images_are_resized_as_the_original_on_both_paths():
    real = np.random.default_rng(0).integers(0, 256, (8, 36, 60), dtype=np.uint8)
    expected = legacy_resize(real) / 127.5 - 1
    batch = next(iter(array_batches(real, SHAPE, 8, seed=0))).numpy()  # one epoch: all 8, shuffled
    matches = [int(np.argmin(np.abs(expected - image).max(axis=(1, 2, 3)))) for image in batch]
    assert sorted(matches) == list(range(8))
    np.testing.assert_allclose(batch, expected[matches], atol=1e-6)
    (evaluated, gaze), = list(array_batches(real, SHAPE, 8, labels=np.zeros((8, 3))))  # the estimator's path
    np.testing.assert_allclose(evaluated.numpy(), expected, atol=1e-6)


# ---- archives ----

def make_tar(path, add):
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def add_file(tar, name, data=b"x", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def test_safe_extract_unpacks_a_normal_archive(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", lambda tar: add_file(tar, "MPIIGaze/Data/readme.txt", b"hi"))
    download.safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "MPIIGaze" / "Data" / "readme.txt").read_bytes() == b"hi"


@pytest.mark.parametrize("name,fields,reason", [
    ("/tmp/escape.txt", {}, "outside"),
    ("MPIIGaze/../../escape.txt", {}, "outside"),
    ("link", {"type": tarfile.SYMTYPE, "linkname": "../../escape.txt"}, "link"),
    ("MPIIGaze/abs_link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "link"),
    ("hard", {"type": tarfile.LNKTYPE, "linkname": "../escape.txt"}, "outside"),
    ("MPIIGaze/null", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "not a regular file"),
    ("MPIIGaze/pipe", {"type": tarfile.FIFOTYPE}, "not a regular file"),
])
def test_safe_extract_refuses_crafted_members(tmp_path, name, fields, reason):
    def add(tar):
        add_file(tar, "MPIIGaze/good.txt")
        add_file(tar, name, b"" if fields else b"evil", **fields)

    archive = make_tar(tmp_path / "bad.tar.gz", add)
    target = tmp_path / "deep" / "out"
    target.mkdir(parents=True)
    with pytest.raises(DataError, match=reason):
        download.safe_extract(archive, target)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "deep" / "escape.txt").exists()
    assert os.listdir(target) == []  # checked before anything is written


def test_safe_extract_reports_a_truncated_archive(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", lambda tar: add_file(tar, "a.bin", os.urandom(50000)))
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(DataError, match="cannot unpack"):
        download.safe_extract(archive, tmp_path)


# ---- downloads ----

@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server: /full sends its body, /short promises more bytes than it sends."""
    body = os.urandom(300_000)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + (1000 if self.path == "/short" else 0)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", body
    httpd.shutdown()


def test_download_renames_only_a_complete_file(server, tmp_path):
    url, body = server
    download.download(f"{url}/full", str(tmp_path / "a.tar.gz"))
    assert (tmp_path / "a.tar.gz").read_bytes() == body
    with pytest.raises(DataError, match="stopped at 300000 of 301000 bytes"):
        download.download(f"{url}/short", str(tmp_path / "b.tar.gz"), timeout=5)
    assert sorted(os.listdir(tmp_path)) == ["a.tar.gz"]


def test_download_offline_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"^cannot download http://127.0.0.1:9/x \(.*\)$"):
        download.download("http://127.0.0.1:9/x", str(tmp_path / "x"), timeout=5)
    assert os.listdir(tmp_path) == []


def test_fetch_mpiigaze_is_not_used_when_the_files_exist(sample_root, tmp_path, monkeypatch):
    monkeypatch.setattr(gaze_data, "fetch_mpiigaze", functools.partial(pytest.fail, "downloaded"))
    remove_cache(sample_root / "gaze")  # made by an earlier test, or not
    assert len(load_gaze_data(config_for(sample_root, tmp_path)).real_images) == 20


def test_a_stream_skips_a_file_gone_mid_run_and_stops_when_it_can_read_nothing(tmp_path):
    from data.pipelines import stream_failure
    from test_worker_pool import deadline
    folder = tmp_path / "crops"
    folder.mkdir()
    paths = []
    for index in range(20):
        paths.append(str(folder / f"{index}_cropped.png"))
        Image.fromarray(np.full((84, 140), index * 10, np.uint8)).save(paths[-1])
    batches = iter(synthetic_dataset(paths, SHAPE, 4, seed=1))
    next(batches)
    os.remove(paths[0])
    for _ in range(10):  # a file removed mid-run: skipped, the rest of every epoch read
        assert next(batches).shape == (4, *SHAPE)
    shutil.rmtree(folder)  # every file gone (a disk unmounted): the stream ends, it does not spin
    with deadline(30), pytest.raises(tf.errors.OpError) as error:
        for _ in range(1000):
            next(batches)
    message = stream_failure(error.value)
    assert message.startswith("Reading stopped: a whole epoch of") and str(folder) in message
    assert "\n" not in message


def test_main_prints_a_stopped_stream_as_one_line(monkeypatch, capsys):
    import main

    def stopped(config):
        raise tf.errors.UnknownError(None, None, "OSError: Reading stopped: 4 files in a row could not be read\n"
                                                 "Traceback (most recent call last): ...")
    monkeypatch.setattr(main, "run", stopped)
    assert main.main([]) == 1
    assert capsys.readouterr().err == "[!] Reading stopped: 4 files in a row could not be read\n"
