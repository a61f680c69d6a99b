"""``scale=auto``: the object scale of an image that records no pixel size, estimated from
the image with the model itself, so that it is predicted at the scale the model was trained
at.

A segmentation net finds objects over a range of sizes around those it was trained on, and
outside that range fails in a way that can be seen: objects far too small vanish, objects
far too large come out in pieces of about the trained size. So the model is run on a window
of the image, resampled by a factor ``f``, and the median equivalent diameter of the objects
it finds is compared with the training ones recorded in the checkpoint (``object_size``: the
middle half of the training images, and their median). Objects in the range are left at
their scale: the model knows them as they are, and resampling blurs. Objects outside it are
brought to the median training size, the middle of what the model knows; as cellpose
refines its diameter estimate from the masks it finds, ``f`` is moved until the objects
found are in the range (with :data:`CLOSE` to spare).

A fixed point can be false: objects 4x too large found as pieces of the trained size. So
every fixed point is checked on a coarser view (``f / COARSER``): true objects measure the
same size in the image's pixels there, while pieces measure larger (at least ``COARSER``
times: pieces of a fixed size in the model's pixels), and the search goes on, coarser.

:func:`search_scale` is the search, given any ``measure(f)``; :func:`measure_objects` is the
measure with a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from segunet.data.objectsize import equivalent_diameters
from segunet.errors import SegunetError
from segunet.infer.resample import MAX_FACTOR, TOLERANCE, Resampled

#: Converged when the objects found are within this factor of the training size.
CLOSE = 1.15
#: The coarser view of a fixed point, and how much larger its objects must measure (in the
#: image's pixels) to show that the fixed point's objects were pieces. Pieces of a fixed
#: size in the model's pixels measure COARSER times larger there, whole objects the same.
COARSER, SPLIT = 1.5, 1.25
#: Measures made at most for one image.
MAX_MEASURES = 8
#: Factors tried, in this order, while the model finds no object at all.
LADDER = (1.0, 0.5, 2.0, 0.25, 4.0, 0.125, 8.0)
#: The side of the window measured, in the model's pixels, per spatial dims.
WINDOW = {2: 512, 3: 96}
#: Fewer objects than this away from the window's edge: the cut ones are counted too.
MIN_WHOLE = 5


@dataclasses.dataclass(frozen=True)
class Measure:
    """What the model found at ``factor``: the median object diameter in the image's pixels
    (None: no object) and the count of objects it is the median of."""

    factor: float
    diameter: float | None
    objects: int


@dataclasses.dataclass(frozen=True)
class ScaleEstimate:
    """The factor (model pixels per image pixel) an image is predicted at, and why:
    ``diameter`` (image px) of ``objects`` found, against the model's ``trained`` sizes
    (the training images' quartiles: low, median, high)."""

    factor: float
    diameter: float | None
    objects: int
    trained: tuple[float, float, float]
    measures: tuple[Measure, ...] = ()

    def describe(self) -> str:
        if self.diameter is None:
            return (f"scale=auto found no objects at any scale from 1/{MAX_FACTOR:g}x to "
                    f"{MAX_FACTOR:g}x: predicted as it is")
        found = (f"objects about {self.diameter:.1f} px across (the median of "
                 f"{self.objects} found)" if self.measures else
                 f"objects {self.diameter:g} px across (diameter=)")
        lo, _, hi = self.trained
        return f"{found}, the model's {lo:.1f} to {hi:.1f} px"


def into(diameter: float, trained: tuple[float, float, float], slack: float = 1.0) -> float:
    """The factor that brings objects ``diameter`` px across to the ``trained`` sizes: 1 in
    their range (widened by ``slack``), else to their median; within ``1/MAX_FACTOR ..
    MAX_FACTOR``."""
    lo, mid, hi = trained
    return 1.0 if lo / slack <= diameter <= hi * slack else clamp(mid / diameter)


def search_scale(measure: Callable[[float], Measure], trained: tuple[float, float, float]
                 ) -> ScaleEstimate:
    """The factor that brings the objects ``measure`` finds to the ``trained`` sizes (px;
    see the module's docstring), within ``1/MAX_FACTOR .. MAX_FACTOR``; 1 when none is
    found."""
    done: dict[float, Measure] = {}

    def at(factor: float) -> Measure:
        factor = clamp(factor)
        key = round(factor, 6)
        if key not in done:
            done[key] = measure(factor)
        return done[key]

    def estimate(factor: float, m: Measure) -> ScaleEstimate:
        return ScaleEstimate(factor, m.diameter, m.objects, trained, tuple(done.values()))

    factor = 1.0
    while len(done) < MAX_MEASURES:
        m = at(factor)
        if m.diameter is None:
            untried = [f for f in LADDER if round(clamp(f), 6) not in done]
            if not untried:
                break
            factor = untried[0]
            continue
        wanted = clamp(into(m.diameter * m.factor, trained, CLOSE) * m.factor)
        if wanted != m.factor:
            if round(wanted, 6) in done:  # a cycle: settle on the best measure
                break
            factor = wanted
            continue
        coarse = at(m.factor / COARSER) if m.factor / COARSER >= 1 / MAX_FACTOR else None
        if coarse and coarse.diameter and coarse.diameter > SPLIT * m.diameter:
            # They were pieces: on, at least one step coarser (the coarse view's objects may
            # be pieces still, of the same size in its pixels).
            factor = min(into(coarse.diameter, trained), coarse.factor / COARSER)
            if round(factor, 6) in done:
                break
            continue
        return estimate(wanted, m)
    found = [m for m in done.values() if m.diameter is not None]
    if not found:
        return ScaleEstimate(1.0, None, 0, trained, tuple(done.values()))
    # No fixed point within the measures: the one whose objects came closest to the range.
    best = min(found, key=lambda m: abs(math.log(into(m.diameter * m.factor, trained, CLOSE))))
    return estimate(into(best.diameter, trained), best)


def clamp(factor: float) -> float:
    return min(MAX_FACTOR, max(1 / MAX_FACTOR, factor))


def given_diameter(diameter: float, trained: tuple[float, float, float]) -> ScaleEstimate:
    """The estimate for objects the user says are ``diameter`` px across; a one-line error
    when that is beyond the :data:`MAX_FACTOR` resampling allows."""
    lo, mid, hi = trained
    factor = 1.0 if lo <= diameter <= hi else mid / diameter
    if max(factor, 1 / factor) > MAX_FACTOR:
        raise SegunetError(
            f"diameter={diameter:g} px is {max(factor, 1 / factor):.3g}x the model's "
            f"{mid:.1f} px objects, beyond the {MAX_FACTOR:g}x that "
            "resampling allows either way: check diameter= (the typical object's width in "
            "the input, px)"
        )
    return ScaleEstimate(factor, float(diameter), 0, trained)


def measure_objects(
    image: Any, factor: float, predict: Callable[[np.ndarray], np.ndarray],
    decode: Callable[[np.ndarray], np.ndarray],
) -> Measure:
    """The objects found in a central window of ``image`` ``(C, *spatial)`` (any array-like;
    only the window is read) resampled by ``factor``: ``predict`` gives the probabilities of
    an image and ``decode`` their objects. Objects cut by the window's edge are left out
    where enough others remain."""
    spatial = [int(n) for n in image.shape[1:]]
    side = WINDOW[len(spatial)]
    window = [min(n, max(1, math.ceil(side / factor))) for n in spatial]
    start = [(n - w) // 2 for n, w in zip(spatial, window)]
    crop = np.asarray(image[(slice(None), *(slice(s, s + w) for s, w in zip(start, window)))],
                      np.float32)
    if abs(factor - 1) > TOLERANCE:
        crop = Resampled(crop, [max(8, round(w * factor)) for w in window])[...]
    objects = decode(predict(crop))
    diameters = equivalent_diameters(objects, exclude_border=True)
    if len(diameters) < MIN_WHOLE:
        diameters = equivalent_diameters(objects)
    if not len(diameters):
        return Measure(factor, None, 0)
    scale = crop.shape[1] / window[0]  # the factor as resampled, after rounding
    return Measure(factor, float(np.median(diameters)) / scale, len(diameters))


def check_options(scale: str, diameter: float | None, pixel_size: Any, resample: bool = True
                  ) -> None:
    """``scale=`` and ``diameter=`` as given (one-line errors), with ``pixel_size=`` and
    ``resample=``, which they contradict."""
    if scale not in ("none", "auto"):
        raise SegunetError(f"scale={scale!r} is not valid: expected none or auto")
    if diameter is not None and not (math.isfinite(diameter) and diameter > 0):
        raise SegunetError(f"diameter={diameter} is not valid: expected a width in px > 0")
    asked = "diameter=" if diameter is not None else "scale=auto" if scale == "auto" else None
    if asked and (pixel_size is not None or not resample):
        other = "pixel_size=" if pixel_size is not None else "resample=false"
        raise SegunetError(f"{asked} and {other} contradict each other: give one")
    if diameter is not None and scale == "auto":
        raise SegunetError("scale=auto estimates what diameter= gives: give one")


def describe_factor(factor: float, shape: Sequence[int]) -> str:
    """``0.35x (352 x 350 px)``: a factor and the shape it gives."""
    return f"{factor:.3g}x ({' x '.join(str(max(1, round(n * factor))) for n in shape)} px)"
