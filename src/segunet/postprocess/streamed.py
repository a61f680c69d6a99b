"""Instances of an image of any size in bounded memory: decoded block by block, stitched
across the block faces, numbered once over the whole image. What ``segunet predict`` writes
into a zarr or OME-Zarr ``instances`` array, 2D or 3D alike.

Each block's *core* (a box of the output, aligned to its chunks) is decoded on a *window*:
the core with ``halo`` pixels of context on every side (cut at the image border), by the
same decoding as a whole image, without its ``min_size``. The core's objects get ids of
their own, written at once. Where two cores meet, the two windows that hold both layers of
the face (each sees the other's first layer in its halo) say which pixel pairs across it
are one object: a pair is joined only where both windows put the two pixels in the same
object, so touching objects stay apart. The joins are the edges of a graph over the ids;
its connected components (scipy's) are the objects. ``min_size`` is applied to their whole
size, counted over all their cores (a small piece of a large object at a seam is not a
small object), and a second pass renumbers the written ids 1..K in the order objects first
appear.

The result does not depend on the blocking where the decoding of a window equals the whole
image's decoding on the window's core: connected components are joined exactly whatever
their extent, and a watershed (the ``boundary`` target) or gap growth reaches no further
than the objects it separates, so a halo wider than the objects (see :func:`auto_halo`)
keeps them whole. Memory: one window of probabilities and its decoding, two face layers per
block of the row in progress, and 16 bytes per object id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: ``(C, *window)`` probabilities -> the int labels of the window (0 background).
Decode = Callable[[np.ndarray], np.ndarray]
#: The output blocks decoded at a time, in chunks per axis.
CORE_CHUNKS = {2: 4, 3: 2}


@dataclasses.dataclass(frozen=True)
class Block:
    """A core box of the output, the window it is decoded on, its index in the grid of
    blocks and the core within the window (slices relative to it)."""

    core: tuple[slice, ...]
    window: tuple[slice, ...]
    index: tuple[int, ...]

    @property
    def inner(self) -> tuple[slice, ...]:
        return tuple(slice(c.start - w.start, c.stop - w.start)
                     for c, w in zip(self.core, self.window))


def block_grid(shape: Sequence[int], core: Sequence[int], halo: int) -> list[Block]:
    """The blocks that tile ``shape`` with cores of ``core`` (the last ones shorter), in
    raster order, each with its window of ``halo`` pixels around the core."""
    starts = [range(0, n, c) for n, c in zip(shape, core)]
    blocks = []
    for index in itertools.product(*(range(len(s)) for s in starts)):
        lo = [i * c for i, c in zip(index, core)]
        hi = [min(s + c, n) for s, c, n in zip(lo, core, shape)]
        blocks.append(Block(
            tuple(slice(a, b) for a, b in zip(lo, hi)),
            tuple(slice(max(0, a - halo), min(n, b + halo)) for a, b, n in zip(lo, hi, shape)),
            tuple(index)))
    return blocks


def auto_halo(diameter: float | None, grow: int = 0) -> int:
    """The context a block's objects need: twice the largest typical object (``diameter``:
    the upper quartile of the training objects' widths, in the decoded grid's pixels), at
    least 64 px, plus the reach of gap growth; a multiple of 16."""
    need = max(64.0, 2 * (diameter or 0)) + 4 * grow + 1
    return int(math.ceil(need / 16) * 16)


def decode_streamed(
    probs: Any, decode: Decode, ids: Any, core: Sequence[int], halo: int, min_size: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Decode ``probs`` ``(C, *spatial)`` (any array-like: read a window at a time) block by
    block, writing each core's ids into ``ids`` (a ``(*spatial)`` uint32 array-like, written
    a core at a time); returns the numbering: per id written, its object's number 1..K (0:
    background, or fewer than ``min_size`` pixels in all), for :func:`renumber`. ``decode``
    must not remove small objects itself: ``min_size`` applies to stitched objects."""
    from tqdm import tqdm

    from segunet import interrupts

    if halo < 1:
        raise ValueError("the windows need a halo of at least 1 px: the faces' other layer")
    shape = tuple(int(n) for n in ids.shape)
    dims = len(shape)
    if tuple(probs.shape[1:]) != shape:
        raise ValueError(f"probabilities {tuple(probs.shape)} do not match output {shape}")
    blocks = block_grid(shape, core, halo)
    faces: dict[tuple[tuple[int, ...], int], tuple[np.ndarray, np.ndarray]] = {}
    links: list[np.ndarray] = []
    sizes: list[np.ndarray] = [np.zeros(1, np.int64)]  # id 0: background
    next_id = 1
    with interrupts.held():
        bar = tqdm(total=len(blocks), unit="block", desc="instances", disable=not progress)
    with contextlib.closing(bar):
        for block in blocks:
            local = np.asarray(decode(np.asarray(probs[(slice(None), *block.window)])))
            inner = local[block.inner]
            counts = np.bincount(inner.ravel())
            present = np.flatnonzero(counts)
            present = present[present > 0]
            lut = np.zeros(int(local.max()) + 1, np.int64)
            lut[present] = np.arange(next_id, next_id + len(present))
            next_id += len(present)
            if next_id >= 2**32:
                raise ValueError("more than 2**32 pieces of objects: use larger blocks")
            sizes.append(counts[present].astype(np.int64))
            ids[block.core] = lut[inner].astype(np.uint32)
            for axis in range(dims):
                links += _join_earlier(faces, block, local, lut, axis)
                _keep_later(faces, block, local, lut, axis, shape)
            bar.update(1)
    return _numbering(next_id, links, np.concatenate(sizes), min_size)


def renumber(ids: Any, numbering: np.ndarray, out: Any, core: Sequence[int]) -> None:
    """``out`` = ``numbering[ids]``, a core at a time, in the smallest unsigned type that
    holds the largest number (uint16 or uint32, as a whole image's instances); ``out`` may
    be ``ids`` itself."""
    dtype = np.uint16 if numbering.max() < 2**16 else np.uint32
    table = numbering.astype(dtype)
    for block in block_grid(ids.shape, core, 0):
        out[block.core] = table[np.asarray(ids[block.core])]


def _layers(local: np.ndarray, block: Block, axis: int, before: int) -> tuple[np.ndarray, ...]:
    """The window's labels on the two layers of the face of ``block``'s core along ``axis``
    at global position ``before | before + 1`` (``before`` the last of the lower core),
    across the core's extent on the other axes."""
    index = [s for s in block.inner]
    layers = []
    for position in (before, before + 1):
        index[axis] = position - block.window[axis].start
        layers.append(local[tuple(index)])
    return tuple(layers)


def _keep_later(faces: dict, block: Block, local: np.ndarray, lut: np.ndarray, axis: int,
                shape: Sequence[int]) -> None:
    """For the next block along ``axis``: the ids of this core's last layer, and where this
    window puts them in one object with the next core's first layer."""
    end = block.core[axis].stop
    if end >= shape[axis]:
        return
    low, high = _layers(local, block, axis, end - 1)
    later = tuple(i + (a == axis) for a, i in enumerate(block.index))
    faces[(later, axis)] = (lut[low], (low == high) & (low > 0))


def _join_earlier(faces: dict, block: Block, local: np.ndarray, lut: np.ndarray,
                  axis: int) -> list[np.ndarray]:
    """The id pairs joined across the face with the earlier block along ``axis``: where
    both windows hold the two pixels in one object."""
    kept = faces.pop((block.index, axis), None)
    if kept is None:
        return []
    ids_low, same_before = kept
    low, high = _layers(local, block, axis, block.core[axis].start - 1)
    same = same_before & (low == high) & (high > 0)
    if not same.any():
        return []
    return [np.unique(np.stack([ids_low[same], lut[high][same]], axis=1), axis=0)]


def _numbering(n: int, links: list[np.ndarray], sizes: np.ndarray, min_size: int) -> np.ndarray:
    """Per id written, the number of its object (0: background, or an object of fewer than
    ``min_size`` pixels), objects numbered 1..K in the order their first id was given."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    pairs = np.concatenate(links) if links else np.zeros((0, 2), np.int64)
    graph = sparse.coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])),
                              shape=(n, n))
    count, component = connected_components(graph, directed=False)
    total = np.bincount(component, weights=sizes, minlength=count)
    first = np.full(count, n, np.int64)
    np.minimum.at(first, component, np.arange(n))
    kept = total >= max(min_size, 1)
    kept[component[0]] = False  # the background
    order = np.argsort(first, kind="stable")
    number = np.zeros(count, np.int64)
    ranked = order[kept[order]]
    number[ranked] = np.arange(1, len(ranked) + 1)
    return number[component]
