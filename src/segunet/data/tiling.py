"""Overlap-tile geometry (Ronneberger et al. 2015, Fig. 2), as pure index arithmetic.

A valid-padded U-Net predicts a tile smaller than its input, so every output tile needs
context around it; beyond the image border that context is mirror-extrapolated. Any number
of spatial dimensions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np

from segunet.errors import SegunetError

if TYPE_CHECKING:
    from torch import nn


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


def blocks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# --- tile sizing and blending --------------------------------------------------------------

Blend = Literal["gaussian", "constant"]


#: Default input tile edge when none is given: large enough to keep a GPU busy and the
#: context overhead of a valid net small, small enough for the memory of a consumer GPU.
DEFAULT_TILE = {2: 512, 3: 128}


def tile_shapes(
    net: nn.Module, spatial_shape: Sequence[int], tile_shape: int | Sequence[int] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The network's input tile and the output tile it predicts.

    A given ``tile_shape`` is rounded down to a size the net takes (never below the smallest
    one). By default an axis gets the smallest valid tile that covers the image plus the
    valid net's context in one tile, up to :data:`DEFAULT_TILE`. Either way a valid net's
    tile then grows where needed to the smallest whose output spans one step of the pooling
    grid (see :func:`covering_tile`).
    """
    dims = net.spatial_dims
    whole = whole_image_tile(net, spatial_shape)
    if tile_shape is None:
        tile = net.valid_input_shape([min(w, DEFAULT_TILE[dims]) for w in whole])
    else:
        wanted = [tile_shape] * dims if np.isscalar(tile_shape) else list(tile_shape)
        if len(wanted) != dims:
            raise SegunetError(
                f"tile_shape {tuple(wanted)} has {len(wanted)} axes but the model is {dims}D: "
                f"give {dims} sizes or one for all"
            )
        # No larger than one tile for the whole image: a larger one computes only padding.
        wanted = [min(int(w), n) for w, n in zip(wanted, whole)]
        tile = tuple(
            lower if lower is not None else upper
            for lower, upper in net.nearest_valid_sizes(wanted)
        )
    tile = covering_tile(net, tile)
    return tuple(tile), net.output_shape(tile)


def whole_image_tile(net: nn.Module, spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """The smallest valid input tile that predicts an image of ``spatial_shape`` in one
    pass: the image plus a valid net's context (none for a same-padded net)."""
    smallest = net.valid_input_shape([1] * net.spatial_dims)
    context = np.subtract(smallest, net.output_shape(smallest))
    return tuple(net.valid_input_shape([n + c for n, c in zip(spatial_shape, context)]))


def covering_tile(net: nn.Module, tile: Sequence[int]) -> tuple[int, ...]:
    """``tile``, with every axis whose output is shorter than the pooling grid's step
    ``2**(levels - 1)`` grown to the smallest valid size whose output spans that step.

    A valid net's tiles start on that grid (see :func:`plan_tiles`), so a shorter output
    tile could not cover the image. Any tile size gives a valid U-Net the same result, so
    only memory grows, and by the least it can. Same-padded tiles start anywhere: kept.
    """
    if net.padding != "valid":
        return tuple(tile)
    step = 2 ** (net.levels - 1)
    # Valid sizes keep input - output constant, so the shortfall adds to the input.
    wanted = [t + max(step - o, 0) for t, o in zip(tile, net.output_shape(tile))]
    return tuple(net.valid_input_shape(wanted))


def tile_within(net: nn.Module, spatial_shape: Sequence[int], voxels: int) -> tuple[int, ...]:
    """The default input tile for an image of ``spatial_shape`` (see :func:`tile_shapes`),
    its longest axis cut to the next smaller valid size while it holds more than ``voxels``
    pixels (voxels in 3D), down to the smallest tile that :func:`tile_shapes` allows."""
    tile = list(tile_shapes(net, spatial_shape)[0])
    floor = tile_shapes(net, spatial_shape, 1)[0]
    while math.prod(tile) > voxels and tile != list(floor):
        axis = max((a for a in range(len(tile)) if tile[a] > floor[a]), key=tile.__getitem__)
        lower = net.nearest_valid_sizes([tile[axis] - 1])[0][0]
        tile[axis] = max(lower or 0, floor[axis])
    return tuple(tile)


def sliding_starts(n: int, tile: int, overlap: float) -> list[int]:
    """Tile starts along an axis of length ``n`` as MONAI's ``sliding_window_inference`` puts
    them: ``int(tile * (1 - overlap))`` apart (``tile`` when one tile fits exactly), the last
    shifted back to end at ``max(n, tile)``."""
    n = max(n, tile)
    step = tile if tile == n else max(int(tile * (1 - overlap)), 1)
    count = math.ceil((n - tile) / step) + 1  # the fewest steps whose last tile reaches n
    return [min(i * step, n - tile) for i in range(count)]


def plan_tiles(
    spatial_shape: Sequence[int],
    in_tile: Sequence[int],
    out_tile: Sequence[int],
    padding: str,
    levels: int,
    overlap: float = 0.25,
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(input start, output start)`` of every tile, in image coordinates, in raster order
    (the first axis slowest, so starts along it never decrease: a
    :class:`~segunet.infer.merger.BandMerger` relies on it).

    Valid padding: non-overlapping output tiles (except the last ones per axis, shifted back
    to the image end) at multiples of ``2**(levels - 1)``, each read with the context margin
    around it (Ronneberger et al. 2015, Fig. 2); aligned starts keep every tile's max-pooling
    grid in the same phase, so overlapping tiles agree. Same padding: input = output tiles
    placed by :func:`sliding_starts`.
    """
    if padding == "valid":
        margin = [(i - o) // 2 for i, o in zip(in_tile, out_tile)]
        return [
            (tuple(s - m for s, m in zip(start, margin)), tuple(start))
            for start in tile_grid(spatial_shape, out_tile, align=2 ** (levels - 1))
        ]
    axes = [sliding_starts(n, t, overlap) for n, t in zip(spatial_shape, in_tile)]
    return [(tuple(start), tuple(start)) for start in itertools.product(*axes)]


def batches_touching(tiles: list, batch_size: int, out_tile: Sequence[int],
                      box: Sequence[tuple[int, int]]) -> list:
    """The tiles of the batches (as the whole image is batched) that touch the output
    ``box``. Whole batches: a tile's result can depend on the others in its batch in the
    last bits (the algorithms a convolution picks by batch), and the boxes must equal the
    whole."""
    kept = []
    for i in range(0, len(tiles), batch_size):
        batch = tiles[i:i + batch_size]
        if any(all(a - t < o < b for o, t, (a, b) in zip(out, out_tile, box))
               for _, out in batch):
            kept += batch
    return kept


@lru_cache(maxsize=8)
def blend_window(tile: tuple[int, ...], blend: Blend = "gaussian", sigma_scale: float = 0.125):
    """Per-pixel weight of a tile's prediction when overlapping tiles are averaged.

    ``gaussian``: ``prod_i exp(-x_i**2 / (2 * sigma_i**2))`` with ``x_i`` the distance to the
    tile centre and ``sigma_i = sigma_scale * tile_i``, clipped below at 1e-3 so no pixel
    weighs zero; the same map as MONAI's ``compute_importance_map``. Predictions near a tile
    border, which saw zero padding instead of image, weigh less. ``constant``: ones.
    """
    if blend == "constant":
        window = np.ones(tile, dtype=np.float32)
    elif blend == "gaussian":
        window = np.ones((), dtype=np.float64)
        for n in tile:
            x = np.arange(n) - (n - 1) / 2
            window = np.multiply.outer(window, np.exp(-(x**2) / (2 * (sigma_scale * n) ** 2)))
        window = np.maximum(window, 1e-3).astype(np.float32)
    else:
        raise SegunetError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    window.flags.writeable = False  # cached and shared
    return window


def clip_region(
    start: Sequence[int], size: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of the box ``[start, start + size)`` inside ``[0, shape)`` (starts are >= 0),
    as slices into the image and into the box."""
    stops = [min(s + n, dim) for s, n, dim in zip(start, size, shape)]
    region = tuple(slice(s, e) for s, e in zip(start, stops))
    return region, tuple(slice(0, e - s) for s, e in zip(start, stops))
