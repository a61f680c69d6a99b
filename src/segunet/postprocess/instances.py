"""Instances (one label per object) from the class probabilities of a semantic U-Net.

The U-Net predicts classes, not objects. Trained with the border weights of Ronneberger et al.
(2015, Sec. 3, Eq. 2), it learns to leave a thin background gap between touching cells, so the
connected components of its foreground are already the objects in most cases. Where the gap is
incomplete, a marker-controlled watershed splits what the components merge: on the Euclidean
distance transform of the foreground (seeds: one per round blob) or on the foreground
probability itself (seeds: its peaks). Pure functions of numpy arrays, 2D and 3D alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

Method = Literal["components", "watershed"]
WatershedOn = Literal["distance", "probability"]


def foreground_probability(
    probs: np.ndarray, foreground_classes: Sequence[int] = (1,)
) -> np.ndarray:
    """``sum_k probs[k]`` over the foreground classes ``k``: ``(C, *S) -> (*S)`` float32."""
    probs = np.asarray(probs)
    classes = [int(k) for k in foreground_classes]
    if probs.ndim < 2:
        raise ValueError(f"probabilities must be (classes, *spatial), got shape {probs.shape}")
    if not classes or any(not 0 <= k < probs.shape[0] for k in classes):
        raise ValueError(
            f"foreground_classes={classes} must name classes in 0..{probs.shape[0] - 1} "
            f"(the probabilities have {probs.shape[0]} classes)"
        )
    return probs[classes].sum(axis=0, dtype=np.float32)


def instances_from_probabilities(
    probs: np.ndarray,
    foreground_classes: Sequence[int] = (1,),
    threshold: float = 0.5,
    method: Method = "components",
    min_size: int = 0,
    watershed_on: WatershedOn = "distance",
    min_distance: int = 3,
    h: float | None = None,
    connectivity: int = 1,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Label each object of the thresholded foreground 1..K; background 0. Returns int32.

    Args:
        probs: ``(C, *spatial)`` softmax probabilities, 2D or 3D spatial.
        foreground_classes: classes whose summed probability is the foreground probability.
        threshold: foreground where that probability is > ``threshold``.
        method: ``"components"``: connected components of the foreground; ``"watershed"``:
            a marker-controlled watershed inside the foreground (skimage), one seed per peak.
        min_size: objects of fewer pixels are removed (skimage's ``remove_small_objects``:
            sizes ``< min_size`` go); 0 keeps all.
        watershed_on: flood the distance transform of the foreground (``"distance"``: splits
            touching round cells at their neck) or the foreground probability
            (``"probability"``: splits along the net's own low-probability border).
        min_distance: seeds are the local maxima in a ``(2 * min_distance + 1)``-wide window
            (``peak_local_max``); adjacent maxima of one plateau merge into one seed.
        h: if given, seeds are the h-maxima instead (maxima at least ``h`` above their
            surroundings, in pixels of distance or in probability): more robust to noisy peaks.
        connectivity: 1 joins pixels across faces only, ``ndim`` also across corners. The
            default, 1, keeps cells apart that the net separated by a one-pixel diagonal gap.
        spacing: pixel size per axis for the distance transform of anisotropic volumes.

    Every foreground component gets at least one label: one that received no seed (too small
    for ``h``) keeps its component label rather than vanishing.
    """
    return instances_from_foreground(
        foreground_probability(probs, foreground_classes), threshold, method, min_size,
        watershed_on, min_distance, h, connectivity, spacing,
    )


def instances_from_foreground(
    fg_prob: np.ndarray,
    threshold: float = 0.5,
    method: Method = "components",
    min_size: int = 0,
    watershed_on: WatershedOn = "distance",
    min_distance: int = 3,
    h: float | None = None,
    connectivity: int = 1,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """:func:`instances_from_probabilities` from the foreground probability ``(*spatial)``
    alone: for large images, where the class probabilities do not fit in memory."""
    fg_prob = np.asarray(fg_prob, dtype=np.float32)
    mask = fg_prob > threshold
    structure = ndi.generate_binary_structure(mask.ndim, connectivity)
    if method == "components":
        labels = ndi.label(mask, structure=structure)[0]
    elif method == "watershed":
        labels = _watershed(mask, fg_prob, watershed_on, min_distance, h, structure, spacing)
    else:
        raise ValueError(f"method must be 'components' or 'watershed', got {method!r}")
    return relabel_sequential(remove_small(labels, min_size))


def _watershed(
    mask: np.ndarray,
    fg_prob: np.ndarray,
    on: WatershedOn,
    min_distance: int,
    h: float | None,
    structure: np.ndarray,
    spacing: Sequence[float] | None,
) -> np.ndarray:
    from skimage.segmentation import watershed

    if on == "distance":
        height = ndi.distance_transform_edt(mask, sampling=spacing)
    elif on == "probability":
        height = np.where(mask, fg_prob, 0).astype(np.float32)
    else:
        raise ValueError(f"watershed_on must be 'distance' or 'probability', got {on!r}")
    markers = ndi.label(_seeds(height, mask, min_distance, h), structure=structure)[0]
    labels = watershed(-height, markers, mask=mask, connectivity=structure)
    # Foreground the flood never reached (a component without a seed) keeps its component.
    missed = mask & (labels == 0)
    if missed.any():
        extra, _ = ndi.label(missed, structure=structure)
        labels = np.where(extra > 0, extra + labels.max(), labels)
    return labels


def _seeds(height: np.ndarray, mask: np.ndarray, min_distance: int, h: float | None) -> np.ndarray:
    """Boolean seed mask: h-maxima if ``h`` is given, else local maxima (peak_local_max)."""
    if h is not None:
        from skimage.morphology import h_maxima

        return h_maxima(height, h).astype(bool) & mask
    from skimage.feature import peak_local_max

    seeds = np.zeros(mask.shape, bool)
    components = ndi.label(mask)[0]
    # Per component (labels=...) so that a small object next to a large one keeps its peak.
    peaks = peak_local_max(
        height, min_distance=max(int(min_distance), 1), labels=components, exclude_border=False
    )
    seeds[tuple(peaks.T)] = True
    return seeds


def instances_from_boundary(
    interior: np.ndarray,
    boundary: np.ndarray,
    threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_size: int = 0,
    connectivity: int = 1,
) -> np.ndarray:
    """Objects of a net trained on the ``boundary`` target (classes background, interior,
    boundary; :mod:`segunet.data.targets`), from its interior and boundary probabilities
    ``(*spatial)``. Returns int32 labels 1..K, background 0.

    Seeds are the connected components of ``P(interior) > seed_threshold``; they are flooded
    over the foreground ``P(interior) + P(boundary) > threshold`` by a watershed on
    ``P(boundary)``, so touching objects part where the net sees their common boundary. A
    foreground component without a seed (an object too thin for an interior) keeps its own
    label. Objects of fewer than ``min_size`` pixels go.
    """
    from skimage.segmentation import watershed

    interior = np.asarray(interior, dtype=np.float32)
    boundary = np.asarray(boundary, dtype=np.float32)
    if interior.shape != boundary.shape:
        raise ValueError(f"interior {interior.shape} and boundary {boundary.shape} differ")
    mask = interior + boundary > threshold
    structure = ndi.generate_binary_structure(mask.ndim, connectivity)
    markers = ndi.label(mask & (interior > seed_threshold), structure=structure)[0]
    labels = watershed(boundary, markers, mask=mask, connectivity=structure)
    missed = mask & (labels == 0)
    if missed.any():
        extra = ndi.label(missed, structure=structure)[0]
        labels = np.where(extra > 0, extra + labels.max(), labels)
    return relabel_sequential(remove_small(labels, min_size))


def grow_into_gaps(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Close the gaps up to ``2 * width`` pixels wide between touching objects, giving each
    gap pixel to its nearest object: what a net trained on separated touching objects
    (separation takes the contact pixels of both, a gap 2 wide) leaves open. A gap pixel is
    background inside the morphological closing (radius ``width``) of the foreground, so
    outer outlines stay, with two or more objects within ``2 * width`` pixels, so a lone
    object's concave outline stays. No object takes another's pixels: objects never merge."""
    from skimage.segmentation import expand_labels

    labels = np.asarray(labels)
    if width <= 0 or not labels.any():
        return labels
    width = int(width)
    reach = 4 * width + 1  # a window of radius 2 * width
    largest = ndi.maximum_filter(labels, size=reach, mode="constant", cval=0)
    top = labels.max()
    smallest = ndi.minimum_filter(np.where(labels > 0, labels, top), size=reach, mode="nearest")
    # Closing with the image beyond its border counted as foreground: gaps that run out of
    # the image close up to the border too.
    footprint = np.ones((2 * width + 1,) * labels.ndim, bool)
    closed = ndi.binary_erosion(ndi.binary_dilation(labels > 0, footprint), footprint,
                                border_value=1)
    gap = (labels == 0) & closed & (largest > 0) & (smallest < largest)
    grown = expand_labels(labels, distance=2 * width)
    return np.where(gap, grown, labels).astype(labels.dtype)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` with the objects of fewer than ``min_size`` pixels set to 0."""
    if min_size <= 0 or not labels.any():
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..K in order of their old value (0 stays 0), as int32."""
    # A lookup table over the old values: linear time, unlike np.unique's sort.
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    lut = np.zeros(present.size, np.int32)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return lut[labels]
