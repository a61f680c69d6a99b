"""``segunet predict format=zarr|ome-zarr``: the instances decoded block by block from the
probabilities on disk equal the instances ``format=tif`` decodes from the whole image (ids
aside), in 2D and 3D, at the image's scale and resampled, with blocks small enough here
that every image spans several."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import zarr
from helpers import detector, same_objects, save_tiny_checkpoint, smooth

from segunet.cli.predict import run as main
from segunet.infer import merger, objects


@pytest.fixture
def small_blocks(monkeypatch):
    """Cores of one chunk (512 px in 2D, 64 in 3D) instead of several."""
    monkeypatch.setattr(objects, "CORE_CHUNKS", {2: 1, 3: 1})


@pytest.mark.parametrize("extra", [[], ["pixel_size=0.7"], ["instances.min_size=30"]])
def test_2d_zarr_instances_equal_the_whole_image_decoding(tmp_path, small_blocks, extra):
    ckpt = save_tiny_checkpoint(tmp_path, channels=(2, 2), pixel_size=[0.5, 0.5],
                                weights=detector)
    tifffile.imwrite(tmp_path / "a.tif", smooth((1100, 700), 0))
    args = [f"checkpoint={ckpt}", f"input={tmp_path / 'a.tif'}", "outputs=instances", *extra]
    assert main([*args, f"output={tmp_path / 'z'}", "format=zarr"]) == 0
    assert main([*args, f"output={tmp_path / 't'}"]) == 0
    whole = tifffile.imread(tmp_path / "t" / "a_instances.tif")
    streamed = zarr.open_array(str(tmp_path / "z" / "a_instances.zarr"))
    assert streamed.dtype == whole.dtype == np.uint16 and streamed.shape == (1100, 700)
    assert whole.max() > 20
    same_objects(streamed[...], whole)
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["a_instances.zarr"]


def test_3d_ome_zarr_instances_equal_the_whole_volume_decoding(tmp_path, small_blocks):
    ckpt = save_tiny_checkpoint(tmp_path, spatial_dims=3, channels=(2, 2), weights=detector)
    tifffile.imwrite(tmp_path / "v.tif", smooth((70, 90, 80), 1))
    args = [f"checkpoint={ckpt}", f"input={tmp_path / 'v.tif'}"]
    assert main([*args, f"output={tmp_path / 'o'}", "format=ome-zarr"]) == 0
    assert main([*args, f"output={tmp_path / 't'}", "outputs=instances"]) == 0
    whole = tifffile.imread(tmp_path / "t" / "v_instances.tif")
    streamed = zarr.open_group(str(tmp_path / "o" / "v.ome.zarr"))["labels/instances/0"]
    assert streamed.shape == (1, 70, 90, 80)  # NGFF: a label image keeps the channel axis
    assert whole.max() > 5
    same_objects(streamed[0], whole)


def test_a_volume_too_wide_for_one_band_is_predicted_in_boxes_that_equal_one_pass(
    tmp_path, monkeypatch, capsys,
):
    ckpt = save_tiny_checkpoint(tmp_path, spatial_dims=3, channels=(2, 2), weights=detector)
    tifffile.imwrite(tmp_path / "v.tif", smooth((70, 150, 140), 1))
    args = [f"checkpoint={ckpt}", f"input={tmp_path / 'v.tif'}", "format=zarr", "tile=32"]
    assert main([*args, f"output={tmp_path / 'one'}"]) == 0
    monkeypatch.setattr(merger, "BOX_BYTES", 2**20)
    assert main([*args, f"output={tmp_path / 'boxes'}"]) == 0
    err = capsys.readouterr().err
    found = re.search(r"predicted in (\d+) boxes, as a band of its whole width", err)
    assert found and int(found.group(1)) >= 4
    for name in ("probabilities", "labels", "instances"):
        np.testing.assert_array_equal(
            zarr.open_array(str(tmp_path / "boxes" / f"v_{name}.zarr"))[...],
            zarr.open_array(str(tmp_path / "one" / f"v_{name}.zarr"))[...], err_msg=name)


def test_tif_beyond_the_memory_available_is_one_line_naming_the_zarr_formats(
    tmp_path, monkeypatch, capsys,
):
    """An image whose whole prediction takes more memory than the system has: refused
    before any work, nothing written; format=zarr predicts it."""
    from segunet.infer import memory

    ckpt = save_tiny_checkpoint(tmp_path, channels=(2, 2), weights=detector)
    tifffile.imwrite(tmp_path / "a.tif", smooth((300, 200), 2))
    # 300 x 200 px, 2 classes: 8 bytes of probabilities + 28 of decoding per pixel.
    assert memory.whole_bytes((300, 200), (300, 200), 2, True) == 300 * 200 * (8 + 4 + 24)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1_000_000)
    args = [f"checkpoint={ckpt}", f"input={tmp_path / 'a.tif'}"]
    assert main([*args, f"output={tmp_path / 't'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "takes about 2 MiB, more than the 1 MiB available: use format=zarr or " \
           "format=ome-zarr" in err
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())
    assert main([*args, f"output={tmp_path / 'z'}", "format=zarr"]) == 0
