"""Instances from class probabilities: components, watershed, size filter, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest

from segunet.postprocess.instances import (
    foreground_probability,
    instances_from_probabilities,
    relabel_sequential,
    remove_small,
)


def balls(shape, centres, radius):
    """A boolean mask of balls (discs in 2D) of ``radius`` at ``centres``."""
    grid = np.indices(shape)
    mask = np.zeros(shape, bool)
    for c in centres:
        d2 = sum((g - ci) ** 2 for g, ci in zip(grid, c))
        mask |= d2 <= radius**2
    return mask


def probs_of(mask, soft=None):
    """Two-class probabilities: foreground ``soft`` (default 0.9) inside ``mask``, 0.1 out."""
    fg = np.where(mask, 0.9, 0.1).astype(np.float32) if soft is None else soft.astype(np.float32)
    return np.stack([1 - fg, fg])


def touching_discs():
    # Centres 18 apart with radius 10: the discs overlap in a neck a few pixels wide.
    return balls((48, 64), [(24, 20), (24, 38)], 10)


def test_touching_discs_merge_as_components_and_split_by_watershed():
    probs = probs_of(touching_discs())
    comps = instances_from_probabilities(probs, method="components")
    assert comps.dtype == np.int32 and comps.max() == 1
    ws = instances_from_probabilities(probs, method="watershed")
    assert ws.max() == 2
    # Each disc centre carries its own label, and nothing outside the foreground is labelled.
    assert ws[24, 20] != ws[24, 38] and min(ws[24, 20], ws[24, 38]) > 0
    np.testing.assert_array_equal(ws > 0, comps > 0)


def test_watershed_with_h_maxima_seeds_splits_too():
    ws = instances_from_probabilities(probs_of(touching_discs()), method="watershed", h=1.0)
    assert ws.max() == 2


def test_watershed_on_probability_splits_at_the_low_probability_border():
    mask = touching_discs()
    # The net's border: probability dips (but stays above threshold) along the neck.
    soft = np.where(mask, 0.95, 0.05)
    soft[:, 28:30] = np.where(mask[:, 28:30], 0.6, 0.05)
    probs = probs_of(mask, soft)
    assert instances_from_probabilities(probs).max() == 1
    ws = instances_from_probabilities(
        probs, method="watershed", watershed_on="probability", h=0.2
    )
    assert ws.max() == 2 and ws[24, 20] != ws[24, 38]


def test_gap_left_by_border_weights_separates_components():
    mask = touching_discs()
    mask[:, 29] = False  # the one-pixel gap a net trained with border weights leaves
    assert instances_from_probabilities(probs_of(mask)).max() == 2


def test_min_size_removes_specks_and_relabels():
    mask = balls((40, 40), [(20, 20)], 8)
    mask[2, 2] = mask[2, 3] = True  # a 2-pixel speck, labelled first in raster order
    probs = probs_of(mask)
    assert instances_from_probabilities(probs).max() == 2
    out = instances_from_probabilities(probs, min_size=3)
    assert out.max() == 1 and out[20, 20] == 1 and out[2, 2] == 0
    # remove_small_objects semantics: an object of exactly min_size pixels stays.
    assert instances_from_probabilities(probs, min_size=2).max() == 2


def test_components_use_face_connectivity_by_default():
    mask = np.zeros((8, 8), bool)
    mask[2, 2] = mask[3, 3] = True  # touch at a corner only
    probs = probs_of(mask)
    assert instances_from_probabilities(probs).max() == 2
    assert instances_from_probabilities(probs, connectivity=2).max() == 1


def test_3d_touching_balls():
    mask = balls((24, 24, 40), [(12, 12, 12), (12, 12, 26)], 8)
    probs = probs_of(mask)
    assert instances_from_probabilities(probs).max() == 1
    ws = instances_from_probabilities(probs, method="watershed", min_size=10)
    assert ws.shape == mask.shape and ws.max() == 2
    assert ws[12, 12, 12] != ws[12, 12, 26]


def test_unseeded_component_keeps_a_label():
    # A 1-pixel object has distance 1 < h: no h-maximum, but it must not vanish.
    mask = touching_discs()
    mask[2, 60] = True
    ws = instances_from_probabilities(probs_of(mask), method="watershed", h=2.0)
    assert ws[2, 60] > 0 and ws.max() == 3


def test_foreground_probability_sums_classes_and_checks_them():
    probs = np.full((3, 4, 4), 1 / 3, np.float32)
    np.testing.assert_allclose(foreground_probability(probs, (1, 2)), 2 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="foreground_classes"):
        foreground_probability(probs, (3,))
    with pytest.raises(ValueError, match="method"):
        instances_from_probabilities(probs, method="magic")


def test_helpers():
    labels = np.array([[0, 5, 5], [9, 0, 2]])
    np.testing.assert_array_equal(relabel_sequential(labels), [[0, 2, 2], [3, 0, 1]])
    np.testing.assert_array_equal(remove_small(labels, 2), [[0, 5, 5], [0, 0, 0]])
    assert instances_from_probabilities(np.zeros((2, 5, 5), np.float32)).max() == 0
