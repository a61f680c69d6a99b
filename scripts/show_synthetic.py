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

from segunet.data.synthetic import synthetic_cells
from segunet.data.weightmaps import border_weight_map, separate_touching
from segunet.train.viz import grey, hot, save_png, sheet


def panels(image: np.ndarray, instances: np.ndarray) -> list[np.ndarray]:
    """Image | labels | weight map, RGB in [0, 1], for one 2D example."""
    weight = border_weight_map(separate_touching(instances))
    return [grey(image), label2rgb(instances, bg_label=0), hot(weight / weight.max())]


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
    save_png(args.out, sheet(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
