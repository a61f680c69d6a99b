"""Object sizes: equivalent diameters against scikit-image, and the training quartiles."""

from __future__ import annotations

import numpy as np
from skimage.measure import regionprops

from segunet.data.objectsize import (
    equivalent_diameters,
    object_size_record,
    typical_diameters,
)


def test_equivalent_diameters_match_scikit_image_in_2d_and_3d():
    for shape in ((64, 80), (24, 32, 40)):
        labels = _labels(shape)
        want = [p.equivalent_diameter_area for p in regionprops(labels)]
        np.testing.assert_allclose(equivalent_diameters(labels), want, rtol=1e-9)


def test_objects_cut_by_the_edge_can_be_left_out():
    labels = np.zeros((20, 20), np.int32)
    labels[0:4, 5:9] = 1  # touches the top edge
    labels[8:12, 8:12] = 2
    labels[15:20, 15:18] = 3  # touches the bottom edge
    np.testing.assert_allclose(equivalent_diameters(labels, exclude_border=True),
                               [2 * np.sqrt(16 / np.pi)])
    assert len(equivalent_diameters(labels)) == 3


def test_typical_diameters_are_quartiles_of_per_image_medians():
    # Discs of area pi r^2 drawn exactly as squares of the same area are not needed: the
    # diameters of squares of side s are 2 s / sqrt(pi), by hand.
    images = []
    for sides in ([2, 4, 6], [10], [3, 3, 3, 3, 9], [8, 8]):
        labels = np.zeros((40, 200), np.int32)
        x = 0
        for k, s in enumerate(sides, 1):
            labels[1:1 + s, x:x + s] = k
            x += s + 1
        images.append(labels)
    medians = [4, 10, 3, 8]  # the median side per image
    want = np.percentile([2 * m / np.sqrt(np.pi) for m in medians], [25, 50, 75])
    np.testing.assert_allclose(typical_diameters([*images, None, np.zeros((5, 5), int)]), want)
    assert typical_diameters([np.zeros((4, 4), int)]) is None
    record = object_size_record(tuple(want))
    assert record["diameter"] == round(want[1], 3) and record["range"] == [
        round(want[0], 3), round(want[2], 3)]
    assert object_size_record(None) is None


def _labels(shape):
    rng = np.random.default_rng(0)
    labels = np.zeros(shape, np.int32)
    for k in range(1, 6):
        lo = [int(rng.integers(0, n - 8)) for n in shape]
        size = [int(rng.integers(2, 8)) for _ in shape]
        labels[tuple(slice(a, a + s) for a, s in zip(lo, size))] = k
    return labels
