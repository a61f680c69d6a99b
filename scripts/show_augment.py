"""Write a PNG of synthetic cells before and after the training augmentation.

One row per example; columns: image, instances (colour), border weight map (hot colours =
heavy), then the same three after one random draw of :class:`segunet.data.augment.Augmenter`,
and a regular grid warped by the very same sampling grid, to see the deformation field.

    python scripts/show_augment.py [out.png] [--n 4] [--size 256] [--seed 0] [--sigma 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from segunet.data.augment import AugmentConfig, Augmenter, deform
from segunet.data.synthetic import synthetic_cells
from segunet.data.weightmaps import border_weight_map, separate_touching
from segunet.train.viz import grey, hot, save_png, sheet


def colour(labels: np.ndarray, n: int) -> np.ndarray:
    """A fixed random colour per label id (0 black), the same before and after augmenting."""
    palette = 0.3 + 0.7 * np.random.default_rng(0).random((n + 1, 3))
    palette[0] = 0
    return palette[labels]


def grid_lines(shape: tuple[int, ...], step: int = 16) -> np.ndarray:
    lines = np.zeros(shape, np.float32)
    lines[step // 2 :: step, :] = lines[:, step // 2 :: step] = 1
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="data/augment_preview.png", type=Path)
    parser.add_argument("--n", type=int, default=4, help="number of examples")
    parser.add_argument("--size", type=int, default=256, help="side of the examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=10.0, help="elastic sigma in pixels")
    args = parser.parse_args()

    shape = (args.size, args.size)
    images, instances, weights = [], [], []
    for i in range(args.n):
        image, cells = synthetic_cells(shape, seed=args.seed + i)
        cells = separate_touching(cells)
        images.append(image)
        instances.append(cells)
        weights.append(border_weight_map(cells))
    batch = {
        "image": torch.from_numpy(np.stack(images))[:, None],
        "label": torch.from_numpy(np.stack(instances).astype(np.int64)),
        "weight": torch.from_numpy(np.stack(weights).astype(np.float32)),
    }
    # p_elastic=1: every row shows a deformation (training draws it with p_elastic).
    augmenter = Augmenter(AugmentConfig(elastic_sigma=args.sigma, p_elastic=1.0), 2)
    generator = torch.Generator().manual_seed(args.seed)
    # What Augmenter.__call__ does, spelled out so the grid image rides the same field.
    displacement, matrix = augmenter.draw(args.n, shape, generator)
    lines = torch.from_numpy(grid_lines(shape)).expand(args.n, 1, *shape)
    stacked = dict(batch, image=torch.cat([batch["image"], lines], 1))
    out = deform(stacked, displacement, matrix)
    warped_lines = out["image"][:, 1].numpy()
    out["image"] = augmenter.intensity(out["image"][:, :1], generator)

    n_labels = int(batch["label"].max())
    top = float(batch["weight"].max())
    rows = []
    for i in range(args.n):
        panels = []
        for b in (batch, out):
            panels += [
                grey(b["image"][i, 0].numpy()),
                colour(b["label"][i].numpy(), n_labels),
                hot(np.clip(b["weight"][i].numpy() / top, 0, 1)),
            ]
        rows.append([*panels, grey(warped_lines[i])])
    save_png(args.out, sheet(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
