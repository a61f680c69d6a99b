"""Pictures for people: colour maps and contact sheets as RGB arrays, saved as PNG.

Kept free of matplotlib (not a dependency): a few lines of numpy do what the previews need.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Colours of classes 1, 2, ... in class maps (0 stays black): green, magenta, cyan, ...
CLASS_COLOURS = [(0.2, 0.9, 0.2), (1.0, 0.2, 1.0), (0.2, 0.8, 1.0), (1.0, 0.8, 0.1),
                 (1.0, 0.3, 0.2), (0.6, 0.4, 1.0)]


def hot(x: np.ndarray) -> np.ndarray:
    """Black-red-yellow-white colour map of values in [0, 1], as (..., 3) RGB."""
    return np.clip(np.stack([3 * x, 3 * x - 1, 3 * x - 2], axis=-1), 0, 1)


def grey(x: np.ndarray) -> np.ndarray:
    """A [0, 1] grey image as (..., 3) RGB."""
    return np.repeat(np.clip(x, 0, 1)[..., None], 3, axis=-1)


def sheet(rows: Sequence[Sequence[np.ndarray]], gap: int = 4) -> np.ndarray:
    """RGB panels (each (H, W, 3) in [0, 1], equal heights per row, equal row widths) laid out
    row by row with white gaps."""
    def join(parts: Sequence[np.ndarray], axis: int) -> np.ndarray:
        shape = list(parts[0].shape)
        shape[axis] = gap
        white = np.ones(shape)
        return np.concatenate([p for part in parts for p in (part, white)][:-1], axis=axis)

    return join([join(row, axis=1) for row in rows], axis=0)


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB array in [0, 1] as an 8-bit PNG, creating the folder."""
    from skimage.io import imsave

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, (255 * np.clip(rgb, 0, 1)).round().astype(np.uint8), check_contrast=False)
    return path
