"""What the network learns from instance labels: the training target, a config choice; and
the task metric it is judged by (``data.metric``, scored by :mod:`segunet.eval.metrics`).

- ``foreground``: foreground / background, touching objects first separated by a one-pixel
  gap (Ronneberger et al. 2015); decoded by connected components.
- ``boundary``: background / object interior / object boundary, the boundary being each
  object's inner contour (touching borders included), as the top DSB 2018 entries trained;
  decoded by a seeded watershed (:func:`segunet.postprocess.instances.instances_from_boundary`).

The border weight map of the paper applies to both: its term ``w0 * exp(-(d1 + d2)^2 /
(2 sigma^2))`` rises between touching objects, on the gap (foreground) or on the boundary
pixels that meet there (boundary). Pure functions of label arrays, any dimension.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Target = Literal["foreground", "boundary"]
TARGETS: dict[str, list[str]] = {
    "foreground": ["background", "foreground"],
    "boundary": ["background", "interior", "boundary"],
}
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def check_target(target: str) -> None:
    from segunet.errors import SegunetError

    if target not in TARGETS:
        raise SegunetError(f"data.target={target!r} is unknown: use {' or '.join(TARGETS)}")


#: ``data.metric``: what validation reports, ``best.pt`` is chosen by and post-processing is
#: tuned for. Pixel Dice of the classes, foreground IoU, DSB 2018 mean AP of the objects, or
#: ISBI 2012 V_Rand of the objects.
Metric = Literal["dice", "iou", "ap", "vrand"]
#: What each task metric (``data.metric``) scores.
TASK_METRICS: dict[str, str] = {
    "dice": "mean foreground Dice of the classes",
    "iou": "foreground IoU",
    "ap": "DSB 2018 mean AP over IoU 0.5:0.95",
    "vrand": "ISBI 2012 V_Rand",
}
#: Metrics of objects: they need instance (or binary) labels, and decoded instances.
OBJECT_METRICS = ("ap", "vrand")


def check_metric(metric: str) -> None:
    from segunet.errors import SegunetError

    if metric not in TASK_METRICS:
        raise SegunetError(
            f"data.metric={metric!r} is unknown: use one of {', '.join(TASK_METRICS)}"
        )


def boundary_classes(instances: np.ndarray) -> np.ndarray:
    """``(*S)`` int64: 0 background, 1 interior, 2 boundary. A boundary pixel is an object
    pixel with a face neighbour (4 in 2D, 6 in 3D) of another label, background or another
    object; the image border is not a boundary (the object may continue beyond it)."""
    from skimage.segmentation import find_boundaries

    instances = np.asarray(instances)
    contour = find_boundaries(instances, connectivity=1, mode="inner", background=0)
    classes = np.where(instances > 0, INTERIOR, BACKGROUND).astype(np.int64)
    classes[contour & (instances > 0)] = BOUNDARY
    return classes


def interiors(instances: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The instances with their boundary pixels removed: what the border term measures
    distances to, so that boundary pixels between touching objects are weighted up."""
    return np.where(classes == INTERIOR, instances, 0).astype(instances.dtype, copy=False)
