"""Training targets and their decodings: hand-drawn labels, exact round trips, gap growth."""

from __future__ import annotations

import numpy as np
import pytest

from segunet.data.labels import volumes_from_instances
from segunet.data.targets import boundary_classes
from segunet.data.weightmaps import separate_touching
from segunet.eval.matching import contingency
from segunet.postprocess.decoding import PostProcess, decode
from segunet.postprocess.instances import grow_into_gaps, instances_from_boundary

# A touching pair (1 | 2, sharing a vertical border), an isolated object (3), an object cut
# by the image edge (4). Drawn by hand, as is the expected boundary map below.
LABELS = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4],
    [0, 1, 1, 1, 2, 2, 2, 0, 0, 4, 4],
    [0, 1, 1, 1, 2, 2, 2, 0, 0, 4, 4],
    [0, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 3, 3, 3, 0, 0, 0],
    [0, 0, 0, 0, 0, 3, 3, 3, 0, 0, 0],
    [0, 0, 0, 0, 0, 3, 3, 3, 0, 0, 0],
])
B, I = 2, 1
EXPECTED = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, B, I],  # 4 touches the top and right edges: not boundary
    [0, B, B, B, B, B, B, 0, 0, B, I],
    [0, B, I, B, B, I, B, 0, 0, B, B],
    [0, B, B, B, B, B, B, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, B, B, B, 0, 0, 0],
    [0, 0, 0, 0, 0, B, I, B, 0, 0, 0],
    [0, 0, 0, 0, 0, B, I, B, 0, 0, 0],  # 3 touches the bottom edge
])


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering: every object of one is exactly one object of the other."""
    t = contingency(a, b)
    return bool((a == 0).sum() == (b == 0).sum() and len(t.counts) == len(t.gt_labels)
                == len(t.pred_labels) and np.array_equal(np.sort(t.counts),
                                                         np.sort(t.gt_sizes)))


def one_hot(classes: np.ndarray, k: int) -> np.ndarray:
    return np.stack([(classes == c).astype(np.float32) for c in range(k)])


def test_boundary_classes_by_hand():
    np.testing.assert_array_equal(boundary_classes(LABELS), EXPECTED)


def test_boundary_target_volume():
    (vol,) = volumes_from_instances(["x"], [np.zeros(LABELS.shape, np.float32)], [LABELS],
                                    target="boundary", w0=0)
    np.testing.assert_array_equal(vol.label, EXPECTED)
    np.testing.assert_array_equal(vol.instances, LABELS)
    # w0 = 0: the class balance alone, N / (3 N_c) per class, by hand.
    counts = np.bincount(EXPECTED.ravel(), minlength=3)
    np.testing.assert_allclose(vol.weight, (EXPECTED.size / (3 * counts))[EXPECTED], rtol=1e-6)


def test_the_border_term_rises_on_boundaries_where_objects_touch():
    labels = np.zeros((30, 60), int)
    labels[5:15, 5:15], labels[5:15, 15:25] = 1, 2  # touching
    labels[5:15, 45:55] = 3  # 20 px away from the others
    (vol,) = volumes_from_instances(["x"], [np.zeros(labels.shape, np.float32)], [labels],
                                    target="boundary", w0=10, sigma=5)
    base = vol.weight[10, 10]  # interior: the class weight alone
    touching, lone = vol.weight[10, 14], vol.weight[10, 45]  # boundary pixels
    boundary_class = vol.weight[vol.label == 2].min()
    # d1 = 1 (to the interior of 1), d2 = 2 (to that of 2): w0 exp(-9 / 50) on top.
    assert touching == pytest.approx(boundary_class + 10 * np.exp(-9 / 50), rel=1e-4)
    assert lone == pytest.approx(boundary_class, abs=0.01)
    assert base < boundary_class


@pytest.mark.parametrize("dims", [2, 3])
def test_a_perfect_boundary_target_decodes_to_the_exact_instances(dims):
    labels = LABELS if dims == 2 else np.stack([LABELS * (z < 3) for z in range(5)])
    if dims == 3:  # a third object in depth: slices 3..4 hold another one
        labels[3:, 1:4, 1:4] = 9
    probs = one_hot(boundary_classes(labels), 3)
    decoded = instances_from_boundary(probs[1], probs[2])
    assert same_objects(decoded, labels)
    assert same_objects(decode(probs, "boundary"), labels)


def test_a_perfect_foreground_target_decodes_to_its_objects():
    """Isolated objects come back exactly; touching ones apart, and whole once the gap
    between them is grown back."""
    labels = np.zeros((30, 60), int)
    labels[5:15, 5:15], labels[5:15, 15:25] = 1, 2  # touching
    labels[12:25, 3:12] = 5  # touching 1 from below, with an L-shaped contact
    labels[5:15, 45:55] = 3
    separated = separate_touching(labels)
    probs = one_hot(separated > 0, 2)
    plain = decode(probs, "foreground")
    assert same_objects(plain, separated)
    grown = decode(probs, "foreground", PostProcess(grow=1))
    assert same_objects(grown, labels)


def test_gap_growth_never_merges_objects():
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = rng.integers(0, 6, size=(20, 20)) * (rng.random((20, 20)) < 0.4)
        for width in (1, 2, 3):
            grown = grow_into_gaps(labels, width)
            assert set(np.unique(grown)) - {0} == set(np.unique(labels)) - {0}
            inside = labels > 0
            np.testing.assert_array_equal(grown[inside], labels[inside])  # nobody's pixels lost
            # Every pixel given away lies within `width` of an object of its new label.
            new = (grown > 0) & ~inside
            for y, x in zip(*np.nonzero(new)):
                window = labels[max(y - width, 0):y + width + 1, max(x - width, 0):x + width + 1]
                assert grown[y, x] in window


def test_grow_fills_only_between_two_objects():
    labels = np.zeros((7, 12), int)
    labels[1:6, 1:5] = 1
    labels[1:6, 7:11] = 2
    grown = grow_into_gaps(labels, 1)
    np.testing.assert_array_equal(grown[1:6, 5], [1] * 5)  # the gap splits between them
    np.testing.assert_array_equal(grown[1:6, 6], [2] * 5)
    outside = [c for c in range(12) if c not in (5, 6)]
    np.testing.assert_array_equal(grown[:, outside], labels[:, outside])  # nothing elsewhere
