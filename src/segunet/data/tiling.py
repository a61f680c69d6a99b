"""Overlap-tile geometry (Ronneberger et al. 2015, Fig. 2), as pure index arithmetic.

A valid-padded U-Net predicts a tile smaller than its input, so every output tile needs
context around it; beyond the image border that context is mirror-extrapolated. Any number
of spatial dimensions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def reflect_indices(start: int, size: int, n: int) -> np.ndarray:
    """Indices into an axis of length ``n`` of positions ``start .. start + size - 1`` under
    mirror extrapolation, as ``np.pad(mode="reflect")``: the edge is not repeated
    (``.. 2 1 | 0 1 2 .. n-1 | n-2 ..``), and windows reaching arbitrarily far out reflect
    again and again, a triangle wave of period ``2 * (n - 1)``. For ``n == 1`` all are 0.
    """
    if n < 1:
        raise ValueError(f"cannot reflect into an empty axis (n={n})")
    positions = np.arange(start, start + size)
    if n == 1:
        return np.zeros_like(positions)
    period = 2 * (n - 1)
    i = positions % period  # Python-style modulo: non-negative for negative positions too
    return np.where(i < n, i, period - i)


def crop_reflect(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The window ``[start, start + size)`` of the trailing ``len(start)`` axes of ``array``,
    mirror-extrapolated where it leaves the array; leading axes (channels) are kept whole.

    Equals ``np.pad(array, pad, mode="reflect")`` cropped at the shifted window, for any pad
    large enough, without building the padded array. Only the bounding box of the pixels the
    window needs is sliced from ``array``, so a lazily read array (memmap, zarr, HDF5) is read
    window by window, never whole along an axis.
    """
    if len(start) != len(size) or len(start) > array.ndim:
        raise ValueError(f"start {start} and size {size} do not fit a {array.ndim}D array")
    lead = array.ndim - len(start)
    index: list[slice] = [slice(None)] * lead
    takes: list[tuple[int, np.ndarray]] = []  # (axis, indices into the sliced box)
    for ax, (s, n, dim) in enumerate(zip(start, size, array.shape[lead:])):
        if (s >= 0 and s + n <= dim) or n == 0:
            index.append(slice(max(s, 0), max(s, 0) + n))
            continue
        indices = reflect_indices(s, n, dim)
        low = int(indices.min())
        index.append(slice(low, int(indices.max()) + 1))
        takes.append((lead + ax, indices - low))
    out = array[tuple(index)]
    for axis, indices in takes:
        out = np.take(out, indices, axis=axis)
    return out


def tile_starts(n: int, tile: int, step: int | None = None, align: int = 1) -> list[int]:
    """Start positions of tiles of length ``tile`` that together cover ``[0, n)``.

    Tiles are ``step`` apart (default ``tile``: no overlap) and the last one is shifted back
    to end at ``n``, so tiles overlap only there. Every start is a multiple of ``align``,
    which keeps a U-Net's max-pooling grid (``align = 2**depth``) in the same phase on every
    tile: ``step`` is rounded down to a multiple of ``align`` (to ``align`` at least), and the
    last start is the first multiple of ``align`` at or after ``n - tile``, so **the last tile
    may run past the end by up to** ``align - 1`` **positions**, which the caller must crop
    (or mirror). With ``align=1`` every tile lies inside when ``n >= tile``. If ``n <= tile``
    the single start is 0 and the tile runs past the end.
    """
    step = tile if step is None else step
    if tile < 1 or step < 1 or align < 1:
        raise ValueError(f"tile ({tile}), step ({step}) and align ({align}) must be positive")
    step = max(step // align, 1) * align
    if step > tile:
        raise ValueError(f"step {step} (aligned to {align}) > tile {tile} would leave gaps")
    if n <= tile:
        return [0]
    last = -(-(n - tile) // align) * align  # ceil to a multiple of align
    # Consecutive starts are at most `step <= tile` apart and the last tile reaches n: no gaps.
    return [*range(0, last, step), last]


def tile_grid(
    shape: Sequence[int],
    tile: int | Sequence[int],
    step: int | Sequence[int] | None = None,
    align: int | Sequence[int] = 1,
) -> list[tuple[int, ...]]:
    """Start corners of tiles covering an array of ``shape``: the product over axes of
    :func:`tile_starts`. ``tile``, ``step`` and ``align`` are per axis or one for all."""
    ndim = len(shape)

    def per_axis(value):
        return [value] * ndim if value is None or np.isscalar(value) else list(value)

    axes = zip(shape, per_axis(tile), per_axis(step), per_axis(align))
    return list(itertools.product(*(tile_starts(n, t, s, a) for n, t, s, a in axes)))
