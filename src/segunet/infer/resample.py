"""The input's pixel grid and the model's: predicting at the training pixel size.

An image whose pixel size differs from the one the model was trained at is resampled to
that pixel size (the same field of view on the model's grid), predicted there, and its
outputs resampled back onto the input's own grid, so objects come out the same at any
magnification. Both directions are lazy views (:class:`Resampled`) that read only the
window of their source a requested window needs, so a large image is resampled band by
band as :func:`~segunet.infer.predict.predict_tiled` reads it, and probabilities on disk are
resampled back band by band as they are written out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segunet.data.pixelsize import PixelSize, describe_pixel_size
from segunet.errors import SegunetError

#: Pixel sizes within this relative difference of the training one are used as they are:
#: a 5% scale change moves the edge of a 20-pixel object by half a pixel, less than the
#: blur that resampling itself adds.
TOLERANCE = 0.05
#: The largest resampling factor either way: beyond it the pixel size is more likely wrong
#: than the data (and 8x up in 2D means 64x the pixels to predict).
MAX_FACTOR = 8.0


@dataclasses.dataclass(frozen=True)
class Grid:
    """An input of spatial ``shape`` and ``pixel_size`` (None: unknown) and the grid the
    model sees it on: ``model_shape``, the same as ``shape`` when no resampling is done."""

    shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    pixel_size: PixelSize | None

    @property
    def resampled(self) -> bool:
        return self.model_shape != self.shape

    def to_model(self, image: Any) -> Any:
        """``image`` ``(C, *shape)`` as the model sees it (a lazy view if resampled)."""
        return Resampled(image, self.model_shape) if self.resampled else image

    def to_input(self, probs: Any) -> Any:
        """Probabilities ``(C, *model_shape)`` on the input's grid (lazy if resampled)."""
        return Resampled(probs, self.shape) if self.resampled else probs

    def labels_to_input(self, labels: np.ndarray) -> np.ndarray:
        """A label image of the model's grid on the input's: nearest neighbour, ids kept."""
        return nearest(labels, self.shape) if self.resampled else labels


def grid_for(
    shape: Sequence[int], pixel_size: PixelSize | None, trained: PixelSize | None,
    resample: bool, source: str,
) -> Grid:
    """The grid to predict an input of ``shape`` and ``pixel_size`` on with a model trained
    at ``trained``: resampled when ``resample``, both sizes are known and they differ by
    more than :data:`TOLERANCE`; a one-line error beyond :data:`MAX_FACTOR`."""
    shape = tuple(int(n) for n in shape)
    if not resample or pixel_size is None or trained is None:
        return Grid(shape, shape, pixel_size)
    factors = [p / t for p, t in zip(pixel_size, trained)]
    if all(abs(f - 1) <= TOLERANCE for f in factors):
        return Grid(shape, shape, pixel_size)
    worst = max(factors, key=lambda f: max(f, 1 / f))
    if max(worst, 1 / worst) > MAX_FACTOR:
        raise SegunetError(
            f"{source}: its pixel size {describe_pixel_size(pixel_size)} is {_times(worst)} the "
            f"model's {describe_pixel_size(trained)}, beyond the {MAX_FACTOR:g}x that resampling "
            "allows either way: check pixel_size= (or the file's metadata), or pass resample=false"
        )
    model = tuple(max(1, round(n * f)) for n, f in zip(shape, factors))
    return Grid(shape, model, pixel_size)


def grid_at(shape: Sequence[int], factor: float, pixel_size: PixelSize | None) -> Grid:
    """The grid that shows an input of ``shape`` ``factor`` times as many pixels per axis
    (``scale=auto`` or ``diameter=``); the input's own within :data:`TOLERANCE`."""
    shape = tuple(int(n) for n in shape)
    if abs(factor - 1) <= TOLERANCE:
        return Grid(shape, shape, pixel_size)
    return Grid(shape, tuple(max(1, round(n * factor)) for n in shape), pixel_size)


def _times(factor: float) -> str:
    return f"{factor:.3g}x" if factor >= 1 else f"1/{1 / factor:.3g}x"


class Resampled:
    """A ``(C, *spatial)`` array-like seen on a grid of ``shape`` over the same field of
    view: pixel centres mapped as ``x = (j + 0.5) * n / m - 0.5`` (corners aligned), linear
    interpolation, the edge extended, and along an axis it shrinks a Gaussian of sigma
    ``(n / m - 1) / 2`` first against aliasing (as ``skimage.transform.resize``). A window
    reads only the source window it needs plus the Gaussian's reach. Indexed by a channel
    index and slices of step 1."""

    def __init__(self, source: Any, shape: Sequence[int]) -> None:
        self.source = source
        self.source_shape = tuple(int(n) for n in source.shape[1:])
        self.shape = (int(source.shape[0]), *(int(m) for m in shape))
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)
        self.axes = [_Axis(n, m) for n, m in zip(self.source_shape, self.shape[1:])]

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = () if index == (Ellipsis,) else index
        channel, *spatial = (*index, *(slice(None),) * (self.ndim - len(index)))
        windows = [axis.window(s) for axis, s in zip(self.axes, spatial)]
        block = np.asarray(
            self.source[(channel, *(slice(lo, hi) for lo, hi, _ in windows))], np.float32
        )
        lead = block.ndim - len(self.axes)  # 0 when the channel index was an integer
        for a, (axis, (lo, _, wanted)) in enumerate(zip(self.axes, windows)):
            block = axis.apply(block, lead + a, lo, wanted)
        return block

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self[...] if dtype is None else self[...].astype(dtype)


class _Axis:
    """One axis of a :class:`Resampled`: ``n`` source pixels onto ``m``."""

    def __init__(self, n: int, m: int) -> None:
        self.n, self.m, self.step = n, m, n / m
        self.sigma = max(0.0, (self.step - 1) / 2)
        self.reach = int(4.0 * self.sigma + 0.5) + 1 if self.sigma else 0  # scipy's truncate=4

    def window(self, index: slice) -> tuple[int, int, slice]:
        """``(lo, hi, wanted)``: the source pixels ``[lo, hi)`` that the target pixels
        ``wanted`` need."""
        start, stop, step = index.indices(self.m)
        if step != 1:
            raise ValueError(f"Resampled takes slices of step 1, not {step}")
        if stop <= start:
            return 0, 0, slice(start, start)
        first, last = self.coordinates(slice(start, stop))[[0, -1]]
        lo = max(0, math.floor(first) - self.reach)
        hi = min(self.n, math.floor(last) + 2 + self.reach)
        return lo, hi, slice(start, stop)

    def coordinates(self, wanted: slice) -> np.ndarray:
        j = np.arange(wanted.start, wanted.stop, dtype=np.float64)
        return np.clip((j + 0.5) * self.step - 0.5, 0, self.n - 1)

    def apply(self, block: np.ndarray, axis: int, lo: int, wanted: slice) -> np.ndarray:
        """The source window ``block`` (starting at source pixel ``lo`` on ``axis``)
        filtered and interpolated onto the target pixels ``wanted``."""
        if wanted.stop <= wanted.start:
            return np.take(block, [], axis=axis)
        if self.sigma:
            # Within the window the margin makes this the whole image's filter; at the
            # image's own edges "nearest" extends it, as resize's mode="edge".
            block = ndi.gaussian_filter1d(block, self.sigma, axis=axis, mode="nearest")
        x = self.coordinates(wanted) - lo
        left = np.floor(x).astype(np.intp)
        right = np.minimum(left + 1, block.shape[axis] - 1)
        w = (x - left).astype(np.float32).reshape([-1 if a == axis else 1
                                                   for a in range(block.ndim)])
        return np.take(block, left, axis=axis) * (1 - w) + np.take(block, right, axis=axis) * w


def nearest(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``labels`` on a grid of ``shape`` over the same field of view: each pixel takes the
    label of the source pixel its centre falls in."""
    return labels[np.ix_(*nearest_indices(labels.shape, shape))]


def nearest_indices(source: Sequence[int], shape: Sequence[int]) -> list[np.ndarray]:
    """Per axis, the source pixel each pixel of a grid of ``shape`` takes its label from
    (see :func:`nearest`)."""
    return [np.minimum(((np.arange(m) + 0.5) * (n / m)).astype(np.intp), n - 1)
            for n, m in zip(source, shape)]
