"""The dataset fingerprint of ``segunet plan`` against label images whose objects are known
by construction: their areas, which ones touch, the gaps between them, the border cut."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from helpers import SHARED_DATA

from segunet.errors import SegunetError
from segunet.plan.fingerprint import (
    border_ids,
    describe,
    fingerprint,
    label_kind_found,
    nearest_gaps,
    sample_indices,
    separability,
)


def squares(shape=(48, 64)) -> np.ndarray:
    """Five 8x8 squares: 1 and 2 touch, 3 lies 4 px right of 2, 4 lies 6 px below 3, 5 is cut
    by the left border (8x4) and 10+ px from everything."""
    labels = np.zeros(shape, np.int32)
    labels[4:12, 10:18] = 1
    labels[4:12, 18:26] = 2
    labels[4:12, 30:38] = 3
    labels[18:26, 30:38] = 4
    labels[36:44, 0:4] = 5
    return labels


def test_gaps_by_hand():
    gaps = nearest_gaps(squares(), [1.0, 1.0])
    # 1-2 touch; 2-3: 4 px of background between; 3-4: 6 px; 5: nearest is 4, far away
    assert gaps[1] == 0 and gaps[2] == 0
    assert gaps[3] == pytest.approx(4.0)
    assert gaps[4] == pytest.approx(6.0)
    # 5 (rows 36-43, cols 0-3) to 4 (rows 18-25, cols 30-37): the straight gaps across a
    # Voronoi boundary are at least the row gap 10
    assert gaps[5] >= 10
    # sampling: rows 2x coarser doubles the vertical gap only
    coarse = nearest_gaps(squares(), [2.0, 1.0])
    assert coarse[3] == pytest.approx(4.0) and coarse[4] == pytest.approx(12.0)
    single = np.zeros((10, 10), int)
    single[2:5, 2:5] = 1
    assert math.isinf(nearest_gaps(single, [1, 1])[1])


def test_gap_matches_the_pixel_distance_on_random_boxes():
    """The Voronoi shortcut against the slow definition: the smallest distance between a
    pixel of the object and a pixel of another, less one (the background in between)."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(3)
    labels = np.zeros((60, 60), np.int32)
    for k, (r, c) in enumerate([(r, c) for r in (0, 20, 40) for c in (0, 20, 40)], start=1):
        h, w = rng.integers(4, 12, 2)
        dr, dc = rng.integers(0, 20 - h), rng.integers(0, 20 - w)
        labels[r + dr:r + dr + h, c + dc:c + dc + w] = k
    gaps = nearest_gaps(labels, [1, 1])
    points = {k: np.argwhere(labels == k) for k in range(1, 10)}
    for k in range(1, 10):
        slow = min(cdist(points[k], points[j]).min() for j in points if j != k) - 1
        assert abs(gaps[k] - slow) <= 1.0, (k, gaps[k], slow)


def test_border_ids():
    assert set(border_ids(squares()).tolist()) == {0, 5}


def test_label_kinds():
    binary = [np.array([0, 255]), np.array([0, 255])]
    assert label_kind_found(binary, several_parts=1.0) == ("binary", 255)
    classes = [np.array([0, 1, 2]), np.array([0, 1, 2, 3])]
    assert label_kind_found(classes, several_parts=0.9) == ("classes", None)
    assert label_kind_found(classes, several_parts=0.0) == ("instances", None)
    many = [np.arange(40), np.arange(25)]
    assert label_kind_found(many, several_parts=0.9) == ("instances", None)


def test_separability_is_fishers_criterion():
    rng = np.random.default_rng(0)
    a = rng.normal(2.0, 1.0, (5000, 1))
    b = rng.normal(0.0, 0.5, (5000, 1))
    expected = (a.mean() - b.mean()) ** 2 / (a.var(ddof=1) + b.var(ddof=1))
    assert separability(a, b) == pytest.approx(expected, rel=1e-4)


def test_sample_indices_are_bounded_and_seeded():
    assert sample_indices(5, 10) == [0, 1, 2, 3, 4]
    picked = sample_indices(1000, 50, seed=1)
    assert len(picked) == 50 == len(set(picked)) and picked == sorted(picked)
    assert picked == sample_indices(1000, 50, seed=1) != sample_indices(1000, 50, seed=2)


def write_folder(root, labels_list, images_list):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (labels, image) in enumerate(zip(labels_list, images_list)):
        tifffile.imwrite(root / "images" / f"im{i}.tif", image)
        tifffile.imwrite(root / "masks" / f"im{i}.tif", labels)


def folder_data(root, **extra):
    return {"_target_": "segunet.data.sources.folder", "path": str(root), "images": "images",
            "labels": "masks", "targets": {}, "spatial_dims": 2, **extra}


def test_fingerprint_of_a_folder_by_hand(tmp_path):
    labels = squares()
    rng = np.random.default_rng(0)
    bright = (0.1 + 0.8 * (labels > 0) + 0.02 * rng.normal(size=labels.shape)).astype(np.float32)
    dark = 1 - bright
    write_folder(tmp_path, [labels] * 3, [bright, bright, dark])
    fp = fingerprint(folder_data(tmp_path))
    assert (fp.images, fp.sampled, fp.spatial_dims) == (3, 3, 2)
    assert fp.label_kind == "instances" and fp.label_values == 6
    assert fp.objects == 15 and fp.objects_per_image == 5
    areas = np.array([64, 64, 64, 64, 32] * 3)
    assert fp.area["p50"] == 64 and fp.area["p1"] == pytest.approx(np.percentile(areas, 1))
    assert fp.diameter["p50"] == pytest.approx(2 * math.sqrt(64 / math.pi), abs=0.01)
    assert fp.touching == pytest.approx(2 / 5)
    assert fp.border_cut == pytest.approx(1 / 5)
    assert fp.foreground == pytest.approx(288 / labels.size, abs=1e-4)
    assert fp.gap["p1"] == 0 and fp.gap["p50"] == pytest.approx(4.0)  # 0, 0, 4, 6, far
    assert fp.dark_objects == pytest.approx(1 / 3, abs=1e-3)
    assert fp.polarity_rule == 1.0  # the dark-object image is the bright-background one
    assert fp.channels == [1] and fp.colour_gain is None and fp.pixel_size is None
    assert fp.appearances == {"grey, bright background": 1, "grey, dark background": 2}
    table = describe(fp)
    assert "touching 40.0%" in table and "instances" in table


def test_colour_that_grey_cannot_see(tmp_path):
    """Objects that differ from the background in hue only, at equal luminance: colour
    separates them, grey does not; the fingerprint says so."""
    labels = squares()
    rng = np.random.default_rng(1)
    inside = labels > 0
    image = np.empty((*labels.shape, 3), np.float32)
    # luma weights 0.299 R + 0.587 G: +0.2 R, -0.102 G keeps the grey value
    image[..., 0] = 0.5 + 0.2 * inside
    image[..., 1] = 0.5 - 0.2 * 0.299 / 0.587 * inside
    image[..., 2] = 0.5
    image += 0.01 * rng.normal(size=image.shape).astype(np.float32)
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    write_folder(tmp_path, [labels] * 2, [image] * 2)
    fp = fingerprint(folder_data(tmp_path))
    assert fp.channels == [3] and fp.colour_images == 1.0
    assert fp.colour_gain > 10


def test_binary_labels_become_components(tmp_path):
    labels = (squares() > 0).astype(np.uint8) * 255
    image = (labels > 0).astype(np.float32)
    write_folder(tmp_path, [labels] * 2, [image] * 2)
    fp = fingerprint(folder_data(tmp_path))
    assert (fp.label_kind, fp.foreground_value) == ("binary", 255)
    # squares 1 and 2 touch: one component of 128 px
    assert fp.objects == 8
    assert fp.area["p95"] == pytest.approx(np.percentile([128, 64, 64, 32] * 2, 95))
    assert fp.touching == 0.0


def test_one_image_and_no_objects_are_one_line_errors(tmp_path):
    write_folder(tmp_path / "one", [squares()], [np.ones((48, 64), np.float32)])
    with pytest.raises(SegunetError, match="1 image found; a plan needs at least two"):
        fingerprint(folder_data(tmp_path / "one"))
    empty = np.zeros((48, 64), np.uint8)
    write_folder(tmp_path / "empty", [empty] * 2, [np.ones((48, 64), np.float32)] * 2)
    with pytest.raises(SegunetError, match="hold no objects"):
        fingerprint(folder_data(tmp_path / "empty"))
    with pytest.raises(SegunetError, match="data folder .* not found"):
        fingerprint(folder_data(tmp_path / "missing"))


def test_a_3d_stack_in_physical_units(tmp_path):
    """A (Z, Y, X) volume with voxels 2x coarser along Z: sizes in finest-axis pixels."""
    labels = np.zeros((8, 30, 30), np.uint16)
    labels[2:6, 5:13, 5:13] = 1  # 4 x 8 x 8 voxels = 8 x 8 x 8 in x-pixels
    labels[2:6, 5:13, 17:25] = 2
    image = (labels > 0).astype(np.float32)
    tifffile.imwrite(tmp_path / "v.tif", image)
    tifffile.imwrite(tmp_path / "l.tif", labels)
    data = {"_target_": "segunet.data.sources.tiff_stack", "path": str(tmp_path),
            "volume": "v.tif", "labels": "l.tif", "slices_as": "3d", "pixel_size": [2, 1, 1],
            "targets": {}}
    fp = fingerprint(data)
    assert fp.spatial_dims == 3 and fp.anisotropy == 2
    assert fp.area["p50"] == pytest.approx(512)
    assert fp.diameter["p50"] == pytest.approx((512 / (math.pi / 6)) ** (1 / 3), abs=0.01)
    assert fp.gap["p50"] == pytest.approx(4.0)


def test_the_shared_dsb_set_in_bounded_time():
    root = SHARED_DATA / "dsb2018" / "train"
    if not root.is_dir():
        pytest.skip("../shared/data/dsb2018 absent")
    fp = fingerprint(folder_data(root), limit=12)
    assert fp.sampled == 12 and fp.images > 12
    assert fp.label_kind == "instances"
    assert 5 < fp.diameter["p50"] < 60  # nuclei, tens of px across
    assert 0 < fp.touching < 1
