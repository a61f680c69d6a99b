"""Overlap-tile geometry: mirror-extrapolated crops and tile grids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from segunet.data.tiling import crop_reflect, reflect_indices, tile_grid, tile_starts


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_reflect_indices_match_np_pad(n):
    pad = 5 * n + 3  # several reflections deep on either side
    padded = np.pad(np.arange(n), pad, mode="reflect")
    for start in range(-pad, n + 1):
        for size in (0, 1, n, 2 * n + 1):
            if start + size <= n + pad:
                expected = padded[start + pad : start + pad + size]
                np.testing.assert_array_equal(reflect_indices(start, size, n), expected)


def reference_crop(array, start, size):
    lead = array.ndim - len(start)
    pad = max(max(-s, s + n - d, 0) for s, n, d in zip(start, size, array.shape[lead:]))
    padded = np.pad(array, [(0, 0)] * lead + [(pad, pad)] * len(start), mode="reflect")
    window = tuple(slice(s + pad, s + pad + n) for s, n in zip(start, size))
    return padded[(..., *window)]


@pytest.mark.parametrize(
    "shape, lead",
    [((9,), 0), ((6, 11), 0), ((2, 6, 11), 1), ((5, 4, 7), 0), ((3, 5, 4, 7), 1), ((1, 8), 0)],
)
def test_crop_reflect_matches_np_pad(shape, lead):
    rng = np.random.default_rng(len(shape) + lead)
    array = rng.random(shape)
    spatial = shape[lead:]
    for _ in range(200):
        size = [int(rng.integers(1, 3 * d + 2)) for d in spatial]
        start = [int(rng.integers(-3 * d - 2, 3 * d + 2)) for d in spatial]
        out = crop_reflect(array, start, size)
        assert out.shape == (*shape[:lead], *size)
        np.testing.assert_array_equal(out, reference_crop(array, start, size))


def test_crop_reflect_inside_is_a_slice():
    array = np.arange(2 * 6 * 8).reshape(2, 6, 8)
    out = crop_reflect(array, (1, 2), (4, 5))
    np.testing.assert_array_equal(out, array[:, 1:5, 2:7])
    assert np.shares_memory(out, array)


def test_crop_reflect_rejects_mismatched_window():
    with pytest.raises(ValueError):
        crop_reflect(np.zeros((4, 4)), (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError):
        crop_reflect(np.zeros((4, 4)), (0, 0), (1,))


def test_tile_starts_examples():
    assert tile_starts(10, 4) == [0, 4, 6]
    assert tile_starts(8, 4) == [0, 4]
    assert tile_starts(10, 4, step=2) == [0, 2, 4, 6]
    assert tile_starts(3, 5) == [0]
    assert tile_starts(5, 5) == [0]
    # Aligned to 4: the last tile starts at 12 and runs 1 past the end (19).
    assert tile_starts(19, 8, align=4) == [0, 8, 12]
    # The paper's 388 output tile, aligned to a 4-level U-Net's 16: step 388 becomes 384.
    assert tile_starts(1000, 388, align=16) == [0, 384, 624]


def test_tile_starts_cover_every_position():
    for n, tile, align in itertools.product(range(1, 40), range(1, 12), (1, 2, 3, 4, 8)):
        if align > tile:
            continue
        for step in (None, *range(1, tile + 1)):
            starts = tile_starts(n, tile, step, align)
            covered = np.zeros(n + tile, bool)
            for s in starts:
                covered[s : s + tile] = True
            assert covered[:n].all(), (n, tile, step, align, starts)
            assert starts == sorted(set(starts)) and starts[0] == 0
            assert all(s % align == 0 for s in starts)
            # Tiles run past the end only if the axis is shorter than a tile, or by < align.
            assert starts[-1] + tile < n + align or (n <= tile and starts == [0])


def test_tile_starts_rejects_gaps():
    with pytest.raises(ValueError):
        tile_starts(20, 4, step=5)
    with pytest.raises(ValueError):
        tile_starts(20, 4, align=8)
    with pytest.raises(ValueError):
        tile_starts(20, 0)


@pytest.mark.parametrize("shape", [(30, 17), (9, 20, 13)])
def test_tile_grid_covers_array(shape):
    tile, align = (8, 6, 5)[: len(shape)], 2
    grid = tile_grid(shape, tile, step=4, align=align)
    covered = np.zeros(tuple(n + t for n, t in zip(shape, tile)), bool)
    for start in grid:
        assert len(start) == len(shape)
        assert all(s % align == 0 and 0 <= s < n for s, n in zip(start, shape))
        covered[tuple(slice(s, s + t) for s, t in zip(start, tile))] = True
    assert covered[tuple(slice(0, n) for n in shape)].all()
    per_axis = [tile_starts(n, t, 4, align) for n, t in zip(shape, tile)]
    assert grid == list(itertools.product(*per_axis))
