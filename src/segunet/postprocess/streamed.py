"""Instances of an image of any size in bounded memory: decoded block by block, stitched
across the block faces, numbered once over the whole image. What ``segunet predict`` writes
into a zarr or OME-Zarr ``instances`` array, 2D or 3D alike, in one process or with the
blocks spread over the workers of a Dask cluster: a map, a reduce and a map.

1. **Decode** (:func:`decode_block`, one task per block). Each block's *core* (a box of the
   output, aligned to its chunks) is decoded on a *window*: the core with ``halo`` pixels
   of context on every side (cut at the image border), by the same decoding as a whole
   image, without its ``min_size``. The core's objects are written with the block's own
   numbers 1..n. What the block leaves for the stitching is small: its objects' sizes and,
   per face shared with another core, the face's layer inside the core, holding the
   number of each pixel that the window puts in one object with the pixel across the face
   (each window sees the other core's first layer in its halo), 0 elsewhere.
2. **Stitch** (:class:`Stitcher`, in the caller, blocks taken in any order). A pair of
   pixels across a face is joined only where both windows put them in one object, so
   touching objects stay apart. The joins are the edges of a graph over the blocks'
   objects; its connected components (scipy's) are the objects of the image. ``min_size``
   is applied to their whole size, counted over all their cores (a small piece of a large
   object at a seam is not a small object), and the objects are numbered 1..K in the order
   they first appear in the blocks' raster order.
3. **Renumber** (:func:`relabel_block`, one task per block): each core's numbers become
   the image's, through the block's slice of the numbering.

The result does not depend on the blocking, nor on the order blocks are decoded in, where
the decoding of a window equals the whole image's decoding on the window's core: connected
components are joined exactly whatever their extent, and a watershed (the ``boundary``
target) or gap growth reaches no further than the objects it separates, so a halo wider
than the objects (see :func:`auto_halo`) keeps them whole. Memory: one window of
probabilities and its decoding per task; in the caller, the faces of the blocks whose
neighbour is not decoded yet (in raster order, a row of blocks in 2D, a slab in 3D) and 16
bytes per object piece.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

#: ``(C, *window)`` probabilities -> the int labels of the window (0 background).
Decode = Callable[[np.ndarray], np.ndarray]
#: How blocks are run: ``(task, items, description, **shared)`` -> ``(index, result)`` per
#: item, in any order (:func:`run_here` in this process; a Dask cluster's map).
Map = Callable[..., Iterator[tuple[int, Any]]]
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


@dataclasses.dataclass
class Piece:
    """What decoding a block leaves for the stitching: ``sizes[k - 1]``, the pixels of the
    core's object ``k``; and per face shared with another core, keyed ``(axis, side)``
    (side 0: the lower face, 1: the upper), the core's layer on it: the object number of
    each pixel joined by this window to the pixel across the face, 0 elsewhere."""

    sizes: np.ndarray
    faces: dict[tuple[int, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Numbering:
    """The objects of the image: ``number[offsets[b] + k]`` is the image's number of block
    ``b``'s object ``k`` (0: background or too small); ``count`` objects in all."""

    offsets: np.ndarray
    number: np.ndarray

    @property
    def count(self) -> int:
        return int(self.number.max(initial=0))

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned type of the numbers, as a whole image's instances."""
        return np.dtype(np.uint16 if self.count < 2**16 else np.uint32)

    def table(self, position: int) -> np.ndarray:
        """Block ``position``'s numbers ``k`` -> the image's, 0 -> 0."""
        low, high = self.offsets[position], self.offsets[position + 1]
        return np.concatenate([[0], self.number[low + 1:high + 1]]).astype(self.dtype)


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


def run_here(task: Callable[..., Any], items: Sequence[Any], description: str,
             progress: bool = False, **shared: Any) -> Iterator[tuple[int, Any]]:
    """The :data:`Map` of one process: the items one after another, with a progress bar."""
    from tqdm import tqdm

    from segunet import interrupts

    with interrupts.held():
        bar = tqdm(total=len(items), unit="block", desc=description, disable=not progress)
    with contextlib.closing(bar):
        for i, item in enumerate(items):
            yield i, task(item, **shared)
            bar.update(1)


def decode_streamed(
    probs: Any, decode: Decode, ids: Any, core: Sequence[int], halo: int, min_size: int = 0,
    progress: bool = False, map_blocks: Map = run_here,
) -> Numbering:
    """Decode ``probs`` ``(C, *spatial)`` (any array-like: read a window at a time) block by
    block, writing each core's numbers into ``ids`` (a ``(*spatial)`` uint32 array-like,
    written a core at a time); returns the image's numbering of them, for :func:`renumber`.
    ``decode`` must not remove small objects itself: ``min_size`` applies to stitched
    objects. ``map_blocks`` runs the blocks (see :data:`Map`)."""
    if halo < 1:
        raise ValueError("the windows need a halo of at least 1 px: the faces' other layer")
    shape = tuple(int(n) for n in ids.shape)
    if tuple(probs.shape[1:]) != shape:
        raise ValueError(f"probabilities {tuple(probs.shape)} do not match output {shape}")
    blocks = block_grid(shape, core, halo)
    stitcher = Stitcher(blocks)
    for position, piece in map_blocks(decode_block, blocks, "instances", progress=progress,
                                      probs=probs, decode=decode, ids=ids, shape=shape):
        stitcher.add(position, piece)
    return stitcher.numbering(min_size)


def renumber(ids: Any, numbering: Numbering, out: Any, core: Sequence[int],
             progress: bool = False, map_blocks: Map = run_here) -> None:
    """``out`` = the image's numbers of the blocks' ``ids``, a core at a time (``core``: as
    decoded), in :attr:`Numbering.dtype`; ``out`` may be ``ids`` itself."""
    blocks = block_grid(ids.shape, core, 0)
    items = [(block, numbering.table(i)) for i, block in enumerate(blocks)]
    for _ in map_blocks(relabel_block, items, "numbering", progress=progress, ids=ids,
                        out=out):
        pass


def decode_block(block: Block, probs: Any, decode: Decode, ids: Any,
                 shape: Sequence[int]) -> Piece:
    """Decode ``block``'s window of ``probs``, write its core's objects 1..n into ``ids``;
    what it leaves for the stitching (see :class:`Piece`)."""
    local = np.asarray(decode(np.asarray(probs[(slice(None), *block.window)])))
    inner = local[block.inner]
    counts = np.bincount(inner.ravel())
    present = np.flatnonzero(counts)
    present = present[present > 0]
    if len(present) >= 2**32:
        raise ValueError("more than 2**32 objects in a block: use smaller blocks")
    lut = np.zeros(int(local.max()) + 1, np.uint32)
    lut[present] = np.arange(1, len(present) + 1)
    ids[block.core] = lut[inner]
    faces = {}
    for axis in range(len(shape)):
        start, stop = block.core[axis].start, block.core[axis].stop
        if start > 0:
            across, mine = _layers(local, block, axis, start - 1)
            faces[(axis, 0)] = np.where((across == mine) & (mine > 0), lut[mine], 0)
        if stop < shape[axis]:
            mine, across = _layers(local, block, axis, stop - 1)
            faces[(axis, 1)] = np.where((across == mine) & (mine > 0), lut[mine], 0)
    return Piece(counts[present].astype(np.int64), faces)


def relabel_block(item: tuple[Block, np.ndarray], ids: Any, out: Any) -> None:
    """Write ``out``'s core of a block: its ``ids`` through its ``table``."""
    block, table = item
    out[block.core] = table[np.asarray(ids[block.core])]


class Stitcher:
    """Joins the pieces of decoded blocks, added in any order, into the image's objects. A
    face is joined as soon as both its blocks are in, and its layers dropped."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        self.indices = [block.index for block in blocks]
        self.positions = {index: i for i, index in enumerate(self.indices)}
        self.sizes: list[np.ndarray | None] = [None] * len(blocks)
        self.waiting: dict[tuple[tuple[int, ...], int, int], np.ndarray] = {}
        self.links: list[np.ndarray] = []  # rows: position, number, position, number

    def add(self, position: int, piece: Piece) -> None:
        index = self.indices[position]
        self.sizes[position] = piece.sizes
        for (axis, side), layer in piece.faces.items():
            step = 1 if side else -1
            neighbour = tuple(i + step * (a == axis) for a, i in enumerate(index))
            other = self.waiting.pop((neighbour, axis, 1 - side), None)
            if other is None:
                self.waiting[(index, axis, side)] = layer
                continue
            if side:
                low, high, low_at, high_at = layer, other, position, self.positions[neighbour]
            else:
                low, high, low_at, high_at = other, layer, self.positions[neighbour], position
            joined = (low > 0) & (high > 0)
            if joined.any():
                pairs = np.unique(np.stack([low[joined], high[joined]], axis=1), axis=0)
                rows = np.empty((len(pairs), 4), np.int64)
                rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = \
                    low_at, pairs[:, 0], high_at, pairs[:, 1]
                self.links.append(rows)

    def numbering(self, min_size: int) -> Numbering:
        """The objects of all blocks added (all must be), small ones dropped."""
        if any(s is None for s in self.sizes) or self.waiting:
            raise ValueError("the stitching is missing blocks")
        counts = np.array([len(s) for s in self.sizes], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        links = np.concatenate(self.links) if self.links else np.zeros((0, 4), np.int64)
        pairs = np.stack([offsets[links[:, 0]] + links[:, 1],
                          offsets[links[:, 2]] + links[:, 3]], axis=1)
        sizes = np.concatenate([np.zeros(1, np.int64), *self.sizes])
        return Numbering(offsets, _numbering(int(offsets[-1]) + 1, pairs, sizes, min_size))


def _layers(local: np.ndarray, block: Block, axis: int, before: int) -> tuple[np.ndarray, ...]:
    """The window's labels on the two layers of the face of ``block``'s core along ``axis``
    at global position ``before | before + 1`` (``before`` the last of the lower core),
    across the core's extent on the other axes."""
    index = list(block.inner)
    layers = []
    for position in (before, before + 1):
        index[axis] = position - block.window[axis].start
        layers.append(local[tuple(index)])
    return tuple(layers)


def _numbering(n: int, pairs: np.ndarray, sizes: np.ndarray, min_size: int) -> np.ndarray:
    """Per id 0..n-1, the number of its object (0: background, or an object of fewer than
    ``min_size`` pixels), objects numbered 1..K in the order their first id was given."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

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
