"""Streaming tiles to disk band by band: every chunk written once, memory bounded by a band."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import ROOT, FailingImage, random_image, unet

from segunet.infer.merger import BandMerger, ZarrMerger, boxes_for
from segunet.infer.predict import predict_tiled


class RecordingArray:
    """A chunked array-like that records every write."""

    def __init__(self, shape, chunks, dtype=np.float32):
        self.data = np.full(shape, np.nan, dtype)
        self.shape, self.chunks, self.dtype = shape, chunks, np.dtype(dtype)
        self.writes = []

    def __setitem__(self, index, value):
        self.writes.append(index)
        self.data[index] = value


@pytest.mark.parametrize(
    "padding, dims, shape, tile, chunk",
    [
        ("same", 2, (1, 70, 53), 32, 16),
        ("same", 2, (1, 70, 53), 32, 7),  # blocks that do not divide the tiles
        ("valid", 2, (1, 101, 77), 60, 32),
        ("same", 3, (1, 20, 25, 18), 16, 6),
        ("valid", 3, (1, 13, 17, 9), 22, 4),
    ],
)
def test_band_merger_writes_each_chunk_once_and_equals_in_memory(padding, dims, shape, tile,
                                                                  chunk):
    channels = (4, 8, 16) if dims == 2 else (2, 4)
    model = unet(padding, spatial_dims=dims, channels=channels, out_channels=3)
    image = random_image(shape)
    expected = predict_tiled(model, image, tile, batch_size=3)
    out = RecordingArray(expected.shape, (3, chunk, *expected.shape[2:]))
    assert predict_tiled(model, image, tile, batch_size=3, out=out) is out
    np.testing.assert_allclose(out.data, expected, atol=1e-6)
    starts = [index[1].start for index in out.writes]
    assert starts == list(range(0, shape[1], chunk))  # whole chunks, in order, once each


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("dims", [2, 3])
def test_boxes_together_write_what_the_whole_image_writes(padding, dims):
    """``box=``, what a Dask worker predicts of a large image, and how a volume too wide
    for one band is predicted: the boxes, each predicted with only the batches of tiles
    that touch it, fill exactly (bitwise) the whole call's array, each chunk written by
    one box only."""
    channels, shape, tile, chunk = ((4, 8, 16), (1, 150, 61), 48, 16) if dims == 2 else (
        (2, 4), (1, 40, 21, 17), 22, 8)
    model = unet(padding, spatial_dims=dims, channels=channels, out_channels=3)
    image = random_image(shape)
    chunks = (3, *(chunk,) * dims)
    whole = RecordingArray((3, *shape[1:]), chunks)
    predict_tiled(model, image, tile, batch_size=2, out=whole)
    boxes = boxes_for(whole.shape, chunks, tile_rows=chunk // 2, parts=3,
                      budget=BandMerger.band_bytes(whole.shape, chunk, chunk) // 3)
    assert len({b[0] for b in boxes}) == 3 and len({b[1:] for b in boxes}) > 1
    parts = RecordingArray(whole.shape, chunks)
    for box in boxes:
        predict_tiled(model, image, tile, batch_size=2, out=parts, box=box)
    np.testing.assert_array_equal(parts.data, whole.data)
    written = sorted(tuple(s.start for s in index[1:]) for index in parts.writes)
    assert len(written) == len(set(written))  # no chunk row of a box twice


def test_a_box_must_be_whole_chunks_of_an_out_array():
    model = unet("same", channels=(4, 8))
    image = random_image((1, 40, 30))
    out = RecordingArray((2, 40, 30), (2, 16, 15))
    with pytest.raises(ValueError, match="whole chunks"):
        predict_tiled(model, image, 32, out=out, box=[(8, 40)])
    with pytest.raises(ValueError, match="whole chunks"):
        predict_tiled(model, image, 32, out=out, box=[(0, 16), (0, 20)])
    with pytest.raises(ValueError, match="give one"):
        predict_tiled(model, image, 32, box=[(0, 16)])


def test_boxes_keep_the_whole_width_while_a_band_fits():
    assert boxes_for((2, 32768, 32768), (2, 512, 512), 500) == [((0, 32768), (0, 32768))]
    boxes = boxes_for((2, 2048, 2048, 2048), (2, 64, 64, 64), 100)
    assert all(b[0] == (0, 2048) for b in boxes)
    width = [(b[1][1] - b[1][0]) * (b[2][1] - b[2][0]) for b in boxes]
    assert BandMerger.band_bytes((2, 2048, 512, 256), 64, 100) <= 2**30 and len(boxes) == 32
    assert max(width) == 512 * 256


def test_band_merger_on_device_tensors_equals_host_arrays():
    """The GPU path hands tensors straight to the merger; on the CPU device it must agree with
    numpy arrays from the writer thread."""
    model = unet("same", out_channels=2)
    image = random_image((1, 70, 53))
    expected = predict_tiled(model, image, 32, batch_size=3)

    class OnDevice(BandMerger):
        def takes(self, device):
            return True

    out = np.zeros(expected.shape, np.float32)
    merger = OnDevice(out, weighted=True, rows=16, device="cpu")
    predict_tiled(model, image, 32, batch_size=3, out=merger)
    np.testing.assert_allclose(out, expected, atol=1e-6)


class CountingMerger(BandMerger):
    """Records the most blocks alive at once: accumulating, or finished and not written."""

    most = 0

    def _flush(self, stop):
        super()._flush(stop)
        alive = len(self.blocks) + sum(not f.done() for f in self.pending)
        self.most = max(self.most, alive)

    def add(self, region, probs, weights=None):
        super().add(region, probs, weights)
        self.most = max(self.most, len(self.blocks) + sum(not f.done() for f in self.pending))


@pytest.mark.parametrize("chunk", [7, 16, 40])
def test_band_bytes_bound_the_blocks_alive(chunk):
    """band_bytes (the GPU-fit check of predict_tiled) counts every block that can be alive,
    with slow writes (SlowArray) piling finished blocks up for the writer."""
    shape, tile = (2, 150, 40), 32
    assert BandMerger.band_bytes(shape, 16, 32) == 4 * 3 * (2 + 1 + 3) * 16 * 40  # by hand
    merger = CountingMerger(SlowArray(shape, (2, chunk, 40)), weighted=True, device="cpu")
    predict_tiled(unet("same", out_channels=2), random_image((1, 150, 40)), tile, out=merger)
    blocks = -(-BandMerger.band_bytes(shape, chunk, tile) // (4 * 3 * chunk * 40))  # ceil
    assert 0 < merger.most <= blocks


def test_band_merger_refuses_tiles_out_of_raster_order():
    merger = BandMerger(np.zeros((1, 40, 10), np.float32), weighted=False, rows=8)
    merger.add((slice(16, 24), slice(0, 10)), np.ones((1, 8, 10), np.float32))
    with pytest.raises(ValueError, match="raster order"):
        merger.add((slice(0, 8), slice(0, 10)), np.ones((1, 8, 10), np.float32))


class SlowArray(RecordingArray):
    """Writes take a while, so some are still pending when the prediction fails."""

    def __setitem__(self, index, value):
        time.sleep(0.05)
        super().__setitem__(index, value)


def test_a_failed_prediction_leaves_no_write_running():
    """predict_cli removes its temporary store when the prediction raises: no band may be
    written into it after that."""
    model = unet("same")
    image = random_image((1, 200, 40))
    out = SlowArray((2, 200, 40), (2, 8, 40))
    with pytest.raises(OSError, match="read failed"):
        predict_tiled(model, FailingImage(image, 6), 32, batch_size=1, out=out)
    written = len(out.writes)
    time.sleep(0.3)
    assert len(out.writes) == written


def test_zarr_merger_blends_3d_in_float16(tmp_path):
    model = unet("same", spatial_dims=3, channels=(2, 4))
    image = random_image((1, 20, 25, 18))
    expected = predict_tiled(model, image, 16)
    merger = ZarrMerger(tmp_path / "p.zarr", expected.shape, chunks=(8, 8, 8))
    result = predict_tiled(model, image, 16, out=merger)
    assert result.dtype == np.float16
    np.testing.assert_allclose(result[...], expected, atol=1e-3)


# In a child process, so ru_maxrss is this prediction's own.
RSS_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, zarr
    from test_predict import PointwiseUNet
    from segunet.infer.merger import ZarrMerger
    from segunet.infer.predict import predict_tiled

    folder = sys.argv[1]
    image = zarr.open_array(folder + "/in.zarr", mode="r")
    model = PointwiseUNet(padding="same")
    warm = np.ascontiguousarray(image[:, :1024])
    predict_tiled(model, warm, 256, batch_size=4)  # threads, allocator pools, imports
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    merger = ZarrMerger(folder + "/out.zarr", (2, *image.shape[1:]), chunks=(128, 128))
    predict_tiled(model, image, 256, batch_size=4, out=merger)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_MiB": before / 1024, "after_MiB": after / 1024}))
""")


def test_streaming_memory_grows_with_the_width_not_the_height(tmp_path):
    """A tall image streamed to zarr: host memory holds the tiles in flight and a band of
    rows, far less than the probabilities (128 MiB in float32, with weights 192). The
    process itself grows by about 33 MiB whatever the height (threads, allocator arenas,
    zarr), so the image is tall enough to keep the two apart."""
    shape = (1, 32768, 512)
    image = zarr.create_array(str(tmp_path / "in.zarr"), shape=shape, chunks=(1, 512, 512),
                              dtype="uint8")
    image[...] = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    done = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(tmp_path)],
        capture_output=True, text=True, cwd=str(Path(__file__).parent),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(  # its imports: helpers too
            [str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    assert rss["after_MiB"] - rss["before_MiB"] < 64, rss
    result = zarr.open_array(str(tmp_path / "out.zarr/probabilities"), mode="r")
    x = image[0, ::97, ::89].astype(np.float32)
    np.testing.assert_allclose(result[0, ::97, ::89], 1 / (1 + np.exp(-2 * x)), atol=1e-3)
