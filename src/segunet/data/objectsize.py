"""How large the objects of a label image are: the equivalent diameter (of the disc, or in
3D the ball, of the same area or volume), in pixels.

Training records the typical diameter of its objects in the checkpoint; ``segunet predict
scale=auto`` measures the objects the model finds in an image the same way and resamples
the image so that they come out that size (see :mod:`segunet.infer.scale`), and
``segunet plan`` reports the distribution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np


def diameters_of_sizes(sizes: np.ndarray, dims: int) -> np.ndarray:
    """Equivalent diameters of objects of ``sizes`` pixels (areas in 2D, volumes in 3D)."""
    sizes = np.asarray(sizes, np.float64)
    if dims == 2:
        return 2 * np.sqrt(sizes / math.pi)
    return np.cbrt(6 * sizes / math.pi)


def equivalent_diameters(labels: np.ndarray, exclude_border: bool = False) -> np.ndarray:
    """The equivalent diameter of each object (id > 0) of ``labels``, px; with
    ``exclude_border``, objects touching the array's edge left out (they are cut)."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel().astype(np.int64, copy=False))
    present = sizes > 0
    present[0] = False
    if exclude_border:
        for axis in range(labels.ndim):
            for side in (0, -1):
                present[np.take(labels, side, axis=axis)] = False
    return diameters_of_sizes(sizes[present], labels.ndim)


def typical_diameters(
    label_images: Iterable[np.ndarray | None],
) -> tuple[float, float, float] | None:
    """The quartiles (25, 50, 75%) over images of each image's median object diameter (px),
    so that images of many small objects do not outvote the rest; None when no image holds
    an object."""
    medians = []
    for labels in label_images:
        if labels is None:
            continue
        d = equivalent_diameters(labels)
        if len(d):
            medians.append(float(np.median(d)))
    if not medians:
        return None
    q1, q2, q3 = (float(v) for v in np.percentile(medians, [25, 50, 75]))
    return q1, q2, q3


def object_size_record(quartiles: tuple[float, float, float] | None) -> dict[str, Any] | None:
    """A checkpoint's ``object_size`` entry: the typical training object's diameter and the
    range of the middle half of the training images, in the pixels of the grid the model
    was trained on."""
    if quartiles is None:
        return None
    q1, q2, q3 = (round(float(v), 3) for v in quartiles)
    return {"diameter": q2, "range": [q1, q3], "unit": "pixel",
            "measured": "quartiles over training images of their median equivalent diameter"}
