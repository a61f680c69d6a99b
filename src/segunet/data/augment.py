"""Geometric augmentations that keep image, label, weight and ignore mask in register.

One random draw per sample is applied to every array of the sample dict, so the targets can
never drift from the image (the weak spot of pipelines that sync transforms by seed).
"""

from __future__ import annotations

import numpy as np

SPATIAL_KEYS = ("image", "label", "weight", "ignore")


def flip_rot90(sample: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random flips along every spatial axis and a random multiple of 90 degrees in the last
    two axes (the image plane), the symmetries of a microscope image.

    ``image`` is (C, *spatial); the other arrays are (*spatial). Both the network input and
    the (smaller) output tile share a centre, so the same flip keeps them aligned.
    """
    ndim = sample["label"].ndim
    flips = [ax for ax in range(ndim) if rng.random() < 0.5]
    k = int(rng.integers(4))
    # Decide once from the label: a square output tile means a square input tile too.
    rotate = k > 0 and sample["label"].shape[-1] == sample["label"].shape[-2]
    out = dict(sample)
    for key in SPATIAL_KEYS:
        if key not in sample:
            continue
        arr = sample[key]
        lead = arr.ndim - ndim  # channel axes in front of the spatial ones
        if flips:
            arr = np.flip(arr, axis=[lead + ax for ax in flips])
        if rotate:
            arr = np.rot90(arr, k, axes=(-2, -1))
        out[key] = np.ascontiguousarray(arr)
    return out
