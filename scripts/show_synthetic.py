"""Write a PNG of a few synthetic images, their instance labels and border weight maps.

One row per example (the last a mid-plane of a 3D volume), columns: the image, its instances
in colour, and the paper's weight map after separating touching cells (hot colours = heavy).

    python scripts/show_synthetic.py [out.png] [--n 3] [--size 256] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage.color import label2rgb
from skimage.io import imsave

from segunet.data.synthetic import synthetic_cells
from segunet.data.weightmaps import border_weight_map, separate_touching


def hot(x: np.ndarray) -> np.ndarray:
    """Black-red-yellow-white colour map of values in [0, 1] (no matplotlib needed)."""
    return np.clip(np.stack([3 * x, 3 * x - 1, 3 * x - 2], axis=-1), 0, 1)


def panels(image: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """Image | labels | weight map side by side, RGB in [0, 1], for one 2D example."""
    weight = border_weight_map(separate_touching(instances))
    grey = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1)
    labels = label2rgb(instances, bg_label=0)
    gap = np.ones((image.shape[0], 4, 3))
    return np.concatenate([grey, gap, labels, gap, hot(weight / weight.max())], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="data/synthetic_preview.png", type=Path)
    parser.add_argument("--n", type=int, default=3, help="number of 2D examples")
    parser.add_argument("--size", type=int, default=256, help="side of the 2D examples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = [panels(*synthetic_cells((args.size,) * 2, seed=args.seed + i)) for i in range(args.n)]
    image, instances = synthetic_cells((32, args.size, args.size), seed=args.seed + args.n)
    rows.append(panels(image[16], instances[16]))
    gap = np.ones((4, rows[0].shape[1], 3))
    sheet = np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    imsave(args.out, (255 * sheet).round().astype(np.uint8), check_contrast=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
