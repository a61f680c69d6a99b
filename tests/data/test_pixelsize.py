"""Pixel sizes: read from what other tools write (tifffile's OME and ImageJ writers, h5py,
ome-zarr's writer), written with outputs, checked; and the resampling that uses them,
against scikit-image's resize."""

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from skimage.transform import resize

from segunet.checkpoint import pixel_size_of
from segunet.data.io import read_array, read_pixel_size, write_array
from segunet.data.pixelsize import check_pixel_size
from segunet.errors import SegunetError
from segunet.infer.resample import MAX_FACTOR, Resampled, grid_for, nearest

IMAGE = np.arange(4 * 30 * 40, dtype=np.uint16).reshape(4, 30, 40)


def test_ome_tiff_sizes_in_their_units(tmp_path):
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, IMAGE, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.25,
        "PhysicalSizeZ": 1.5,  # OME's default unit: um
    })
    assert read_pixel_size(path) == pytest.approx((1.5, 0.25, 0.25))
    tifffile.imwrite(path, IMAGE[0], ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                          "PhysicalSizeY": 0.4})
    assert read_pixel_size(path) == pytest.approx((0.4, 0.5))


def test_imagej_resolution_and_spacing(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, IMAGE, imagej=True, resolution=(1 / 0.2, 1 / 0.3),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"})
    assert read_pixel_size(path) == pytest.approx((2.0, 0.3, 0.2))
    tifffile.imwrite(path, IMAGE[0], imagej=True, resolution=(2.0, 2.0))  # no unit: pixels
    assert read_pixel_size(path) is None


@pytest.mark.parametrize(("unit", "expected"), [
    ("CENTIMETER", (0.5, 0.25)), ("INCH", None), ("NONE", None),
])
def test_resolution_tags_count_only_in_a_length_unit(tmp_path, unit, expected):
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, IMAGE[0], resolution=(1e4 / 0.25, 1e4 / 0.5), resolutionunit=unit)
    found = read_pixel_size(path)
    assert found == (pytest.approx(expected) if expected else None)


def test_hdf5_element_size_um(tmp_path):
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=IMAGE).attrs["element_size_um"] = [1.0, 0.5, 0.5]
        f.create_dataset("labels", data=IMAGE)
    assert read_pixel_size(path, "raw") == (1.0, 0.5, 0.5)
    assert read_pixel_size(f"{path}:labels") is None


@pytest.mark.parametrize("name", ["out.tif", "out.h5"])
def test_written_outputs_carry_the_pixel_size(tmp_path, name):
    path = write_array(tmp_path / name, IMAGE, pixel_size=(2.0, 0.5, 0.25))
    assert read_pixel_size(path) == pytest.approx((2.0, 0.5, 0.25))
    if name.endswith(".tif"):  # what any TIFF reader sees: pixels per centimeter
        with tifffile.TiffFile(path) as tif:
            assert tif.pages.first.resolution == pytest.approx((1e4 / 0.25, 1e4 / 0.5))


def ome_zarr_image(path, data, scale, unit="nanometer"):
    """An OME-Zarr image written by ome-zarr itself: (t, c, z, y, x), two levels."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscale

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            *({"name": n, "type": "space", "unit": unit} for n in "zyx")]
    levels = [data, data[..., ::2, ::2]]
    transforms = [[{"type": "scale", "scale": [1, 1, scale[0], scale[1] * f, scale[2] * f]}]
                  for f in (1, 2)]
    with pytest.warns(DeprecationWarning):  # coordinate_transformations: the explicit way
        write_multiscale(levels, group, fmt=FormatV04(), axes=axes,
                         coordinate_transformations=transforms)
    return path


def test_ome_zarr_level_is_read_with_its_pixel_size_and_without_unit_axes(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (1, 1, 1, 30, 40), dtype=np.uint8)
    path = ome_zarr_image(tmp_path / "img.ome.zarr", data, (1000, 200, 100))
    np.testing.assert_array_equal(read_array(path), data[0, :, 0])  # (c, y, x)
    # ome-zarr names the levels s0, s1 (any path the metadata lists is a level).
    np.testing.assert_array_equal(read_array(f"{path}:s1"), data[0, :, 0, ::2, ::2])
    assert read_pixel_size(path) == pytest.approx((0.2, 0.1))  # z had length 1: dropped
    assert read_pixel_size(path, "s1") == pytest.approx((0.4, 0.2))
    with pytest.raises(SegunetError, match="no resolution level '5'.*levels are s0, s1"):
        read_array(f"{path}:5")


def test_ome_zarr_without_units_has_no_pixel_size(tmp_path):
    data = np.zeros((1, 1, 1, 8, 8), np.uint8)
    path = ome_zarr_image(tmp_path / "img.zarr", data, (1, 1, 1), unit=None)
    assert read_pixel_size(path) is None


def test_ome_zarr_path_without_multiscales_is_one_line(tmp_path):
    path = tmp_path / "plain.ome.zarr"
    zarr.open_group(str(path), mode="w").create_array("0", data=np.zeros((4, 4), np.uint8))
    with pytest.raises(SegunetError) as info:
        read_array(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "multiscales" in message


@pytest.mark.parametrize(("value", "match"), [
    ([0.5, 0.0], "positive number of micrometers, not 0.0"),
    ([-1.0], "not -1.0"),
    ([0.5, 0.5, 0.5], "3 sizes for 2 spatial axes"),
])
def test_bad_pixel_sizes_are_one_line_naming_the_key(value, match):
    with pytest.raises(SegunetError, match=match) as info:
        check_pixel_size(value, 2, "data.pixel_size")
    assert "\n" not in str(info.value) and str(info.value).startswith("data.pixel_size=")


def test_one_size_is_for_every_axis():
    assert check_pixel_size([0.5], 3, "k") == (0.5, 0.5, 0.5)


def test_pixel_size_of_a_checkpoint_or_its_config():
    assert pixel_size_of({"pixel_size": {"size": [0.5, 0.25], "unit": "micrometer"}}) == (
        [0.5, 0.25], "micrometer")
    assert pixel_size_of({"config": {"data": {"pixel_size": [2, 1]}}}) == ([2.0, 1.0],
                                                                           "micrometer")
    assert pixel_size_of({"pixel_size": None, "config": {"data": {}}}) is None


# --- resampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(74, 106), (19, 27), (111, 20)])
def test_resampled_windows_equal_skimage_resize_of_the_whole(shape):
    """Up, down (with skimage's anti-aliasing) and mixed; any window, lazily."""
    image = np.random.default_rng(1).random((2, 37, 53)).astype(np.float32)
    reference = np.stack([resize(c, shape, order=1, mode="edge", anti_aliasing=True)
                          for c in image])
    view = Resampled(image, shape)
    assert view.shape == (2, *shape)
    np.testing.assert_allclose(view[...], reference, atol=1e-5)
    window = (slice(None), slice(3, shape[0] - 2), slice(5, shape[1] - 1))
    np.testing.assert_allclose(view[window], reference[window], atol=1e-5)
    np.testing.assert_allclose(view[[1], 2:4], reference[[1], 2:4], atol=1e-5)


class CountingReads:
    """An array that records the windows read from it."""

    def __init__(self, array):
        self.array, self.shape, self.reads = array, array.shape, []

    def __getitem__(self, index):
        self.reads.append(index)
        return self.array[index]


def test_a_resampled_window_reads_only_its_neighbourhood():
    source = CountingReads(np.zeros((1, 400, 400), np.float32))
    Resampled(source, (100, 100))[:, 50:60, :]  # 4x down: sigma 1.5, reach 7 px
    _, rows, cols = source.reads[0]
    assert rows.start >= 200 - 12 and rows.stop <= 240 + 12 and cols == slice(0, 400)


def test_nearest_keeps_ids_and_takes_the_pixel_under_each_centre():
    labels = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(nearest(labels, (6, 8)), np.repeat(np.repeat(labels, 2, 0), 2, 1))
    np.testing.assert_array_equal(nearest(np.arange(8).reshape(2, 4), (1, 2)), [[5, 7]])


def test_grid_resamples_beyond_the_tolerance_only_and_refuses_beyond_8x():
    assert not grid_for((100, 100), (0.51, 0.5), (0.5, 0.5), True, "a.tif").resampled
    grid = grid_for((100, 100), (1.0, 1.0), (0.5, 0.5), True, "a.tif")
    assert grid.model_shape == (200, 200) and grid.pixel_size == (1.0, 1.0)
    assert not grid_for((100, 100), (1.0, 1.0), (0.5, 0.5), False, "a.tif").resampled
    assert not grid_for((100, 100), None, (0.5, 0.5), True, "a.tif").resampled
    assert grid_for((64, 64), (0.5,) * 2, (0.5 * MAX_FACTOR,) * 2, True, "a").model_shape == (
        8, 8)
    for sizes in ((0.5, 4.5), (0.05, 0.5)):
        with pytest.raises(SegunetError, match=r"a.tif: .*beyond the 8x") as info:
            grid_for((100, 100), sizes, (0.5, 0.5), True, "a.tif")
        assert "\n" not in str(info.value)
