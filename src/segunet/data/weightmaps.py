"""Pixel weight maps and touching-instance separation of Ronneberger et al. (2015), Sec. 3.

The paper's weight map makes the thin background gaps between touching cells count in the
loss: (Eq. 2)

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2)),

with ``w_c`` balancing the class frequencies and ``d1``, ``d2`` the distances to the border of
the nearest and the second-nearest cell. Every function here works on 2D and 3D label images
alike (any number of dimensions, in fact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

#: Absolute size below which the border term is treated as zero by :func:`border_weight_map`.
BORDER_TOL = 1e-6

TwoNearest = Callable[[np.ndarray, Sequence[float], float], tuple[np.ndarray, np.ndarray]]


def border_weight_map(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | None = "balanced",
    spacing: Sequence[float] | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """The paper's pixel weight map (Eq. 2) of an instance label image, 2D or 3D.

    ``instances`` holds non-negative integers: 0 is background, ``k > 0`` is instance ``k``.
    On background pixels ``w = w_c + w0 * exp(-(d1 + d2)**2 / (2 * sigma**2))``, ``d1 <= d2``
    being the Euclidean distances to the nearest and second-nearest instance (in pixels, or
    in the physical units of ``spacing``, as is ``sigma`` then); on instance pixels
    ``w = w_c``. With fewer than
    two instances there is no border term.

    ``class_weights="balanced"`` gives every class present the same total weight,
    ``w_c = N / (C * N_c)`` with ``N`` pixels, ``N_c`` of them in class ``c`` and ``C``
    classes present (so ``N / (2 * N_c)`` usually, and 1 when an image holds one class
    only); ``None`` gives ``w_c = 1``. Only pixels where ``valid`` is True are counted, and
    the weight is 0 elsewhere.

    The result equals :func:`border_weight_map_direct` up to :data:`BORDER_TOL`, but costs
    about one distance transform of the image rather than one per instance: the border term
    drops below the tolerance once ``d1 + d2 > R = sigma * sqrt(2 * ln(w0 / tol))``, so each
    instance's distance transform is only needed within ``R`` of its bounding box.
    """
    return _weight_map(instances, w0, sigma, class_weights, spacing, valid, _two_nearest_windowed)


def border_weight_map_direct(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | None = "balanced",
    spacing: Sequence[float] | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Reference for :func:`border_weight_map`: one full-image distance transform per
    instance. Exact, but its cost grows with pixels x instances."""
    return _weight_map(instances, w0, sigma, class_weights, spacing, valid, _two_nearest_direct)


def separate_touching(instances: np.ndarray) -> np.ndarray:
    """Set to background every instance pixel with a different instance among its 3^d - 1
    neighbours (8 in 2D, 26 in 3D), opening a gap between touching instances.

    This is how the U-Net authors' reference implementation prepares touching cells, whose
    gap the border term of :func:`border_weight_map` then emphasises. A pixel labelled ``l``
    touches another instance iff the largest label around it exceeds ``l`` or the smallest
    non-zero label around it is below ``l``; the image border is not a different instance.
    """
    instances = np.asarray(instances)
    footprint = np.ones((3,) * instances.ndim, dtype=bool)
    # "nearest" extends the image by its own edge values, which cannot be a different label.
    largest = ndi.maximum_filter(instances, footprint=footprint, mode="nearest")
    # Background must not lower the minimum: give it the largest label, which cannot be below
    # a pixel's own (an out-of-range sentinel could overflow in scipy's filter buffers).
    nonzero = np.where(instances > 0, instances, instances.max(initial=0))
    smallest = ndi.minimum_filter(nonzero, footprint=footprint, mode="nearest")
    touching = (instances > 0) & ((largest != instances) | (smallest != instances))
    return np.where(touching, 0, instances).astype(instances.dtype, copy=False)


def _weight_map(
    instances: np.ndarray,
    w0: float,
    sigma: float,
    class_weights: str | None,
    spacing: Sequence[float] | None,
    valid: np.ndarray | None,
    two_nearest: TwoNearest,
) -> np.ndarray:
    """Eq. 2, given a way to find each pixel's distances to its two nearest instances."""
    instances = np.asarray(instances)
    if not np.issubdtype(instances.dtype, np.integer):
        raise TypeError(f"instances must be an integer array, got {instances.dtype}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    spacing = (1.0,) * instances.ndim if spacing is None else tuple(map(float, spacing))
    if len(spacing) != instances.ndim:
        raise ValueError(f"spacing {spacing} does not match a {instances.ndim}D image")
    valid = np.ones(instances.shape, bool) if valid is None else np.asarray(valid, bool)

    foreground = instances > 0
    weight = _class_weight_map(foreground, valid, class_weights)
    labels = instances[foreground]
    if w0 > 0 and labels.size and labels.min() != labels.max():  # two instances at least
        # Beyond this distance sum the border term is below BORDER_TOL.
        reach = sigma * np.sqrt(2 * max(np.log(w0 / BORDER_TOL), 0.0))
        d1, d2 = two_nearest(instances, spacing, reach)
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
        weight += np.where(foreground | ~valid, 0, border).astype(np.float32)
    return weight


def _class_weight_map(
    foreground: np.ndarray, valid: np.ndarray, class_weights: str | None
) -> np.ndarray:
    """``w_c``: 1 or class balancing (``N / (C * N_c)``) on valid pixels, 0 elsewhere."""
    if class_weights is None:
        return valid.astype(np.float32)
    if class_weights != "balanced":
        raise ValueError(f"class_weights must be 'balanced' or None, got {class_weights!r}")
    counts = np.array([np.sum(~foreground & valid), np.sum(foreground & valid)], dtype=float)
    present = np.count_nonzero(counts)
    # An absent class gets no weight (and no division by zero): it has no pixels to weigh.
    per_class = np.divide(counts.sum(), present * counts, out=np.zeros(2), where=counts > 0)
    return np.where(valid, np.where(foreground, per_class[1], per_class[0]), 0).astype(np.float32)


def _two_nearest_direct(
    instances: np.ndarray, spacing: Sequence[float], reach: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest instance, everywhere (``reach`` unused)."""
    nearest = np.full((2, *instances.shape), np.inf)
    for k in np.unique(instances[instances > 0]):
        d = ndi.distance_transform_edt(instances != k, sampling=spacing)
        nearest = np.sort(np.stack([*nearest, d]), axis=0)[:2]
    return nearest[0], nearest[1]


def _two_nearest_windowed(
    instances: np.ndarray, spacing: Sequence[float], reach: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest instance, exact wherever ``d1 + d2 <=
    reach``; elsewhere they may be overestimated (up to +inf), which is all Eq. 2 needs.

    Each instance's distance transform is computed in its bounding box grown by ``reach``:
    the whole instance lies inside that window, so the window's transform is exact there,
    and outside it the instance is farther than ``reach``.
    """
    d1 = np.full(instances.shape, np.inf)
    d2 = np.full(instances.shape, np.inf)
    margin = [int(np.ceil(reach / s)) for s in spacing]
    for k, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(sl.start - m, 0), min(sl.stop + m, n))
            for sl, m, n in zip(box, margin, instances.shape)
        )
        d = ndi.distance_transform_edt(instances[window] != k, sampling=spacing)
        # Merge into the running two smallest; views write straight into d1, d2.
        w1, w2 = d1[window], d2[window]
        np.minimum(w2, np.maximum(w1, d), out=w2)
        np.minimum(w1, d, out=w1)
    return d1, d2
