"""The ``instances`` output of a zarr or OME-Zarr prediction, in bounded memory: decoded
block by block from the probabilities on disk (:mod:`segunet.postprocess.streamed`), on the
model's grid, where the tuned settings hold, and carried onto the input's grid by nearest
neighbour a band of rows at a time."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from segunet.data.omezarr import CHUNK
from segunet.infer.resample import nearest_indices
from segunet.postprocess.decoding import Decoder
from segunet.postprocess.streamed import (
    CORE_CHUNKS,
    Map,
    auto_halo,
    decode_streamed,
    renumber,
    run_here,
)


def write_instances(
    model_probs: Any, grid: Any, out: Any, decoder: Decoder, foreground: Sequence[int],
    objects: tuple[float, float, float] | None, map_blocks: Map | None = None,
) -> int:
    """Decode ``model_probs`` ``(C, *model_shape)`` into ``out``'s ``instances`` array
    (uint16, or uint32 beyond 65535 objects), block by block, through a hidden store of
    the blocks' ids; returns the number of objects. ``objects``: the training objects'
    widths (lower quartile, median, upper quartile), which size the halo unless
    ``instances.halo`` does. ``map_blocks``: runs the blocks (default: here)."""
    dims = len(grid.shape)
    core = (CHUNK[dims] * CORE_CHUNKS[dims],) * dims
    ids = out.scratch(f"{out.stem}_instance_ids.zarr", grid.model_shape, np.uint32, dims)
    halo = decoder.halo or auto_halo(objects[2] if objects else None, decoder.grow)
    window = decoder.without_min_size()
    map_blocks = map_blocks or run_here
    numbering = decode_streamed(
        model_probs, functools.partial(_decode, window, tuple(foreground)), ids, core, halo,
        decoder.min_size, progress=True, map_blocks=map_blocks)
    count = numbering.count
    target = out.array("instances", grid.shape, numbering.dtype, dims)
    if grid.resampled:  # numbered in place on the model's grid, then carried over
        renumber(ids, numbering, ids, core, map_blocks=map_blocks)
        nearest_banded(ids, target, CHUNK[dims])
    else:
        renumber(ids, numbering, target, core, map_blocks=map_blocks)
    blocks = math.prod(math.ceil(n / c) for n, c in zip(grid.model_shape, core))
    print(f"segunet: {out.path}: {count} objects, decoded in {blocks} block"
          f"{'s' * (blocks > 1)} with a halo of {halo} px", file=sys.stderr)
    return count


def _decode(window: Decoder, foreground: tuple[int, ...], probs: np.ndarray) -> np.ndarray:
    return window(probs, foreground, probs.shape[1])


def nearest_banded(source: Any, target: Any, rows: int) -> None:
    """``target`` filled with ``source`` resampled onto its shape by nearest neighbour (as
    :func:`segunet.infer.resample.nearest`), ``rows`` of the first axis at a time: each band
    reads only the source rows it takes."""
    index = nearest_indices(source.shape, target.shape)
    for start in range(0, target.shape[0], rows):
        first = index[0][start:start + rows]
        low, high = int(first.min()), int(first.max()) + 1
        band = np.asarray(source[low:high])
        target[start:start + rows] = band[np.ix_(first - low, *index[1:])]
