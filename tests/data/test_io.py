"""Array files: every format round-trips, and every user mistake is one clear line."""

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from segunet.data import io
from segunet.data.io import read_array, split_key, write_array
from segunet.errors import SegunetError


def stack(shape=(3, 20, 24), dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def one_line_error(path, *args, match=None):
    """read_array's SegunetError, checked to be one line naming the file."""
    with pytest.raises(SegunetError, match=match) as info:
        read_array(path, *args)
    message = str(info.value)
    assert "\n" not in message and str(path).split(":")[0] in message
    return message


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "lzw", "zlib"])
def test_tiff_stacks_of_any_compression_read_as_zyx(tmp_path, compression):
    a = stack(dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", a, compression=compression)
    np.testing.assert_array_equal(read_array(tmp_path / "s.tif"), a)


def test_tiff_written_page_by_page_reads_as_one_stack(tmp_path):
    a = stack()
    with tifffile.TiffWriter(tmp_path / "pages.tiff") as tif:
        for page in a:  # independent pages, no shape metadata: how many tools write stacks
            tif.write(page, contiguous=False, metadata=None)
    np.testing.assert_array_equal(read_array(tmp_path / "pages.tiff"), a)


def test_bigtiff_reads_and_is_written_beyond_the_threshold(tmp_path, monkeypatch):
    a = stack()
    tifffile.imwrite(tmp_path / "big.tif", a, bigtiff=True)
    np.testing.assert_array_equal(read_array(tmp_path / "big.tif"), a)

    monkeypatch.setattr(io, "BIGTIFF_BYTES", a.nbytes - 1)
    write_array(tmp_path / "auto.tif", a)
    with tifffile.TiffFile(tmp_path / "auto.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].compression == 8  # zlib (deflate)
    np.testing.assert_array_equal(read_array(tmp_path / "auto.tif"), a)


@pytest.mark.parametrize(
    "name, array",
    [
        ("grey.tif", stack((20, 24), np.uint16)),
        ("rgb.tif", stack((20, 24, 3))),
        ("float.tif", np.linspace(-1, 1, 480, dtype=np.float32).reshape(20, 24)),
        ("grey.png", stack((20, 24))),
        ("grey16.png", stack((20, 24), np.uint16)),
        ("rgb.png", stack((20, 24, 3))),
        ("grey.bmp", stack((20, 24))),
        ("a.npy", stack((2, 3, 4), np.int32)),
        ("a.h5", stack((2, 3, 4), np.int64)),
        ("a.zarr", stack((2, 3, 4), np.uint16)),
    ],
)
def test_write_then_read_round_trips(tmp_path, name, array):
    path = write_array(tmp_path / name, array)
    back = read_array(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_jpeg_reads_as_grey_or_rgb(tmp_path):
    write_array(tmp_path / "g.jpg", stack((16, 16)))
    write_array(tmp_path / "c.jpeg", stack((16, 16, 3)))
    assert read_array(tmp_path / "g.jpg").shape == (16, 16)
    assert read_array(tmp_path / "c.jpeg").shape == (16, 16, 3)


def test_hdf5_by_key_by_sole_dataset_and_by_colon_syntax(tmp_path):
    raw, labels = stack(), stack(dtype=np.uint16, seed=1)
    with h5py.File(tmp_path / "one.hdf5", "w") as f:
        f["volumes/raw"] = raw
    np.testing.assert_array_equal(read_array(tmp_path / "one.hdf5"), raw)  # the only one

    write_array(tmp_path / "v.h5", raw, key="raw")
    write_array(f"{tmp_path / 'v.h5'}:seg/labels", labels)  # adds, keeps raw
    np.testing.assert_array_equal(read_array(tmp_path / "v.h5", "raw"), raw)
    np.testing.assert_array_equal(read_array(f"{tmp_path / 'v.h5'}:seg/labels"), labels)
    message = one_line_error(tmp_path / "v.h5", match="2 arrays")
    assert "raw" in message and "seg/labels" in message
    message = one_line_error(tmp_path / "v.h5", "nope", match="no array 'nope'")
    assert "raw" in message


def test_zarr_array_group_key_and_colon_syntax(tmp_path):
    raw, labels = stack(), stack(dtype=np.uint16, seed=1)
    zarr.create_array(store=str(tmp_path / "a.zarr"), data=raw)
    np.testing.assert_array_equal(read_array(tmp_path / "a.zarr"), raw)

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("volumes/raw", data=raw)
    np.testing.assert_array_equal(read_array(tmp_path / "g.zarr"), raw)  # the only array
    write_array(tmp_path / "g.zarr", labels, key="volumes/labels")  # into the group
    write_array(f"{tmp_path / 'g.zarr'}:volumes/labels", labels + 1)  # replaces it
    np.testing.assert_array_equal(read_array(tmp_path / "g.zarr", "volumes/raw"), raw)
    np.testing.assert_array_equal(read_array(f"{tmp_path / 'g.zarr'}:volumes/labels"), labels + 1)
    np.testing.assert_array_equal(read_array(tmp_path / "g.zarr" / "volumes" / "raw"), raw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "g.zarr"]  # no temp left
    one_line_error(tmp_path / "g.zarr", match="2 arrays")


def test_split_key_only_splits_existing_paths(tmp_path):
    (tmp_path / "v.h5").touch()
    assert split_key(f"{tmp_path}/v.h5:raw") == (tmp_path / "v.h5", "raw")
    assert split_key(f"{tmp_path}/v.h5:raw", "labels") == (tmp_path / "v.h5", "labels")
    assert split_key(f"{tmp_path}/missing.h5:raw") == (tmp_path / "missing.h5:raw", None)
    odd = tmp_path / "a:b.npy"  # a real file with ':' in its name stays whole
    np.save(odd, np.ones(3))
    assert split_key(odd) == (odd, None)
    np.testing.assert_array_equal(read_array(odd), np.ones(3))


# --- errors --------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    one_line_error(tmp_path / "nope.tif", match="no such file")


def test_unsupported_extension_lists_the_supported(tmp_path):
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    message = one_line_error(tmp_path / "x.gif", match="unsupported")
    assert ".tif" in message and ".zarr" in message and ".npy" in message


@pytest.mark.parametrize("name", ["bad.tif", "bad.png", "bad.h5", "bad.npy"])
def test_corrupt_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not an image file at all" * 4)
    one_line_error(tmp_path / name, match="corrupt")


def test_truncated_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "t.tif", stack((4, 64, 64)), compression="zlib")
    data = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(data[: len(data) // 3])
    one_line_error(tmp_path / "t.tif", match="corrupt")


def test_empty_file_and_empty_array(tmp_path):
    (tmp_path / "e.tif").touch()
    one_line_error(tmp_path / "e.tif", match="empty")
    np.save(tmp_path / "z.npy", np.zeros((0, 5)))
    one_line_error(tmp_path / "z.npy", match="empty")


# --- atomic writes -------------------------------------------------------------------------


def test_a_crash_while_writing_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    def crash(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", crash)
    with pytest.raises(SegunetError, match="cannot write .*new.tif"):
        write_array(tmp_path / "new.tif", stack())
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    old = stack(seed=3)
    write_array(tmp_path / "old.tif", old)
    monkeypatch.setattr(tifffile, "imwrite", crash)
    with pytest.raises(SegunetError):
        write_array(tmp_path / "old.tif", stack())
    assert [p.name for p in tmp_path.iterdir()] == ["old.tif"]
    np.testing.assert_array_equal(read_array(tmp_path / "old.tif"), old)


def test_a_crash_writing_into_hdf5_keeps_the_original(tmp_path, monkeypatch):
    write_array(tmp_path / "v.h5", stack(), key="raw")
    monkeypatch.setattr(h5py.Group, "create_dataset", lambda *a, **k: 1 / 0)
    with pytest.raises(SegunetError, match="ZeroDivisionError"):
        write_array(tmp_path / "v.h5", stack(seed=2), key="labels")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["v.h5"]
    np.testing.assert_array_equal(read_array(tmp_path / "v.h5"), stack())  # raw alone


# --- temps of killed writers -----------------------------------------------------------------


def test_temps_of_killed_writers_are_recognised_as_stale(tmp_path):
    """atomic_path's temps (a zarr store, a TIFF) carry their writer, so the temps of a
    writer killed mid-write (no clean-up ran) are removed and a live writer's are kept."""
    import subprocess
    import sys

    from segunet.atomic import remove_stale_temps

    writes = ("import time; from pathlib import Path; import numpy as np, zarr\n"
              "from segunet.data.io import atomic_path\n"
              f"with atomic_path(Path({str(tmp_path / 'a.zarr')!r})) as store, \\\n"
              f"        atomic_path(Path({str(tmp_path / 'b.tif')!r})) as tif:\n"
              "    zarr.create_array(store=str(store), data=np.zeros(4))\n"
              "    tif.write_bytes(b'part'); print(store.name, tif.name, flush=True)\n"
              "    time.sleep(600)")
    killed, live = (subprocess.Popen([sys.executable, "-c", writes], stdout=subprocess.PIPE,
                                     text=True) for _ in range(2))
    try:
        dead_temps = killed.stdout.readline().split()
        killed.kill()  # SIGKILL: no clean-up runs
        killed.wait()
        live_temps = live.stdout.readline().split()
        assert (tmp_path / dead_temps[0] / "zarr.json").is_file()
        removed = remove_stale_temps(tmp_path)
        assert sorted(p.name for p in removed) == sorted(dead_temps)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(live_temps)
    finally:
        live.kill()
        live.wait()
