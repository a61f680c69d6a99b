"""Where tile predictions go: the seam between computing tiles and storing the result.

A :class:`Merger` receives each tile's class probabilities for a region of the image and
returns the whole prediction at the end. Overlapping tiles of a same-padded net are blended:
each tile adds ``weight * probabilities`` and ``weight``, and ``finalize`` divides the sums.
The valid-padded U-Net's overlap-tile strategy (Ronneberger et al. 2015, Fig. 2) needs no
blending (tiles agree wherever they overlap), so an unweighted merger writes straight through.
Modelled on MONAI's ``inferers/merger.py`` (``AvgMerger``, ``ZarrAvgMerger``); where MONAI's
zarr merger reads and rewrites chunks for every tile, :class:`BandMerger` holds only the band
of rows that tiles still touch and writes each finished chunk once.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

Region = tuple[slice, ...]
#: Most bytes the band of a box takes (see :func:`boxes_for`).
BOX_BYTES = 2**30


class Merger(ABC):
    """Collects tile probabilities ``(classes, *region)`` into an array of ``shape``
    ``(classes, *spatial)``.

    Args:
        shape: the full output shape, classes first.
        weighted: True to blend overlapping tiles by their weights (``add`` then needs
            ``weights``); False to write each tile straight, the later winning.
    """

    def __init__(self, shape: Sequence[int], weighted: bool = True) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.weighted = weighted

    @abstractmethod
    def add(self, region: Region, probs: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Merge ``probs`` (classes, *region size) into the spatial ``region`` of the output;
        ``weights`` (*region size) when weighted."""

    @abstractmethod
    def finalize(self) -> Any:
        """The merged ``(classes, *spatial)`` probabilities; call once, after the last add."""

    def takes(self, device: Any) -> bool:
        """Whether ``add`` should get the tiles as tensors on ``device``, straight from the
        prediction loop, rather than as host arrays from a writer thread."""
        return False

    def close(self) -> None:
        """Stop any background work without finishing (the prediction failed): once it
        returns, nothing writes to the output any more."""
        return None

    def _check(self, region: Region, probs: np.ndarray, weights: np.ndarray | None) -> None:
        if self.weighted and weights is None:
            raise ValueError(f"{type(self).__name__} blends tiles: add() needs weights")


class InMemoryMerger(Merger):
    """Accumulates in host memory (float32): weighted sums plus one weight per pixel."""

    def __init__(self, shape: Sequence[int], weighted: bool = True) -> None:
        super().__init__(shape, weighted)
        self.values = np.zeros(self.shape, dtype=np.float32)
        self.weights = np.zeros(self.shape[1:], dtype=np.float32) if weighted else None

    def add(self, region: Region, probs: np.ndarray, weights: np.ndarray | None = None) -> None:
        self._check(region, probs, weights)
        if self.weights is None:
            self.values[(slice(None), *region)] = probs
        else:
            self.values[(slice(None), *region)] += probs * weights
            self.weights[region] += weights

    def finalize(self) -> np.ndarray:
        if self.weights is not None:
            self.values /= self.weights
            self.weights = None  # finalized: a second call must not divide again
        return self.values


class BandMerger(Merger):
    """Streams tiles that arrive in raster order into an array-like ``out`` (zarr, memmap,
    HDF5, numpy) band by band, holding only a band of rows in memory.

    :func:`~segunet.infer.predict.predict_tiled` yields tiles in raster order, so their starts
    along the first spatial axis (rows in 2D, slices in 3D) never decrease: once a tile
    starting at row ``r`` arrives, no later tile touches the rows above ``r``. The band is
    kept as blocks of ``rows`` full-width rows (2D) or slabs (3D): weighted sums and weights
    (weighted) or the values (unweighted). Blocks that end at or above ``r`` are finished:
    divided by their weights, cast to ``out``'s dtype and written by a background thread,
    each exactly once. With ``rows`` equal to ``out``'s chunk edge (the default for a chunked
    ``out``) every write covers whole chunks, so nothing on disk is read back or rewritten.
    Memory: at most :meth:`band_bytes`, about ``(tile + 5 * rows) * width * (classes + 1)``
    float32 values (2D; the slab in 3D), whatever the image height.

    Args:
        out: the ``(classes, *spatial)`` array to fill.
        weighted: see :class:`Merger`.
        rows: block height along the first spatial axis; default: ``out``'s chunk along it,
            or :data:`DEFAULT_ROWS` for an unchunked ``out``.
        device: where the band accumulates (a torch device); None: where the first tile is,
            so on the GPU the prediction loop hands over tiles without a host round trip.
    """

    #: Block height of an unchunked ``out``, by number of spatial axes.
    DEFAULT_ROWS = {1: 4096, 2: 256, 3: 16}
    #: Finished blocks handed to the writer and not yet written, at most.
    PENDING = 3

    def __init__(
        self, out: Any, weighted: bool = True, rows: int | None = None, device: Any = None
    ) -> None:
        super().__init__(out.shape, weighted)
        self.out = out
        self.rows = self.block_rows(self.shape, getattr(out, "chunks", None), rows)
        self.count = -(-self.shape[1] // self.rows)  # blocks in all
        self.device = None if device is None else torch.device(device)
        self.blocks: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.done = 0  # blocks before this one are handed to the writer
        self.dtype = np.dtype(out.dtype)
        self.pending: deque[Future] = deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="segunet-band")
        self.copy_stream: torch.cuda.Stream | None = None

    @classmethod
    def block_rows(
        cls, shape: Sequence[int], chunks: Sequence[int] | None = None, rows: int | None = None
    ) -> int:
        """The block height for an output of ``shape`` and ``chunks``: ``rows``, else the
        chunk along the first spatial axis, else :data:`DEFAULT_ROWS`; at most the height."""
        if rows is None:
            rows = chunks[1] if chunks else cls.DEFAULT_ROWS.get(len(shape) - 1, 16)
        return max(1, min(int(rows), shape[1]))

    @classmethod
    def band_bytes(cls, shape: Sequence[int], rows: int, tile_rows: int) -> int:
        """The most memory the band takes for an output of ``shape`` in blocks of ``rows``:
        float32 sums and weights of the blocks one tile of ``tile_rows`` spans, and of the
        finished blocks waiting for the writer."""
        blocks = -(-tile_rows // rows) + 1 + cls.PENDING
        return 4 * (shape[0] + 1) * min(blocks * rows, shape[1]) * math.prod(shape[2:])

    def takes(self, device: Any) -> bool:
        # On the host a writer thread adding numpy arrays overlaps the computation better.
        device = torch.device(device)
        return device.type == "cuda" and self.device in (None, device)

    def add(self, region: Region, probs: Any, weights: Any = None) -> None:
        self._check(region, probs, weights)
        top, stop = region[0].start, region[0].stop
        if top < self.done * self.rows:
            raise ValueError(
                f"{type(self).__name__} takes tiles in raster order, but a tile starts at row "
                f"{top} after rows up to {self.done * self.rows} were written"
            )
        self._flush(top // self.rows)
        probs = self._tensor(probs)
        weights = None if weights is None else self._tensor(weights)
        for b in range(top // self.rows, (stop - 1) // self.rows + 1):
            low, high = max(top, b * self.rows), min(stop, (b + 1) * self.rows)
            values, weight = self._block(b)
            index = (slice(low - b * self.rows, high - b * self.rows), *region[1:])
            part = probs[:, low - top : high - top]
            if weight is None:
                values[(slice(None), *index)] = part
            else:
                w = weights[low - top : high - top]
                values[(slice(None), *index)] += part * w
                weight[index] += w

    def finalize(self) -> Any:
        self._flush(self.count)
        self._wait(0)
        self.pool.shutdown()
        return self.out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _tensor(self, x: Any) -> torch.Tensor:
        if self.device is None:
            self.device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            x = x.copy()  # torch warns on read-only arrays (a cached window)
        return torch.as_tensor(x, device=self.device)

    def _block(self, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        block = self.blocks.get(b)
        if block is None:
            size = (min(self.rows, self.shape[1] - b * self.rows), *self.shape[2:])
            values = torch.zeros((self.shape[0], *size), device=self.device)
            weight = torch.zeros(size, device=self.device) if self.weighted else None
            block = self.blocks[b] = (values, weight)
        return block

    def _flush(self, stop: int) -> None:
        """Finish the blocks before block ``stop`` and hand them to the writer thread."""
        for b in range(self.done, stop):
            values, weight = self.blocks.pop(b, (None, None))
            if values is None:  # no tile touched it (a caller's merger): leave out as is
                continue
            if weight is not None:
                values = values / weight  # not in place: blocks may be inference tensors
            # Cast where the block is (the GPU): float16 halves the copy to the host.
            if self.dtype == np.float16:
                values = values.half()
            index = (slice(None), slice(b * self.rows, b * self.rows + values.shape[1]))
            ready = None
            if values.is_cuda:  # the writer copies once the division is done, not before
                ready = torch.cuda.Event()
                ready.record()
            self._wait(self.PENDING - 1)  # bounded: a few finished blocks wait for the disk
            self.pending.append(self.pool.submit(self._write, index, values, ready))
        self.done = max(self.done, stop)

    def _write(
        self, index: tuple[slice, ...], values: torch.Tensor, ready: torch.cuda.Event | None
    ) -> None:
        if ready is not None:
            values = self._to_host(values, ready)
        if isinstance(self.out, np.ndarray) and self.out.dtype.isnative:
            # torch copies (and casts) on several threads, numpy assigns on one
            torch.from_numpy(self.out[index]).copy_(values)
        else:
            self.out[index] = values.numpy().astype(self.dtype, copy=False)

    def _to_host(self, values: torch.Tensor, ready: torch.cuda.Event) -> torch.Tensor:
        """Copy a finished block from the GPU into pinned host memory, on a stream of its
        own. Profiled on an H200, copies into pageable memory held up the kernels even on
        a side stream (and on the default stream they would queue between them)."""
        if self.copy_stream is None:
            self.copy_stream = torch.cuda.Stream(values.device)
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(ready)
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            self.copy_stream.synchronize()
        return host

    def _wait(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are pending; re-raise a failed write's error."""
        while self.pending and (len(self.pending) > keep or self.pending[0].done()):
            self.pending.popleft().result()


def boxes_for(shape: Sequence[int], chunks: Sequence[int], tile_rows: int,
              parts: int = 1, budget: int | None = None) -> list[tuple[tuple[int, int], ...]]:
    """The boxes to predict an output ``(classes, *spatial)`` of ``chunks`` in (see
    :func:`~segunet.infer.predict.predict_tiled`'s ``box``), whole chunks each: as wide as
    a band of the box (:meth:`BandMerger.band_bytes`) fits in ``budget`` bytes (default
    :data:`BOX_BYTES`), halving
    the widest of the other axes until it does (a volume of 2048² slices; a 2D image
    wider than ~80k px); and split along the first axis into about ``parts`` bands, each
    at least four tiles (``tile_rows``) high, as the tiles that straddle two boxes are
    predicted for both."""
    budget = BOX_BYTES if budget is None else budget
    classes, first, *rest = (int(n) for n in shape)
    chunk = [int(c) for c in chunks[-len(shape) + 1:]]
    rows = BandMerger.block_rows(shape, chunks)
    width = list(rest)
    while any(w > c for w, c in zip(width, chunk[1:])) and BandMerger.band_bytes(
            (classes, first, *width), rows, tile_rows) > budget:
        axis = int(np.argmax(width))
        width[axis] = math.ceil(width[axis] / 2 / chunk[axis + 1]) * chunk[axis + 1]
    height = max(4 * tile_rows, math.ceil(first / max(1, parts)))
    height = math.ceil(height / chunk[0]) * chunk[0]
    axes = [range(0, first, height), *(range(0, n, w) for n, w in zip(rest, width))]
    sizes = [height, *width]
    return [tuple((a, min(a + w, n)) for a, w, n in zip(corner, sizes, (first, *rest)))
            for corner in itertools.product(*axes)]


class BoxView:
    """A box of a ``(classes, *spatial)`` array-like, written through: what a
    :class:`BandMerger` fills for one part of a larger output. The box is whole chunks of
    ``out`` (its end may be the array's), so parts written by different processes never
    share a chunk."""

    def __init__(self, out: Any, box: Sequence[tuple[int, int]]) -> None:
        self.out, self.box = out, tuple((int(a), int(b)) for a, b in box)
        self.dtype = out.dtype
        self.chunks = getattr(out, "chunks", None)
        spatial = tuple(int(n) for n in out.shape[1:])
        for (a, b), n, c in zip(self.box, spatial, self.chunks[1:] if self.chunks else
                                (1,) * len(spatial)):
            if not 0 <= a < b <= n or a % c or (b % c and b != n):
                raise ValueError(f"box={list(self.box)} must be whole chunks of "
                                 f"{tuple(self.chunks or ())} within {spatial}")
        self.shape = (int(out.shape[0]), *(b - a for a, b in self.box))

    def __setitem__(self, index: tuple[slice, ...], value: Any) -> None:
        index = (*index, *(slice(None),) * (len(self.shape) - len(index)))
        spatial = tuple(slice(a + (s.start or 0), a + (b - a if s.stop is None else s.stop))
                        for s, (a, b) in zip(index[1:], self.box))
        self.out[(index[0], *spatial)] = value


class CroppedMerger(Merger):
    """Passes on to ``inner`` (a merger of the ``box`` of the whole output) the part of
    each tile inside the box, in the box's coordinates; the rest is dropped."""

    def __init__(self, inner: Merger, box: Sequence[tuple[int, int]]) -> None:
        super().__init__(inner.shape, inner.weighted)
        self.inner, self.box = inner, tuple(box)

    def add(self, region: Region, probs: Any, weights: Any = None) -> None:
        inside = [(max(r.start, a), min(r.stop, b)) for r, (a, b) in zip(region, self.box)]
        if any(lo >= hi for lo, hi in inside):
            return
        local = tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(inside, self.box))
        crop = tuple(slice(lo - r.start, hi - r.start) for (lo, hi), r in zip(inside, region))
        self.inner.add(local, probs[(slice(None), *crop)],
                       None if weights is None else weights[crop])

    def finalize(self) -> Any:
        return self.inner.finalize()

    def takes(self, device: Any) -> bool:
        return self.inner.takes(device)

    def close(self) -> None:
        self.inner.close()


class ZarrMerger(BandMerger):
    """Streams into a zarr array on disk, so host memory stays bounded by the tiles in flight
    and a band of rows (see :class:`BandMerger`).

    The group at ``path`` gets a ``probabilities`` array (``dtype``: float16 halves the disk
    space, float32 keeps full precision), written chunk by chunk, each chunk once.

    Args:
        path: folder of the zarr group (replaced if it exists).
        shape: ``(classes, *spatial)``.
        chunks: spatial chunk shape (default 256 per axis in 2D, 64 in 3D); classes are never
            split, so one chunk holds every class of its pixels.
        dtype: of the final probabilities.
        weighted: see :class:`Merger`.
        device: see :class:`BandMerger`.

    To fill an array of your own (a zarr array elsewhere, a memmap), use :class:`BandMerger`
    on it directly.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: Sequence[int],
        chunks: Sequence[int] | None = None,
        dtype: str | np.dtype = "float16",
        weighted: bool = True,
        device: Any = None,
    ) -> None:
        import zarr

        shape = tuple(int(s) for s in shape)
        spatial = shape[1:]
        if chunks is None:
            chunks = [256 if len(spatial) <= 2 else 64] * len(spatial)
        self.chunks = tuple(min(int(c), s) for c, s in zip(chunks, spatial, strict=True))
        self.path = Path(path)
        self.group = zarr.open_group(store=str(self.path), mode="w")
        out = self.group.create_array(
            "probabilities", shape=shape, chunks=(shape[0], *self.chunks), dtype=dtype,
            fill_value=0,
        )
        super().__init__(out, weighted, device=device)  # rows: the chunk edge

    def remove(self) -> None:
        """Delete the store from disk."""
        shutil.rmtree(self.path, ignore_errors=True)

