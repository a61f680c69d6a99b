"""Tiled prediction: seamless overlap-tile for valid nets, MONAI-equal blending for same nets,
streaming from and to disk, test-time augmentation."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch
import zarr
from helpers import FailingImage, random_image, unet, whole_image_reference

from segunet.data.tiling import blend_window, plan_tiles, sliding_starts, tile_shapes, tile_within
from segunet.errors import SegunetError
from segunet.infer.merger import InMemoryMerger, Merger, ZarrMerger
from segunet.infer.predict import predict_labels, predict_tiled
from segunet.models.unet import UNet

# --- pure geometry -----------------------------------------------------------------------


def test_tile_shapes_round_down_and_default():
    net = unet("valid")  # valid sizes 4b + 12, output = input - 40
    assert tile_shapes(net, (500, 500), 63) == ((60, 60), (20, 20))
    assert tile_shapes(net, (500, 500), (10, 64)) == ((44, 64), (4, 24))  # 44: the smallest
    assert tile_shapes(net, (101, 77), None) == ((144, 120), (104, 80))  # one tile covers it
    assert tile_shapes(net, (5000, 20), None)[0] == (512, 60)
    same = unet("same")
    assert tile_shapes(same, (101, 77), None) == ((104, 80), (104, 80))
    assert tile_shapes(same, (900, 900), 70) == ((68, 68), (68, 68))


def test_output_tiles_shorter_than_the_pooling_step_grow():
    # 4 levels: valid sizes 92, 100, ... -> 4, 12, ...; tiles start on multiples of 8, so an
    # output of 4 would leave gaps and 100 (-> 12) is the smallest tile that spans a step.
    net = unet("valid", channels=(2, 4, 8, 16))
    assert tile_shapes(net, (500, 500), 60) == ((100, 100), (12, 12))
    assert tile_shapes(net, (500, 500), (92, 188)) == ((100, 188), (12, 100))
    assert tile_shapes(net, (1, 1), None) == ((100, 100), (12, 12))  # default 92 grows too
    # 5 levels: 188 -> 4 and 204 -> 20 with steps of 16; 3D alike, per axis.
    assert tile_shapes(unet("valid", channels=(1, 1, 1, 1, 1)), (2, 2), None)[0] == (204, 204)
    net3d = unet("valid", spatial_dims=3, channels=(1, 1, 1, 1))
    assert tile_shapes(net3d, (48, 96, 96), 92) == ((100,) * 3, (12,) * 3)
    # Same padding starts tiles anywhere: nothing grows.
    assert tile_shapes(unet("same", channels=(2, 4, 8, 16)), (500, 500), 8) == ((8, 8), (8, 8))


def test_tile_within_a_pixel_budget():
    net = unet("valid", channels=(2, 4, 8, 16))  # valid sizes 8b + 28, output = input - 88
    budget = 4 * 188**2  # 141,376
    assert tile_within(net, (256, 256), budget) == (348, 348)  # the default tile fits
    assert tile_within(net, (5000, 20), budget) == (516, 108)  # 516 x 108 fits too
    # Cut from the default 516 x 516, the longer axis first (the first of equals), 8 at a
    # time: 372 x 380 = 141,360 fits where 380 x 380 = 144,400 does not.
    assert tile_within(net, (5000, 5000), budget) == (372, 380)
    assert tile_within(net, (5000, 5000), 1) == (100, 100)  # never below a tile that tiles


@pytest.mark.parametrize("n, tile, overlap", [(100, 32, 0.25), (70, 32, 0.5), (32, 32, 0.25),
                                              (33, 32, 0.0), (20, 32, 0.25), (500, 128, 0.9)])
def test_sliding_starts_match_monai(n, tile, overlap):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size = max(n, tile)
    interval = _get_scan_interval((size,), (tile,), 1, (overlap,))
    expected = [s[0].start for s in dense_patch_slices((size,), (tile,), interval)]
    assert sliding_starts(n, tile, overlap) == expected


@pytest.mark.parametrize("tile", [(32, 32), (17, 40), (8, 12, 16)])
def test_gaussian_window_matches_monai(tile):
    from monai.data.utils import compute_importance_map

    expected = compute_importance_map(tile, mode="gaussian", sigma_scale=0.125).numpy()
    np.testing.assert_allclose(blend_window(tile, "gaussian"), expected, rtol=1e-6)
    assert (blend_window(tile, "constant") == 1).all()


def test_valid_tiles_are_aligned_and_cover_the_image():
    tiles = plan_tiles((101, 77), (60, 60), (20, 20), "valid", levels=3)
    covered = np.zeros((101, 77), bool)
    for in_start, out_start in tiles:
        assert all(s % 4 == 0 for s in out_start)  # pooling grid in phase
        assert all(o - i == 20 for i, o in zip(in_start, out_start))  # the margin
        covered[tuple(slice(s, s + 20) for s in out_start)] = True
    assert covered.all()


# --- valid nets: overlap-tile equals one pass over the whole image -----------------------


@pytest.mark.parametrize(
    "shape, tile, batch, classes",
    [
        ((1, 101, 77), 60, 3, 2),  # many tiles, the last ones shifted back
        ((1, 101, 77), None, 1, 2),  # one default tile
        ((2, 101, 77), (52, 76), 1, 4),  # several inputs and classes, non-square tiles
        ((1, 15, 12), None, 8, 2),  # smaller than the context margin
    ],
)
def test_valid_net_is_seamless(shape, tile, batch, classes):
    model = unet("valid", in_channels=shape[0], out_channels=classes)
    image = random_image(shape)
    probs = predict_tiled(model, image, tile_shape=tile, batch_size=batch)
    assert probs.shape == (classes, *shape[1:]) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, whole_image_reference(model, image), atol=1e-4)


@pytest.mark.parametrize(
    "shape, tile, channels",
    [
        ((1, 1, 1), None, (2, 4, 8, 16)),  # a 1x1 image: mirrored from its one pixel
        ((1, 2, 2), 92, (2, 4, 8, 16)),
        ((1, 50, 60), 60, (2, 4, 8, 16)),  # 60 rounds to 92 (-> 4 < 8), grows to 100
        ((1, 50, 60), (92, 188), (2, 4, 8, 16)),
        ((1, 2, 1), 188, (1, 2, 2, 2, 2)),  # 5 levels: 188 -> 4 < 16
        ((1, 2, 13, 3), 92, (1, 2, 2, 2)),  # 3D: 2 tiles along the 13
    ],
)
def test_tiles_whose_output_is_shorter_than_the_pooling_step_are_seamless(shape, tile, channels):
    model = unet("valid", spatial_dims=len(shape) - 1, channels=channels)
    image = random_image(shape)
    probs = predict_tiled(model, image, tile_shape=tile, batch_size=2)
    assert probs.shape == (2, *shape[1:])
    np.testing.assert_allclose(probs, whole_image_reference(model, image), atol=1e-4)


def test_batchnorm_is_seamless_and_instance_norm_is_not():
    """Why the DSB recipe normalises with BatchNorm: in eval mode it is a fixed affine map per
    channel, so tiles are predicted as the whole image is; instance norm takes each tile's
    own statistics, so the tiling shows in the result."""
    image = random_image((1, 101, 77))
    for norm, seamless in (("batch", True), ("instance", False)):
        torch.manual_seed(0)
        model = UNet(1, 2, 2, (4, 8, 16), padding="valid", norm=norm)
        for m in model.modules():  # statistics as after training, not the identity
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        probs = predict_tiled(model, image, tile_shape=60, batch_size=3)
        gap = np.abs(probs - whole_image_reference(model, image)).max()
        assert (gap < 1e-4) == seamless, (norm, gap)


def test_valid_net_3d_is_seamless():
    model = unet("valid", spatial_dims=3, channels=(2, 4))  # valid sizes 18, 20, ...; -16
    image = random_image((1, 13, 17, 9))
    probs = predict_tiled(model, image, tile_shape=22, batch_size=3)
    np.testing.assert_allclose(probs, whole_image_reference(model, image), atol=1e-4)


# --- same nets: blending as MONAI's sliding_window_inference -----------------------------


@pytest.mark.parametrize(
    "shape, tile, blend, overlap, dims_channels",
    [
        ((1, 70, 53), 32, "gaussian", 0.25, (2, (4, 8, 16))),
        ((1, 70, 53), 32, "constant", 0.5, (2, (4, 8, 16))),
        ((1, 20, 25, 18), 16, "gaussian", 0.25, (3, (2, 4))),
    ],
)
def test_same_net_matches_monai(shape, tile, blend, overlap, dims_channels):
    from monai.inferers import sliding_window_inference

    dims, channels = dims_channels
    model = unet("same", spatial_dims=dims, channels=channels, out_channels=3).eval()
    image = random_image(shape)
    ours = predict_tiled(model, image, tile, batch_size=3, blend=blend, overlap=overlap)
    with torch.no_grad():
        theirs = sliding_window_inference(
            torch.from_numpy(image[None]), (tile,) * dims, 3,
            lambda x: torch.softmax(model(x), 1), overlap=overlap, mode=blend,
        )[0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_same_net_smaller_than_a_tile():
    model = unet("same")
    image = random_image((1, 10, 7))
    probs = predict_tiled(model, image)  # a 12 x 8 tile, mirrored beyond the image
    padded = np.pad(image, [(0, 0), (0, 2), (0, 1)], mode="reflect")
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(padded[None])), 1)[0, :, :10, :7]
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)


# --- streaming: lazily read input, output on disk ----------------------------------------


def test_memmapped_tiff_in_zarr_out_equal_in_memory(tmp_path):
    model = unet("valid")
    image = random_image((1, 101, 77))
    tifffile.imwrite(tmp_path / "image.tif", image)
    mapped = tifffile.memmap(tmp_path / "image.tif")
    expected = predict_tiled(model, image, tile_shape=60)
    np.testing.assert_array_equal(predict_tiled(model, mapped, tile_shape=60), expected)
    out = zarr.create_array(str(tmp_path / "p.zarr"), shape=expected.shape, chunks=(2, 32, 32),
                            dtype="float32")
    assert predict_tiled(model, mapped, tile_shape=60, out=out) is out
    np.testing.assert_array_equal(out[...], expected)


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-6), ("float16", 1e-3)])
def test_same_net_blends_on_disk(tmp_path, dtype, atol):
    model = unet("same")
    image = random_image((1, 70, 53))
    expected = predict_tiled(model, image, 32)
    merger = ZarrMerger(tmp_path / "p.zarr", expected.shape, chunks=(16, 16), dtype=dtype)
    result = predict_tiled(model, image, 32, out=merger)
    assert result.dtype == dtype and sorted(merger.group.array_keys()) == ["probabilities"]
    np.testing.assert_allclose(result[...], expected, atol=atol)
    # A memmap out is filled band by band.
    out = np.lib.format.open_memmap(tmp_path / "p.npy", "w+", np.float32, expected.shape)
    np.testing.assert_allclose(predict_tiled(model, image, 32, out=out), expected, atol=1e-6)


class PointwiseUNet(UNet):
    """A same-padded U-Net's interface with a per-pixel forward, ``[x, -x]``: nearly free, and
    every tile predicts every pixel alike, so blending must give ``softmax([x, -x])``."""

    def forward(self, x):
        return torch.cat([x, -x], dim=1)


def test_streaming_never_holds_the_whole_image(tmp_path):
    size = 1536
    image = zarr.create_array(str(tmp_path / "in.zarr"), shape=(1, size, size),
                              chunks=(1, 128, 128), dtype="float32")
    for rows in range(0, size, 256):
        image[:, rows : rows + 256] = random_image((1, 256, size), seed=rows)
    merger = ZarrMerger(tmp_path / "out.zarr", (2, size, size), chunks=(128, 128))
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        result = predict_tiled(PointwiseUNet(padding="same"), image, 256, batch_size=1,
                               out=merger)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The whole input alone is 9 MiB, the probabilities 18 MiB; the numpy side (input bands
    # and tiles in flight, finished chunks) takes a few. The merger's band is torch memory,
    # which tracemalloc does not see: test_band_merger measures the process's RSS.
    assert peak < size * size * 4, f"peak {peak / 2**20:.1f} MiB"
    expected = 1 / (1 + np.exp(-2 * image[0, ::7, ::7]))  # softmax([x, -x])[0]
    np.testing.assert_allclose(result[0, ::7, ::7], expected, atol=1e-3)


# --- test-time augmentation --------------------------------------------------------------


def test_tta_is_the_mean_over_the_dihedral_group():
    model = unet("same", in_channels=2, out_channels=3)
    image = random_image((2, 32, 48))  # one tile: each transformed image is predicted whole
    manual = []
    for flip, k in itertools.product((False, True), range(4)):
        x = np.rot90(image[:, :, ::-1] if flip else image, k, axes=(1, 2))
        y = np.rot90(predict_tiled(model, np.ascontiguousarray(x)), -k, axes=(1, 2))
        manual.append(y[:, :, ::-1] if flip else y)
    expected = np.mean(manual, axis=0)
    np.testing.assert_allclose(predict_tiled(model, image, tta=True), expected, atol=1e-5)
    assert np.abs(expected - predict_tiled(model, image)).max() > 1e-3  # TTA changed something


def test_tta_3d_is_the_mean_over_flips():
    model = unet("same", spatial_dims=3, channels=(2, 4))
    image = random_image((1, 8, 12, 16))
    manual = []
    for r in range(4):
        for axes in itertools.combinations((1, 2, 3), r):
            flipped = np.ascontiguousarray(np.flip(image, axes))
            manual.append(np.flip(predict_tiled(model, flipped), axes))
    np.testing.assert_allclose(predict_tiled(model, image, tta=True), np.mean(manual, 0),
                               atol=1e-5)


# --- interface ---------------------------------------------------------------------------


def test_labels_progress_and_training_mode_restored(capsys):
    model = unet("valid").train()
    image = random_image((1, 40, 30))
    labels = predict_labels(model, image, batch_size=2)
    assert model.training
    np.testing.assert_array_equal(labels, predict_tiled(model, image).argmax(0))
    predict_tiled(model, image, tile_shape=60, progress=True)
    assert "MP/s" in capsys.readouterr().err


def test_a_wrapped_model_runs_as_given_in_eval_mode_and_is_restored():
    """A compiled model (real dynamo tracing, the "eager" backend) is not copied: it runs
    itself, in eval mode for the call, and gets its training mode back."""
    model = unet("valid").train()
    compiled = torch.compile(model, backend="eager")
    image = random_image((1, 40, 30))
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    probs = predict_tiled(compiled, image, batch_size=2)
    assert modes and not any(modes)  # it ran, in eval mode
    assert model.training and compiled.training
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(probs, predict_tiled(model, image), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 40, 30), (40, 30), (1, 8, 40, 30)])
def test_wrong_image_shape_is_one_clear_error(shape):
    with pytest.raises(SegunetError, match=r"predicts images of shape \(1, Y, X\)"):
        predict_tiled(unet("valid"), np.zeros(shape, np.float32))


def test_wrong_out_shape_and_options():
    image = np.zeros((1, 40, 30), np.float32)
    with pytest.raises(SegunetError, match="out has shape"):
        predict_tiled(unet("valid"), image, out=np.zeros((2, 40, 31), np.float32))
    with pytest.raises(SegunetError, match="blend"):
        predict_tiled(unet("same"), image, blend="median")
    with pytest.raises(SegunetError, match="overlap"):
        predict_tiled(unet("same"), image, overlap=1.0)


class FailingMerger(InMemoryMerger):
    def add(self, region, probs, weights=None):
        raise OSError("disk full")


def test_thread_errors_reach_the_caller():
    model = unet("valid")
    image = random_image((1, 101, 77))
    with pytest.raises(OSError, match="read failed"):
        predict_tiled(model, FailingImage(image, 5), tile_shape=60, batch_size=1)
    merger = FailingMerger((2, 101, 77), weighted=False)
    assert isinstance(merger, Merger)
    with pytest.raises(OSError, match="disk full"):
        predict_tiled(model, image, tile_shape=60, batch_size=1, out=merger)


# --- where tiles are read from: three sources, one result --------------------------------


@pytest.mark.parametrize(
    "padding, dims, shape, tile, dtype",
    [
        ("same", 2, (1, 70, 53), 32, np.float32),
        ("valid", 2, (2, 101, 77), 60, np.float32),
        ("valid", 2, (1, 15, 12), None, np.float32),  # mirrored far beyond the image
        ("same", 2, (1, 70, 53), 32, np.uint8),  # kept uint8 up to the device
        ("same", 3, (1, 20, 25, 18), 16, np.float32),
        ("valid", 3, (1, 13, 17, 9), 22, np.float32),
    ],
)
def test_resident_and_band_reads_equal_tile_reads(tmp_path, padding, dims, shape, tile, dtype):
    """The image kept whole on the device (here the CPU) and cropped there, and a lazy image
    read in bands of rows, give exactly what cropping each tile on the host gives."""
    channels = (4, 8, 16) if dims == 2 else (2, 4)
    model = unet(padding, spatial_dims=dims, channels=channels, in_channels=shape[0])
    image = random_image(shape)
    if dtype == np.uint8:
        image = (np.abs(image) * 60).astype(np.uint8)
    expected = predict_tiled(model, image, tile, batch_size=3, resident=False)
    resident = predict_tiled(model, image, tile, batch_size=3, resident=True)
    np.testing.assert_allclose(resident, expected, atol=1e-5, rtol=0)
    lazy = zarr.create_array(str(tmp_path / "in.zarr"), shape=shape, dtype=dtype,
                             chunks=(1, *(8 for _ in shape[1:])))
    lazy[...] = image
    np.testing.assert_allclose(predict_tiled(model, lazy, tile, batch_size=3), expected,
                               atol=1e-5, rtol=0)


class CountingImage(FailingImage):
    def __init__(self, array):
        super().__init__(array, reads_ok=10**9)
        self.reads = 0

    def __getitem__(self, index):
        self.reads += 1
        return super().__getitem__(index)


def test_lazy_image_is_read_once_per_row_of_tiles():
    model = unet("same")
    image = random_image((1, 70, 53))
    lazy = CountingImage(image)
    np.testing.assert_array_equal(predict_tiled(model, lazy, 32, batch_size=3),
                                  predict_tiled(model, image, 32, batch_size=3, resident=False))
    rows = len({start[0] for start, _ in plan_tiles((70, 53), (32, 32), (32, 32), "same", 3)})
    assert lazy.reads == rows


def test_a_cpu_batch_holds_no_more_tiles_than_its_activation_budget(monkeypatch):
    """By hand: a tile of the (2, 2)-wide 3D net with 1 input and 2 output channels takes
    4 bytes x 144³ voxels x (12 x 2 + 1 + 2 x 2) maps = 346 MB, so one fits 512 MiB; a 2D
    tile of 600² takes 42 MB, so the 8 asked for fit. Off the CPU the batch is as given."""
    from segunet.infer import predict

    net = UNet(1, 2, 3, (2, 2), padding="valid", norm=None)
    cpu = torch.device("cpu")
    assert predict._batch_on(cpu, net, (144,) * 3, 8) == 1
    assert predict._batch_on(cpu, UNet(1, 2, 2, (2, 2), padding="valid", norm=None),
                             (600, 600), 8) == 8
    assert predict._batch_on(torch.device("cuda"), net, (144,) * 3, 8) == 8
    seen = []
    monkeypatch.setattr(predict, "CPU_BATCH_BYTES", 4 * 36**3 * 29 * 3)
    real = net.forward
    monkeypatch.setattr(net, "forward", lambda x: (seen.append(len(x)), real(x))[1])
    predict_tiled(net, random_image((1, 40, 40, 40)), tile_shape=36, batch_size=8)
    assert max(seen) == 3 and sum(seen) >= 8
