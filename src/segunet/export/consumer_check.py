"""Before a bioimage.io package is kept: bioimageio.core's own prediction, whole and in
blocks, on sizes off every grid, against ``segunet predict`` of the same image.

What the check holds bioimageio.core (0.11) to, and why not more:

- blocks: exactly ``segunet predict`` where the image's size and the blocks' inner size are
  multiples of the net's pooling period. Elsewhere bioimageio.core moves the last block of an
  axis back to the image's end, out of phase with the pooling grid (see
  :class:`~segunet.export.bioimageio_description.Geometry`);
- the whole image, at any size: exactly ``segunet predict`` of the image normalised as
  bioimageio.core normalises it. It pads the halo before the per-sample percentiles are
  taken, so they count the mirrored border too; segunet's are the image's own. That, and
  only that, is the difference a user sees (``scripts/bench_bioimageio.py`` measures it).
"""

from __future__ import annotations

import contextlib
import io
from types import ModuleType
from typing import Any

import numpy as np
from torch import nn

from segunet.errors import SegunetError
from segunet.export.bioimageio_description import Geometry

#: Largest difference in probability allowed where bioimageio.core must equal segunet.
ATOL = 1e-3


def check_consumer(
    core: ModuleType, package: Any, model: nn.Module, image: np.ndarray,
    percentiles: list[float] | None, geometry: Geometry,
) -> None:
    """A SegunetError naming the first case in which bioimageio.core's prediction of
    ``package`` differs from segunet's on ``image`` (``(C, *spatial)``, raw values)."""
    import bioimageio.spec

    from segunet.infer.predict import predict_tiled

    pipeline = core.create_prediction_pipeline(bioimageio.spec.load_description(package))
    off_grid = [_cut(image, geometry, extra) for extra in (3, 5)]
    for raw in off_grid:
        got = _predict(core, pipeline, raw)
        expected = predict_tiled(model, _normalised(raw, percentiles, geometry.halo))
        _compare(got, expected, f"whole {_shape(raw)}")
    if not geometry.halo:  # a same-padded net: segunet blends tiles, blocks are edge to edge
        return
    aligned = _cut(image, geometry, 0)
    inner = max(geometry.period, min(aligned.shape[1:]) // 2 // geometry.period * geometry.period)
    block = {a: inner + 2 * geometry.halo for a in _axes(image)}
    got = _predict(core, pipeline, aligned, block)
    expected = predict_tiled(model, _normalised(aligned, percentiles, 0))
    _compare(got, expected, f"blocks of {inner + 2 * geometry.halo} in {_shape(aligned)}")


def _cut(image: np.ndarray, geometry: Geometry, extra: int) -> np.ndarray:
    """``image`` cut (or mirror-extended) to a multiple of the period plus ``extra`` per axis,
    at least the package's smallest block."""
    p = geometry.period
    sizes = [max(geometry.min // p + 1, n // p) * p + extra for n in image.shape[1:]]
    index = (slice(None), *(slice(0, s) for s in sizes))
    short = [(0, 0)] + [(0, max(0, s - n)) for s, n in zip(sizes, image.shape[1:])]
    return np.pad(image[index], short, mode="reflect")


def _normalised(raw: np.ndarray, percentiles: list[float] | None, halo: int) -> np.ndarray:
    """``raw`` as bioimageio.core's scale_range normalises it: per channel, with the
    percentiles of ``raw`` mirror-padded by ``halo`` and ``eps`` 1e-6."""
    x = raw.astype(np.float32)
    if percentiles is None:
        return x
    padded = np.pad(x, [(0, 0)] + [(halo, halo)] * (x.ndim - 1), mode="reflect")
    axes = tuple(range(1, x.ndim))
    low = np.percentile(padded, percentiles[0], axis=axes, keepdims=True)
    high = np.percentile(padded, percentiles[1], axis=axes, keepdims=True)
    return ((x - low) / (high - low + 1e-6)).astype(np.float32)


def _predict(core: ModuleType, pipeline: Any, raw: np.ndarray,
             block: dict[str, int] | None = None) -> np.ndarray:
    blocks = {"input_block_shape": {"input": block}} if block else {}
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar: export says one line
        sample = core.predict(model=pipeline, inputs={"input": raw[None]}, **blocks)
    return np.asarray(sample.members["output"].data)[0]


def _compare(got: np.ndarray, expected: np.ndarray, case: str) -> None:
    if got.shape != expected.shape:
        raise SegunetError(f"bioimageio.core predicts shape {got.shape} for {case}, segunet "
                           f"{expected.shape}; nothing written")
    diff = float(np.abs(got - expected).max())
    if not diff <= ATOL:
        raise SegunetError(f"bioimageio.core's prediction differs from segunet's by {diff:.3g} "
                           f"(> {ATOL}) for {case}; nothing written")


def _axes(image: np.ndarray) -> tuple[str, ...]:
    return ("z", "y", "x")[-(image.ndim - 1):]


def _shape(raw: np.ndarray) -> str:
    return "x".join(map(str, raw.shape[1:]))
