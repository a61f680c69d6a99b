"""Border weight maps (Ronneberger et al. 2015, Eq. 2) and touching-instance separation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import blobs

from segunet.data import weightmaps
from segunet.data.weightmaps import (
    border_weight_map,
    border_weight_map_direct,
    separate_touching,
)

CASES = {
    "2d touching": dict(instances=blobs((64, 64), 12, seed=0, radius=7)),
    "2d distant": dict(instances=blobs((80, 80), 3, seed=1, radius=3)),
    "2d separated": dict(instances=separate_touching(blobs((64, 48), 10, seed=2, radius=8))),
    "2d near border": dict(instances=blobs((20, 90), 6, seed=3, radius=4)),
    "3d": dict(instances=blobs((16, 24, 24), 8, seed=4, radius=5)),
    "2d spacing": dict(instances=blobs((48, 64), 9, seed=5, radius=6), spacing=(1.0, 0.4)),
    "3d spacing": dict(instances=blobs((12, 24, 20), 7, seed=6, radius=5),
                       spacing=(2.5, 1.0, 0.8)),
    "3d thick slices": dict(instances=blobs((10, 30, 28), 9, seed=14, radius=6),
                            spacing=(3.0, 0.7, 0.7)),
    "3d large": dict(instances=blobs((40, 44, 36), 14, seed=15, radius=7), w0=20.0, sigma=6.0),
    "valid mask": dict(
        instances=blobs((64, 64), 10, seed=7, radius=7),
        valid=np.random.default_rng(7).random((64, 64)) < 0.5,
    ),
    "small w0 sigma": dict(instances=blobs((64, 64), 12, seed=8, radius=6), w0=3.0, sigma=2.0),
    "large w0 sigma": dict(instances=blobs((64, 64), 12, seed=9, radius=6), w0=50.0, sigma=12.0),
    "no class weights": dict(instances=blobs((64, 64), 12, seed=10, radius=6),
                             class_weights=None),
    "sparse labels": dict(instances=blobs((40, 40), 5, seed=11, radius=6) * 7),
    "no instance": dict(instances=np.zeros((20, 30), np.int32)),
    "one instance": dict(instances=blobs((40, 40), 1, seed=12, radius=8)),
    "two instances": dict(instances=blobs((40, 40), 2, seed=13, radius=8)),
    "all foreground": dict(instances=np.ones((10, 12), np.int64)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fast_equals_direct(case):
    fast = border_weight_map(**case)
    direct = border_weight_map_direct(**case)
    assert fast.dtype == np.float32 and fast.shape == case["instances"].shape
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-4)


@pytest.mark.parametrize("opencv", [True, False], ids=["opencv", "scipy"])
def test_fast_equals_direct_random(opencv, monkeypatch):
    """Random crowded and sparse scenes, isotropic or not; with OpenCV's distance transform
    (2D isotropic windows) and with SciPy's alone."""
    if not opencv:
        monkeypatch.setattr(weightmaps, "_opencv", lambda: None)
    rng = np.random.default_rng(42)
    for trial in range(8):
        ndim = 3 if trial % 4 == 3 else 2
        shape = tuple(rng.integers(10, 28 if ndim == 3 else 90, ndim))
        instances = blobs(shape, int(rng.integers(2, 25)), seed=trial, radius=rng.uniform(2, 9))
        if trial % 2:
            instances = separate_touching(instances)
        spacing = None if trial % 3 else tuple(rng.uniform(0.5, 2.0, ndim))
        kwargs = dict(w0=float(rng.uniform(2, 30)), sigma=float(rng.uniform(1.5, 8)))
        fast = border_weight_map(instances, spacing=spacing, **kwargs)
        direct = border_weight_map_direct(instances, spacing=spacing, **kwargs)
        np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-4, err_msg=f"trial {trial}")


def test_huge_and_sparse_labels():
    instances = blobs((50, 60), 8, seed=30, radius=6).astype(np.int64)
    huge = np.where(instances > 0, instances * 123_456_789 + 10**12, 0)
    # Another label order merges distances in another order: float32 rounding only.
    np.testing.assert_allclose(border_weight_map(huge), border_weight_map(instances), atol=1e-5)


def test_cost_grows_with_pixels_not_instances():
    """Twice as many (smaller) instances on the same image must not cost twice the time of
    the direct formula; a weak, timing-free proxy: the windows stay a few image areas."""
    calls = []
    original = weightmaps._edt

    def counting(outside, *args):
        calls.append(outside.size)
        return original(outside, *args)

    for n in (20, 80):
        calls.clear()
        instances = blobs((200, 200), n, seed=n, radius=60 / np.sqrt(n))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(weightmaps, "_edt", counting)
            border_weight_map(instances)
        assert len(calls) <= n and sum(calls) < 8 * instances.size


def test_hand_computed_two_pixels_on_a_line():
    # x:          0  1  2  3  4  5  6  7  8
    # instance:   .  1  .  .  .  .  2  .  .
    instances = np.zeros((1, 9), np.int32)
    instances[0, 1], instances[0, 6] = 1, 2
    w0, sigma = 10.0, 5.0

    def border(d1, d2):
        return w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))

    # (d1, d2) at each pixel; None on the instances, which get no border term.
    distances = [(1, 6), None, (1, 4), (2, 3), (3, 2), (4, 1), None, (1, 6), (2, 7)]
    expected = [1 + (0 if d is None else border(*d)) for d in distances]
    for weight_map in (border_weight_map, border_weight_map_direct):
        w = weight_map(instances, w0, sigma, class_weights=None)
        np.testing.assert_allclose(w[0], expected, rtol=1e-6)

    # Twice the spacing along x doubles the distances; balancing: N / (2 N_c).
    w = border_weight_map(instances, w0, sigma, spacing=(1.0, 2.0))
    assert w[0, 3] == pytest.approx(9 / 14 + border(4, 6), rel=1e-6)
    assert w[0, 1] == w[0, 6] == pytest.approx(9 / 4)


def test_balanced_classes_get_equal_total_weight():
    instances = blobs((50, 70), 9, seed=20, radius=6)
    valid = np.random.default_rng(20).random(instances.shape) < 0.7
    for mask in (None, valid):
        w = border_weight_map(instances, w0=0.0, valid=mask)  # w0 = 0: only w_c is left
        m = np.ones(instances.shape, bool) if mask is None else mask
        fg, bg = w[(instances > 0) & m].sum(), w[(instances == 0) & m].sum()
        assert fg == pytest.approx(bg, rel=1e-5)
        assert fg + bg == pytest.approx(m.sum(), rel=1e-5)
        assert np.all(w[~m] == 0)
    # The border term adds to background pixels only.
    w = border_weight_map(instances, valid=valid)
    wc = border_weight_map(instances, w0=0.0, valid=valid)
    assert np.all(w[instances > 0] == wc[instances > 0])
    assert np.all(w[~valid] == 0) and np.all(w >= wc)


def test_single_class_images_have_unit_weight():
    assert np.all(border_weight_map(np.zeros((8, 8), np.int32)) == 1)
    assert np.all(border_weight_map(np.full((4, 5, 6), 3, np.int32)) == 1)
    # One instance: no second-nearest instance, so no border term.
    one = blobs((30, 30), 1, seed=0, radius=5)
    np.testing.assert_array_equal(border_weight_map(one), border_weight_map(one, w0=0))


def test_bad_arguments():
    with pytest.raises(TypeError):
        border_weight_map(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        border_weight_map(np.zeros((4, 4), int), spacing=(1.0,))
    with pytest.raises(ValueError):
        border_weight_map(np.zeros((4, 4), int), class_weights="median")


@pytest.mark.parametrize("kwargs", [
    dict(w0=float("nan")), dict(w0=-3.0), dict(w0=1e39), dict(sigma=float("nan")),
    dict(sigma=float("inf")), dict(sigma=0.0), dict(spacing=(-1.0, 1.0)),
    dict(spacing=(0.0, 1.0)), dict(spacing=(float("nan"), 1.0)),
], ids=str)
def test_values_without_a_meaningful_map_are_refused(kwargs):
    """Today these give a map of NaN or inf, or silently drop the border term."""
    instances = blobs((30, 30), 5, seed=3, radius=6)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        border_weight_map(instances, **kwargs)


def test_negative_ids_are_refused_not_taken_for_background():
    instances = blobs((30, 30), 5, seed=3, radius=6)
    with pytest.raises(ValueError, match=">= 0"):
        border_weight_map(-instances)


def lens_boxes_by_pairs(lo, hi, sampling, reach, shape):
    """The lens-box bound of every instance, pair by pair (the reference for the fast one):
    for each pair of boxes within ``reach``, ``max(a0 - r, b0 - r, (a0 + b0 - r) / 2) <= t
    <= min(a1 + r, b1 + r, (a1 + b1 + r) / 2)`` per axis, ``r = reach / s``."""
    n, ndim = lo.shape
    first, last = np.full((n, ndim), -1), np.full((n, ndim), -1)
    for k in range(n):
        boxes = []
        for j in range(n):
            gaps = [max(lo[j, i] - hi[k, i], lo[k, i] - hi[j, i], 0) * sampling[i]
                    for i in range(ndim)]
            if j != k and sum(g * g for g in gaps) <= reach**2:
                r = reach / np.asarray(sampling)
                boxes.append((np.maximum(np.maximum(lo[k], lo[j]) - r, (lo[k] + lo[j] - r) / 2),
                              np.minimum(np.minimum(hi[k], hi[j]) + r, (hi[k] + hi[j] + r) / 2)))
        if boxes:
            top = np.asarray(shape) - 1
            first[k] = np.clip(np.ceil(np.min([b[0] for b in boxes], axis=0) - 1e-9), 0, top)
            last[k] = np.clip(np.floor(np.max([b[1] for b in boxes], axis=0) + 1e-9), 0, top)
    return first, last


def test_lens_boxes_equal_the_pairwise_bound():
    """Found among near instances only (their cost no longer grows with the square of
    their number): the same windows as every pair gives, on crowded and sparse scenes, with
    one instance spanning the image and some sharing a box corner."""
    rng = np.random.default_rng(5)
    for trial in range(12):
        ndim = 3 if trial % 4 == 3 else 2
        shape = tuple(rng.integers(8, 24 if ndim == 3 else 120, ndim))
        instances = blobs(shape, int(rng.integers(2, 70)), seed=trial, radius=rng.uniform(0.5, 9))
        if trial % 3 == 0:
            instances[(0,) * (ndim - 1)] = instances.max() + 1  # a line across the image
        _, lo, hi = weightmaps._instance_boxes(instances)
        sampling = rng.uniform(0.4, 2.5, ndim) if trial % 2 else np.ones(ndim)
        reach = float(rng.uniform(1, 40))
        got = weightmaps._lens_boxes(lo, hi, sampling, reach, instances.shape)
        want = lens_boxes_by_pairs(lo, hi, sampling, reach, instances.shape)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"trial {trial}")
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"trial {trial}")


def test_crowd_of_one_pixel_cells_equals_direct():
    """The issue's case in small: a cell on every other pixel, most of them touching none."""
    instances = np.zeros((40, 44), np.int32)
    instances[::2, ::2] = np.arange(1, 20 * 22 + 1).reshape(20, 22)
    fast, direct = border_weight_map(instances), border_weight_map_direct(instances)
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-4)


def separate_touching_slow(instances: np.ndarray) -> np.ndarray:
    out = instances.copy()
    offsets = list(itertools.product((-1, 0, 1), repeat=instances.ndim))
    for p in np.ndindex(instances.shape):
        for off in offsets:
            q = tuple(np.add(p, off))
            if all(0 <= i < n for i, n in zip(q, instances.shape)) and instances[q] not in (
                0,
                instances[p],
            ):
                out[p] = 0
    return out


def test_separate_touching_by_hand():
    a = np.zeros((10, 12), np.int32)
    a[1:4, 1:4] = 1  # two squares side by side ...
    a[1:4, 4:7] = 2
    a[6:8, 1:3] = 3  # ... two touching at one corner only ...
    a[8:10, 3:5] = 4
    a[6:10, 9:12] = 5  # ... and one alone, in the image's corner
    expected = a.copy()
    expected[1:4, 3:5] = 0
    expected[7, 2] = expected[8, 3] = 0
    np.testing.assert_array_equal(separate_touching(a), expected)
    np.testing.assert_array_equal(separate_touching(a), separate_touching_slow(a))


@pytest.mark.parametrize("shape", [(24, 31), (7, 9, 11)])
@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.int64])
def test_separate_touching_matches_pixel_loop(shape, dtype):
    rng = np.random.default_rng(len(shape))
    noisy = rng.integers(0, 5, shape) * (rng.random(shape) < 0.6)
    for instances in (noisy, blobs(shape, 6, seed=1, radius=4)):
        instances = instances.astype(dtype)
        out = separate_touching(instances)
        assert out.dtype == instances.dtype
        np.testing.assert_array_equal(out, separate_touching_slow(instances))
