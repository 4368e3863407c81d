"""--data_set=folders without training: which files are images, how they are decoded and cached, the auto
rules, and every kind of bad input."""
import os
import struct
import types
import zlib

import numpy as np
import pytest
from PIL import Image

from config import MAX_HISTORY_BYTES, ConfigError, get_config, network_design, resolve_folder_flags
from data import folder_cache, folder_images
from data.folder_data import MAX_AUTO_SIDE, input_channels, input_size, load_folder_data
from data.reports import DataError


def write_images(folder, count, size=(20, 24), mode="RGB", suffix="png", seed=0, start=0):
    """count random images of mode and size (height, width) as folder/img{i}.{suffix}; their pixels."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for index in range(start, start + count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        pixels[..., 0] = np.clip(pixels[..., 0].astype(int) + 60, 0, 255)  # colour: red differs from blue
        image = Image.fromarray(pixels).convert(mode)
        image.save(os.path.join(folder, f"img{index}.{suffix}"))
        written.append(np.asarray(image))
    return written


def flags(tmp_path, synthetic, real, *extra):
    return get_config(["--data_set=folders", f"--synthetic_image_dir={synthetic}", f"--real_image_dir={real}",
                       f"--data_dir={tmp_path / 'data'}", *extra])


def load(tmp_path, synthetic, real, *extra):
    config = flags(tmp_path, synthetic, real, *extra)
    return load_folder_data(config), config


def rows_file(config, folder, shape=(20, 24, 3)):
    """The decoded rows' cache file of folder."""
    return folder_cache._rows_files(folder_cache.cache_dir_of(config.data_dir, str(folder)), shape, False)[0]


def huge_png(path, width, height):
    """A PNG whose header says width x height, with a tiny body: a decompression bomb's header, cheaply."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))


def test_every_format_pillow_reads_is_an_image_and_other_files_are_counted(tmp_path, capsys):
    folder = tmp_path / "mixed"
    os.makedirs(folder / "deep" / "deeper")
    rgb = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "a.png")
    Image.fromarray(rgb).save(folder / "b.jpg")
    Image.fromarray(rgb).save(folder / "deep" / "c.bmp")
    Image.fromarray(rgb).save(folder / "deep" / "deeper" / "d.tiff")
    Image.fromarray(rgb).save(folder / "e.webp")
    Image.fromarray(rgb).convert("RGBA").save(folder / "f.png")
    Image.fromarray(rgb).convert("P").save(folder / "g.png")
    Image.fromarray(rgb[..., 0]).save(folder / "h.png")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(folder / "i16.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(Image.fromarray(rgb).tobytes()[:50])
    real = tmp_path / "real"
    write_images(real, 3)
    data, config = load(tmp_path, folder, real)
    assert sorted(data.synthetic_paths) == sorted(["a.png", "b.jpg", "deep/c.bmp", "deep/deeper/d.tiff", "e.webp",
                                                   "f.png", "g.png", "h.png", "i16.png"])
    assert "Skipped 2 files" in capsys.readouterr().out
    rows = data.synthetic_rows[np.arange(len(data.synthetic_paths))]
    assert rows.shape == (9, 20, 24, 3)
    by_name = dict(zip(data.synthetic_paths, rows))
    assert np.array_equal(by_name["a.png"], rgb) and np.array_equal(by_name["f.png"], rgb)  # alpha dropped
    assert np.array_equal(by_name["h.png"], np.repeat(rgb[..., :1], 3, axis=-1))  # grey repeated into RGB
    sixteen = by_name["i16.png"][..., 0].astype(int)
    assert np.abs(sixteen - rgb[..., 1]).max() <= 1  # 16-bit grey scaled back to 8 bits


def test_bad_images_are_counted_skips_never_fatal(tmp_path, capsys):
    folder = tmp_path / "synthetic"
    write_images(folder, 3)
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    huge_png(folder / "bomb.png", 20000, 20000)
    os.symlink(folder, folder / "loop")  # a link back into the tree
    real = tmp_path / "real"
    write_images(real, 3)
    data, _ = load(tmp_path, folder, real)
    assert data.synthetic_paths == ["img0.png", "img1.png", "img2.png"]
    out = capsys.readouterr().out
    for reason in (folder_images.TOO_SMALL, folder_images.TOO_LARGE, folder_images.LINK_LOOP):
        assert reason in out


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "same", "nested"])
def test_unusable_folders_are_one_line_errors(tmp_path, case):
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_images(real, 2)
    if case == "empty":
        os.makedirs(synthetic)
    elif case == "unreadable":
        os.makedirs(synthetic)
        (synthetic / "a.png").write_bytes(b"not a png")
    elif case == "same":
        synthetic = real
    elif case == "nested":
        synthetic = real / "inner"
        write_images(synthetic, 2)
    expected = {"missing": "no such folder", "empty": "an empty folder", "unreadable": "no readable image",
                "same": "the same folder", "nested": "is inside"}[case]
    with pytest.raises((DataError, ConfigError), match=expected) as error:
        load(tmp_path, synthetic, real)
    assert "\n" not in str(error.value)


def test_the_folders_are_never_written_and_a_second_start_opens_nothing(tmp_path, monkeypatch):
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_images(synthetic / "a", 3)
    write_images(synthetic / "b", 2, seed=1)
    write_images(real, 4, seed=2)
    before = {path: os.stat(path).st_mtime_ns for path in _tree(tmp_path / "synthetic") + _tree(real)}
    load(tmp_path, synthetic, real)
    assert {path: os.stat(path).st_mtime_ns for path in _tree(synthetic) + _tree(real)} == before
    calls = []
    for name in ("read_header", "input_row", "is_colour"):
        original = getattr(folder_images, name)
        monkeypatch.setattr(folder_images, name, lambda *args, _f=original, _n=name: calls.append(_n) or _f(*args))
    data, _ = load(tmp_path, synthetic, real)
    assert calls == [] and len(data.synthetic_paths) == 5


def _tree(folder):
    return sorted(os.path.join(top, name) for top, dirs, names in os.walk(folder) for name in dirs + names)


def test_a_changed_folder_is_noticed_and_only_what_changed_is_decoded_again(tmp_path, monkeypatch, capsys):
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_images(synthetic, 4)
    write_images(real, 3, seed=2)
    data, config = load(tmp_path, synthetic, real)
    rows_path = rows_file(config, synthetic)
    inode = os.stat(rows_path).st_ino
    first = data.synthetic_rows[np.arange(4)]
    changed = write_images(synthetic, 1, seed=7, start=2)[0]  # img2 rewritten while that run trains ...
    os.utime(synthetic / "img2.png", ns=(1, 1))
    assert np.array_equal(data.synthetic_rows[np.arange(4)], first)  # ... which reads what it decoded
    write_images(synthetic, 1, seed=8, start=9)  # and a new image
    decoded = []
    original = folder_images.input_row
    monkeypatch.setattr(folder_images, "input_row", lambda path, *args: decoded.append(path) or original(path, *args))
    capsys.readouterr()
    data, _ = load(tmp_path, synthetic, real)
    assert sorted(os.path.basename(path) for path in decoded) == ["img2.png", "img9.png"]
    assert "Decoding 2 new or changed synthetic images" in capsys.readouterr().out
    rows = dict(zip(data.synthetic_paths, data.synthetic_rows[np.arange(5)]))
    assert np.array_equal(rows["img2.png"], changed) and np.array_equal(rows["img0.png"], first[0])
    assert os.stat(rows_path).st_ino == inode  # only those rows written: the file patched, not made anew
    os.remove(synthetic / "img0.png")  # a removed image leaves an empty slot ...
    data, _ = load(tmp_path, synthetic, real)
    assert sorted(data.synthetic_paths) == ["img1.png", "img2.png", "img3.png", "img9.png"]
    assert os.stat(rows_path).st_ino == inode and len(data.synthetic_rows) == 4
    for index in (1, 2):  # ... until the empty slots are over half the file: then it is made anew, compact
        os.remove(synthetic / f"img{index}.png")
    data, _ = load(tmp_path, synthetic, real)
    assert os.stat(rows_path).st_ino != inode and len(folder_cache.read_rows(rows_path)) == 2
    assert np.array_equal(data.synthetic_rows[np.array([0])][0], first[3])


def test_a_damaged_cache_is_made_again(tmp_path):
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_images(synthetic, 3)
    write_images(real, 3, seed=2)
    data, config = load(tmp_path, synthetic, real)
    rows_path = rows_file(config, synthetic)
    with open(rows_path, "r+b") as handle:
        handle.truncate(200)
    data, _ = load(tmp_path, synthetic, real)
    assert data.synthetic_rows[np.arange(3)].shape == (3, 20, 24, 3)


def test_grey_and_colour_mixed_are_converted_alike(tmp_path):
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_images(synthetic, 2, mode="L")
    write_images(synthetic, 2, mode="RGB", start=2, seed=3)
    write_images(real, 3, mode="L", seed=2)
    data, config = load(tmp_path, synthetic, real)
    assert config.input_channel == 1  # the real images are grey: colour renders are made grey
    grey = np.asarray(Image.open(synthetic / "img2.png").convert("L"))
    assert np.array_equal(data.synthetic_rows[np.array([2])][0, ..., 0], grey)


def test_the_input_follows_the_real_images(tmp_path):
    entries = [["x", 0, 0, height, width, "RGB", colour] for height, width, colour in
               [(30, 40, None), (32, 48, True), (36, 48, None)]]
    assert input_size(entries)[:2] == (32, 48)
    big = [["x", 0, 0, 3000, 4000, "RGB", None]]
    height, width, why = input_size(big)
    assert (height, width) == (192, MAX_AUTO_SIDE) and "at most" in why
    assert input_channels(entries)[0] == 3
    assert input_channels([["x", 0, 0, 9, 9, "RGB", False]])[0] == 1


def test_grey_pixels_saved_as_rgb_are_grey(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey.png")
    assert not folder_images.is_colour(str(tmp_path / "grey.png"), "RGB")
    write_images(tmp_path / "colour", 1)
    assert folder_images.is_colour(str(tmp_path / "colour" / "img0.png"), "RGB")


def test_networks_and_schedule_follow_the_input():
    assert network_design("folders", 36, 48) == "gaze" and network_design("folders", 90, 120) == "hand"
    assert network_design("gaze", 224, 224) == "gaze"
    unset = dict(input_height=None, input_width=None, input_channel=None, initial_K_g=None, batch_size=None,
                 buffer_size=None, learning_rate=None)
    small = types.SimpleNamespace(**unset)
    chosen = resolve_folder_flags(small, 36, 48, 3)
    assert (small.initial_K_g, small.batch_size, small.buffer_size, small.learning_rate) == (1000, 512, 25600, 1e-3)
    assert set(chosen) == {"input_height", "input_width", "input_channel", "initial_K_g", "batch_size",
                           "buffer_size", "learning_rate"}
    large = types.SimpleNamespace(**{**unset, "batch_size": 32})
    resolve_folder_flags(large, 256, 256, 3)
    assert (large.initial_K_g, large.learning_rate) == (500, 1e-4)
    assert large.buffer_size % 32 == 0 and large.buffer_size * 256 * 256 * 3 * 4 <= MAX_HISTORY_BYTES


def test_resize_matches_the_pipelines(tmp_path):
    import tensorflow as tf
    from data.pipelines import resize_as_original
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for height, width in ((20, 24), (60, 70), (37, 20)):
        expected = resize_as_original(tf.constant(pixels[None], tf.float32), (height, width))[0].numpy()
        resized = folder_images.resize_as_original(pixels, height, width)
        assert np.abs(resized.astype(float) - expected).max() <= 0.5 + 1e-3


def test_crop_to_aspect_ratio_keeps_the_centre(tmp_path):
    pixels = np.zeros((20, 60, 1), np.uint8)
    pixels[:, 20:40] = 255
    cropped = folder_images.crop_to_aspect(pixels, 10, 10)
    assert cropped.shape == (20, 20, 1) and cropped.min() == 255


def test_flags_of_the_folders_data_set_are_checked(tmp_path):
    from config import check_config
    for argv, message in (([], "synthetic_image_dir"), (["--synthetic_image_dir=a"], "real_image_dir"),
                          (["--synthetic_image_dir=a", "--real_image_dir=b", "--task=estimation"], "no labels"),
                          (["--synthetic_image_dir=a", "--real_image_dir=b", "--input_height=8"], "at least")):
        with pytest.raises(ConfigError, match=message):
            check_config(get_config(["--data_set=folders", *argv]))


def test_a_pass_over_more_rows_than_the_budget_keeps_resident_memory_flat(tmp_path):
    """98 MB of decoded rows read through the training pipeline in an epoch: resident memory grows by far
    less, as the rows stay on disk (a copy in memory, or a memory map, would hold them all)."""
    from test_npy_file import resident_kib
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_images(synthetic, 1, size=(128, 128))
    for index in range(1, 2000):  # one image under 2000 names: cheap to write, each decoded into its own row
        os.link(synthetic / "img0.png", synthetic / f"img{index}.png")
    write_images(real, 3, size=(128, 128), seed=2)
    data, _ = load(tmp_path, synthetic, real)
    shape, batch = (128, 128, 3), 10
    assert len(data.synthetic_rows) * np.prod(shape) > 90 * 2 ** 20
    batches = iter(data.synthetic_batches(shape, batch, seed=1))
    for _ in range(20):  # the pipeline's own buffers fill first
        next(batches)
    before = resident_kib()
    for _ in range(len(data.synthetic_rows) // batch):
        next(batches)
    assert resident_kib() - before < 32 * 1024


def test_a_cache_folder_that_cannot_be_written_leaves_the_rows_in_a_temporary_file(tmp_path, capsys):
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    written = write_images(synthetic, 3)
    write_images(real, 3, seed=2)
    os.makedirs(tmp_path / "data")
    (tmp_path / "data" / "folders").write_text("a file where the cache folder would be")
    data, _ = load(tmp_path, synthetic, real)
    out = capsys.readouterr().out
    assert "Cannot write" in out and "Cannot cache the decoded images" in out
    assert np.array_equal(data.synthetic_rows[np.arange(3)], np.stack(written))


def test_each_input_pipeline_reads_its_own_share(tmp_path):
    """A cluster's workers (shard = (pipelines, index)) read disjoint shares that cover the folder."""
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_images(synthetic, 6, size=(12, 12))
    write_images(real, 3, size=(12, 12), seed=2)
    data, _ = load(tmp_path, synthetic, real)
    seen = []
    for index in range(2):
        batches = data.synthetic_batches((12, 12, 3), 3, seed=0, shard=(2, index))
        seen.append({np.asarray(image).tobytes() for image in next(iter(batches))})
    every = {np.asarray(image).tobytes() for image in data.test_images((12, 12, 3), 6)}
    assert not seen[0] & seen[1] and seen[0] | seen[1] == every
