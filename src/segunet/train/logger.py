"""TensorBoard logging: scalars, a side-by-side picture of what the net sees and predicts,
and hyperparameters with the final metrics.

Everything is written by rank 0 only; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from torch import Tensor

from segunet.config.schema import Range, check_ranges
from segunet.data.datasets import SegmentationData, Volume


@dataclass
class LoggingConfig:
    """The ``logging`` config group."""

    tensorboard: bool = True
    log_every: Annotated[int, Range(ge=1)] = 20  # steps between: a modulus
    image_every: Annotated[int, Range(ge=1)] = 100
    progress: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, "logging")


def _middle_slice(x: Tensor, spatial_dims: int) -> Tensor:
    """A 2D view of a (.., *spatial) tensor: the middle slice along depth for volumes."""
    return x[..., x.shape[-3] // 2, :, :] if spatial_dims == 3 else x


def _centre_crop(x: Tensor, shape: Sequence[int]) -> Tensor:
    starts = [(n - s) // 2 for n, s in zip(x.shape[-len(shape) :], shape)]
    index = [slice(None)] * (x.ndim - len(shape))
    index += [slice(a, a + s) for a, s in zip(starts, shape)]
    return x[tuple(index)]


def _to_unit(x: Tensor) -> Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def _resize_to(x: Tensor, shape: Sequence[int]) -> Tensor:
    return torch.nn.functional.interpolate(x[None, None], size=tuple(shape), mode="nearest")[0, 0]


def panel(
    image: Tensor,
    label: Tensor,
    pred: Tensor,
    weight: Tensor | None = None,
    attention: Sequence[Tensor] = (),
    num_classes: int = 2,
    spatial_dims: int = 2,
) -> np.ndarray:
    """One sample as a row of greyscale panels, (1, H, W*k) in [0, 1]:
    input (cropped to the output tile), label, prediction, weight map, attention maps.

    ``image``: (C, *in); ``label``/``pred``/``weight``: (*out); ``attention``: (1, *skip) each.
    """
    out_shape = label.shape
    tiles = [
        _to_unit(_centre_crop(image[0].float(), out_shape)),
        label.float() / max(num_classes - 1, 1),
        pred.float() / max(num_classes - 1, 1),
    ]
    if weight is not None:
        tiles.append(_to_unit(weight.float()))
    tiles = [_middle_slice(t, spatial_dims) for t in tiles]
    hw = tiles[0].shape
    for a in attention:
        tiles.append(_resize_to(_middle_slice(a[0].float(), spatial_dims), hw))
    sep = torch.ones(hw[0], 2)  # a white line between panels
    row = torch.cat([t for tile in tiles for t in (tile.cpu(), sep)][:-1], dim=1)
    return row.clamp(0, 1).numpy()[None]


def classes_picture(
    volume: Volume, probs: np.ndarray, objects: np.ndarray | None, data: SegmentationData,
    max_size: int = 512,
) -> np.ndarray:
    """A validation image as an RGB contact sheet, (3, H, W) in [0, 1]: the input and its
    target classes (in colour), then the predicted probability of each class, and, when
    objects are decoded, the ground-truth objects beside the decoded ones (random colours).
    Volumes show their middle slice; large images are shrunk to ``max_size``."""
    from skimage.color import label2rgb

    from segunet.train import viz

    def plane(a: np.ndarray) -> np.ndarray:
        a = a[a.shape[0] // 2] if data.spatial_dims == 3 else a
        step = max(1, -(-max(a.shape) // max_size))
        return a[::step, ::step]

    image = plane(volume.image[0])
    lo, hi = np.percentile(image, (0.5, 99.5))
    top = [viz.grey((image - lo) / max(hi - lo, 1e-6)),
           label2rgb(plane(volume.label), bg_label=0, colors=viz.CLASS_COLOURS)]
    rows = [top + [viz.hot(plane(p)) for p in probs[1:]]]
    if objects is not None and volume.instances is not None:
        rows.append([
            label2rgb(plane(volume.instances), bg_label=0),
            label2rgb(plane(objects), bg_label=0),
        ])
    width = max(sum(p.shape[1] for p in row) + 4 * (len(row) - 1) for row in rows)
    rows = [row + [np.ones((row[0].shape[0], width - sum(p.shape[1] for p in row)
                            - 4 * len(row), 3))] if len(row) < len(rows[0]) else row
            for row in rows]
    return np.moveaxis(viz.sheet(rows), -1, 0)


def scalars_line(values: Mapping[str, float], step: int, max_steps: int) -> str:
    """The scalars of a step as one line of the run's log file, where the console shows
    them in its progress bar: ``segunet: step 20/2000: train/loss 0.6834, ...``."""
    shown = ", ".join(f"{key} {value:.4g}" for key, value in values.items())
    return f"segunet: step {step}/{max_steps}: {shown}"


class TensorBoardLogger:
    """A thin wrapper over ``SummaryWriter`` that is a no-op when disabled."""

    def __init__(self, log_dir: str | Path | None) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, picture, step, dataformats="CHW")

    def text(self, tag: str, markdown: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, markdown, step)

    def hparams(self, params: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        if self.writer is not None:
            clean = {
                k: v if isinstance(v, (int, float, str, bool)) else str(v)
                for k, v in params.items()
            }
            self.writer.add_hparams(clean, dict(metrics), run_name=".")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
