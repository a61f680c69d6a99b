"""Pixel weight maps and touching-instance separation of Ronneberger et al. (2015), Sec. 3.

The paper's weight map makes the thin background gaps between touching cells count in the
loss: (Eq. 2)

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2)),

with ``w_c`` balancing the class frequencies and ``d1``, ``d2`` the distances to the border of
the nearest and the second-nearest cell. Every function here works on 2D and 3D label images
alike (any number of dimensions, in fact).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
from scipy import ndimage as ndi
from tqdm import tqdm

#: Absolute size below which the border term is treated as zero by :func:`border_weight_map`.
BORDER_TOL = 1e-6
#: The largest w0: half of float32's largest, so a border weight plus a class weight stays
#: finite.
MAX_W0 = float(np.finfo(np.float32).max) / 2
#: Seconds an image's instances take before their progress bar shows.
PROGRESS_DELAY = 1.0

TwoNearest = Callable[
    [np.ndarray, Sequence[float], float, np.ndarray, bool], tuple[np.ndarray, np.ndarray]
]


def border_weight_map(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | None = "balanced",
    spacing: Sequence[float] | None = None,
    valid: np.ndarray | None = None,
    progress: bool = False,
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

    The result equals :func:`border_weight_map_direct` up to :data:`BORDER_TOL` (and float32
    rounding), but costs a few distance transforms of the image rather than one per
    instance: the border term drops below the tolerance once ``d1 + d2 > R = sigma *
    sqrt(2 * ln(w0 / tol))``, so each instance's distance map is only needed in a window
    around it and its neighbours within ``R`` (:func:`_two_nearest_windowed`). OpenCV, which
    albumentations installs, computes those transforms when importable; SciPy otherwise.
    The map is float32 and reproducible bit for bit. ``progress``: a bar over the instances
    of an image that takes more than a second (90,000 cells take a while).
    """
    return _weight_map(instances, w0, sigma, class_weights, spacing, valid, progress,
                       _two_nearest_windowed)


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
    return _weight_map(instances, w0, sigma, class_weights, spacing, valid, False,
                       _two_nearest_direct)


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
    progress: bool,
    two_nearest: TwoNearest,
) -> np.ndarray:
    """Eq. 2, given a way to find each pixel's distances to its two nearest instances."""
    instances = np.asarray(instances)
    if not np.issubdtype(instances.dtype, np.integer):
        raise TypeError(f"instances must be an integer array, got {instances.dtype}")
    if instances.min(initial=0) < 0:  # not background: an id Eq. 2 would silently drop
        raise ValueError(f"instances must be >= 0, got {instances.min()}")
    spacing = (1.0,) * instances.ndim if spacing is None else tuple(map(float, spacing))
    check_parameters(w0, sigma, spacing, instances.ndim)
    valid = np.ones(instances.shape, bool) if valid is None else np.asarray(valid, bool)

    foreground = instances > 0
    weight = _class_weight_map(foreground, valid, class_weights)
    top = instances.max(initial=0)
    if w0 > 0 and instances.min(where=foreground, initial=top) != top:  # two instances at least
        # Beyond this distance sum the border term is below BORDER_TOL.
        reach = sigma * np.sqrt(2 * max(np.log(w0 / BORDER_TOL), 0.0))
        needed = valid & ~foreground
        d1, d2 = two_nearest(instances, spacing, reach, needed, progress)
        border = np.add(d1, d2, dtype=np.float32)
        with np.errstate(over="ignore"):  # far sums overflow to inf: exp(-inf) = 0, as meant
            np.square(border, out=border)
        border *= np.float32(-1 / (2 * sigma**2))
        np.exp(border, out=border)
        border *= np.float32(w0)
        np.add(weight, border, out=weight, where=needed)
    return weight


def check_parameters(w0: float, sigma: float, spacing: Sequence[float], ndim: int) -> None:
    """ValueError unless Eq. 2 can be evaluated: a NaN, infinite or negative value would give
    a map of NaN, infinite or silently missing border terms."""
    if not (np.isfinite(w0) and 0 <= w0 <= MAX_W0):
        raise ValueError(f"w0 must be a finite number >= 0 (float32), got {w0}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    if len(spacing) != ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {ndim}D image")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must hold finite sizes > 0, got {tuple(spacing)}")


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
    weight = np.where(foreground, np.float32(per_class[1]), np.float32(per_class[0]))
    weight[~valid] = 0
    return weight


def _two_nearest_direct(
    instances: np.ndarray, spacing: Sequence[float], reach: float, needed: np.ndarray,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest instance, everywhere (``reach``,
    ``needed`` and ``progress`` unused)."""
    nearest = np.full((2, *instances.shape), np.inf)
    for k in np.unique(instances[instances > 0]):
        d = ndi.distance_transform_edt(instances != k, sampling=spacing)
        nearest = np.sort(np.stack([*nearest, d]), axis=0)[:2]
    return nearest[0], nearest[1]


def _two_nearest_windowed(
    instances: np.ndarray, spacing: Sequence[float], reach: float, needed: np.ndarray,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``d1 <= d2`` to the nearest and second-nearest instance (float32), exact on
    every ``needed`` pixel where ``d1 + d2 <= reach``; elsewhere never below the true values
    (up to +inf), which is all Eq. 2 needs: there the border term stays below the tolerance.

    Each instance ``k``'s distance map ``d_k`` is computed in a window only and merged into
    the running two smallest. A window may crop ``k``: ``d_k`` stays exact at every pixel
    ``x`` whose nearest point of ``k`` is in the window, and only grows elsewhere. A pair
    ``(k, j)`` matters only where ``d_k + d_j <= reach``; that set and the points of ``k``
    nearest to it lie in the pair's lens box (:func:`_lens_boxes`), so ``k``'s window is the
    bounding box of the lens boxes of all its pairs. An instance farther than ``reach`` from
    all others never matters and is skipped. The cost is a few distance transforms of the
    image, whatever the number of instances: per instance, a window of its size grown by at
    most ``reach``.
    """
    d1 = np.full(instances.shape, np.inf, np.float32)
    d2 = np.full(instances.shape, np.inf, np.float32)
    labels, lo, hi = _instance_boxes(instances)
    sampling = np.asarray(spacing, float)
    first, last = _lens_boxes(lo, hi, sampling, reach, instances.shape)
    # delay: a bar only for the images a person waits on.
    bar = tqdm(labels, desc="objects", unit="object", leave=False, delay=PROGRESS_DELAY,
               disable=not progress, mininterval=0.5)
    for k, label in enumerate(bar):
        if first[k, 0] < 0:
            continue
        window = tuple(slice(a, b + 1) for a, b in zip(first[k].tolist(), last[k].tolist()))
        d = _edt(instances[window] != label, sampling, reach)
        w1, w2 = d1[window], d2[window]  # views: the updates land in d1, d2
        np.minimum(w2, np.maximum(w1, d), out=w2)
        np.minimum(w1, d, out=w1)
    if np.all(sampling == sampling[0]):
        # Isotropic distances are s * sqrt(whole number). OpenCV's float32 ones vary in the
        # last bit with its thread scheduling: snapping them makes them exact and reproducible.
        for d in (d1, d2):
            d *= np.float32(1 / sampling[0])
            with np.errstate(over="ignore"):  # OpenCV's "no such pixel" is 2**64
                np.sqrt(np.rint(np.square(d, out=d), out=d), out=d)
            d *= np.float32(sampling[0])
    return d1, d2


def _instance_boxes(instances: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Labels present and their bounding boxes, first and last index per axis (K, ndim)."""
    top = int(instances.max(initial=0))
    if top > instances.size:  # sparse huge labels: find_objects would list every integer
        _, inverse = np.unique(instances, return_inverse=True)
        dense = np.where(instances > 0, inverse.reshape(instances.shape) + 1, 0)
        found = ndi.find_objects(dense)
        labels = [int(instances[box][dense[box] == i + 1][0]) if box else 0
                  for i, box in enumerate(found)]
    else:
        found = ndi.find_objects(instances)
        labels = list(range(1, len(found) + 1))
    keep = [i for i, box in enumerate(found) if box is not None]
    lo = np.array([[s.start for s in found[i]] for i in keep], int).reshape(-1, instances.ndim)
    hi = np.array([[s.stop - 1 for s in found[i]] for i in keep], int).reshape(-1, instances.ndim)
    return [labels[i] for i in keep], lo, hi


def _lens_boxes(
    lo: np.ndarray, hi: np.ndarray, sampling: np.ndarray, reach: float, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per instance, the bounding box of the lens boxes of all its pairs within ``reach``
    (first and last index per axis, clipped to the image); ``-1`` rows for a lone instance.

    The lens of instances ``k`` and ``j`` is where ``d_k + d_j <= reach``; it holds the
    points of ``k`` nearest to any of its pixels too (there ``d_k = 0`` and ``d_j`` is at
    most ``reach``). Along axis ``i`` a pixel at ``t`` is at least ``s_i * dist(t, [a0, a1])``
    from an instance whose box spans ``[a0, a1]``, so the lens lies where
    ``dist(t, [a0, a1]) + dist(t, [b0, b1]) <= r = reach / s_i``:
    ``max(a0 - r, b0 - r, (a0 + b0 - r) / 2) <= t <= min(a1 + r, b1 + r, (a1 + b1 + r) / 2)``.
    Both bounds grow with ``b0`` (``b1``), so over all pairs of ``k`` they are those of the
    smallest ``b0`` and the largest ``b1`` among its partners (:func:`_partner_extents`).
    """
    r = reach / sampling
    partners, first_lo, last_hi = _partner_extents(lo, hi, sampling, reach)
    a0, a1 = lo.astype(float), hi.astype(float)
    first = np.maximum(np.maximum(a0, first_lo) - r, (a0 + first_lo - r) / 2)
    last = np.minimum(np.minimum(a1, last_hi) + r, (a1 + last_hi + r) / 2)
    top = np.asarray(shape) - 1
    first = np.clip(np.ceil(first - 1e-9), 0, top)
    last = np.clip(np.floor(last + 1e-9), 0, top)
    lonely = ~partners[:, None]
    return np.where(lonely, -1, first).astype(int), np.where(lonely, -1, last).astype(int)


#: Instances whose partners :func:`_partner_extents` looks for at once (bounds its temporaries).
PARTNER_BLOCK = 64


def _partner_extents(
    lo: np.ndarray, hi: np.ndarray, sampling: np.ndarray, reach: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per instance: whether another instance's box lies within ``reach`` of its own (its
    partners: a lower bound on their distance), and the partners' smallest first and largest
    last index per axis (``+inf`` and ``-inf`` without one).

    Instances are taken in blocks of neighbours (sorted by a grid of cells half the reach
    wide), each against the instances whose boxes meet the block's box grown by ``reach``:
    a band of first indices along axis 0, found by bisection. The cost follows the instances
    near each one, not their square.
    """
    n, ndim = lo.shape
    r = reach / sampling
    partners = np.zeros(n, bool)
    first_lo = np.full((n, ndim), np.inf)
    last_hi = np.full((n, ndim), -np.inf)
    if n < 2:
        return partners, first_lo, last_hi
    cells = lo // np.maximum(r / 2, 1).astype(int)
    order = np.lexsort(cells.T[::-1])
    by_start = np.argsort(lo[:, 0], kind="stable")
    starts = lo[by_start, 0]
    longest = int((hi[:, 0] - lo[:, 0]).max())
    lo_f, hi_f = lo.astype(float), hi.astype(float)
    for begin in range(0, n, PARTNER_BLOCK):
        block = order[begin : begin + PARTNER_BLOCK]
        grown_lo = lo_f[block].min(axis=0) - r
        grown_hi = hi_f[block].max(axis=0) + r
        band = by_start[np.searchsorted(starts, grown_lo[0] - longest, "left") :
                        np.searchsorted(starts, grown_hi[0], "right")]
        near = np.all((lo_f[band] <= grown_hi) & (hi_f[band] >= grown_lo), axis=1)
        others = band[near]
        dist2 = 0.0
        for i in range(ndim):
            a0, a1 = lo_f[block, i, None], hi_f[block, i, None]
            b0, b1 = lo_f[others, i], hi_f[others, i]
            gap = np.maximum(np.maximum(b0 - a1, a0 - b1), 0) * sampling[i]
            dist2 = dist2 + gap * gap
        pair = (dist2 <= reach**2) & (block[:, None] != others)
        partners[block] = pair.any(axis=1)
        for i in range(ndim):
            first_lo[block, i] = np.where(pair, lo_f[others, i], np.inf).min(axis=1, initial=np.inf)
            last_hi[block, i] = np.where(pair, hi_f[others, i], -np.inf).max(axis=1,
                                                                               initial=-np.inf)
    return partners, first_lo, last_hi


def _edt(outside: np.ndarray, sampling: np.ndarray, reach: float = np.inf) -> np.ndarray:
    """Euclidean distance (float32) of each pixel to the nearest False pixel, exact where it
    is at most ``reach`` and never below the truth elsewhere (+inf, or huge, without any
    False pixel).

    OpenCV's exact 2D transform (Felzenszwalb and Huttenlocher 2012) is several times faster
    than SciPy's. It serves 2D windows with square pixels, and volumes with square pixels in
    the plane: per slice, then along depth by brute force over the offsets within ``reach``
    (the separable scheme of Saito and Toriwaki 1994: ``d^2(z) = min_z' (s_z (z - z'))^2 +
    e^2(z')``, ``e`` the in-plane distance). SciPy's feature transform serves the rest (its
    own float64 distances from it would cost half as much again).
    """
    cv2 = _opencv()
    ndim = outside.ndim
    if cv2 is None or ndim not in (2, 3) or sampling[-1] != sampling[-2]:
        return _edt_scipy(outside, sampling)
    plane = np.float32(sampling[-1])
    if ndim == 2:
        d = cv2.distanceTransform(outside.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return d if plane == 1 else d * plane
    # In-plane transforms of the slices holding False pixels only; the others are +inf.
    occupied = np.flatnonzero(~outside.reshape(len(outside), -1).all(axis=1))
    out = np.full(outside.shape, np.inf, np.float32)
    if not occupied.size:
        return out
    first, stop = int(occupied[0]), int(occupied[-1]) + 1
    e = np.empty((stop - first, *outside.shape[1:]), np.float32)
    for i, z in enumerate(range(first, stop)):
        cv2.distanceTransform(outside[z].view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE,
                              dst=e[i])
    scratch = np.empty_like(e)
    depth = len(outside) if np.isinf(reach) else int(reach / sampling[0])
    with np.errstate(over="ignore"):  # OpenCV's "no False pixel" is 2**64: inf once squared
        # Squared pixel distances are whole numbers: snapping them makes the sums exact.
        np.rint(np.square(e, out=e), out=e)
        e *= plane**2
        # Each source slice z' reaches the slices z = z' + dz within the depth bound.
        for dz in range(-depth, depth + 1):
            lo, hi = max(first, -dz), min(stop, len(outside) - dz)
            if lo < hi:
                candidate = np.add(e[lo - first : hi - first], np.float32((dz * sampling[0]) ** 2),
                                   out=scratch[: hi - lo])
                np.minimum(out[lo + dz : hi + dz], candidate, out=out[lo + dz : hi + dz])
    return np.sqrt(out, out=out)


def _edt_scipy(outside: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    if outside.all():  # SciPy would measure to a point outside the array
        return np.full(outside.shape, np.inf, np.float32)
    nearest = ndi.distance_transform_edt(
        outside, sampling=sampling, return_distances=False, return_indices=True
    )
    squared = np.zeros(outside.shape, np.float32)
    for axis, (n, s) in enumerate(zip(outside.shape, sampling.tolist())):
        offset = nearest[axis]
        np.subtract(offset, np.arange(n).reshape((-1,) + (1,) * (outside.ndim - axis - 1)),
                    out=offset)
        np.multiply(offset, offset, out=offset)
        squared += offset if s == 1 else np.float32(s * s) * offset
    return np.sqrt(squared, out=squared)


@functools.cache
def _opencv() -> ModuleType | None:
    """``cv2`` if importable (albumentations installs it), else None."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2
