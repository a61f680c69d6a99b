"""Datasets: full images in memory, random overlap-tile patches for training, tiles for
validation.

A sample is a dict ``{"image": (C, *in), "label": (*out), "weight": (*out), "ignore": (*out)}``:
the network input carries the context a valid-padded U-Net consumes, the targets cover only
the output tile (Ronneberger et al. 2015, Fig. 2); context beyond the image border is
mirror-extrapolated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segunet.data.augment import flip_rot90
from segunet.data.tiling import crop_reflect, tile_grid


@dataclass
class Volume:
    """One whole image with its training targets."""

    name: str
    image: np.ndarray  # (C, *spatial) float32, normalised
    label: np.ndarray  # (*spatial) int64 class ids
    weight: np.ndarray  # (*spatial) float32 pixel weights (border weight map)
    ignore: np.ndarray  # (*spatial) bool, True where unlabelled

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.label.shape)


@dataclass
class SegmentationData:
    """What the ``data`` config group builds: the volumes plus how to cut patches from them.

    ``patch_size`` is the network's input size (the paper's 572x572); the targets are cut to
    the model's output size for it.
    """

    train: list[Volume]
    val: list[Volume]
    num_classes: int = 2
    patch_size: tuple[int, ...] | None = None
    augment: bool = True
    name: str = "data"
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])

    @property
    def spatial_dims(self) -> int:
        return self.train[0].label.ndim

    @property
    def in_channels(self) -> int:
        return self.train[0].image.shape[0]


def crop_targets(
    volume: Volume, start: Sequence[int], size: Sequence[int]
) -> dict[str, np.ndarray]:
    """Label, weight and ignore of the output tile; outside the image the tile is unlabelled.

    Only images smaller than the output tile reach outside, and there nothing is known.
    """
    idx, inside = [], np.ones((), dtype=bool)
    for ax, (s, n, dim) in enumerate(zip(start, size, volume.spatial_shape)):
        i = np.arange(s, s + n)
        ok = (i >= 0) & (i < dim)
        idx.append(np.clip(i, 0, dim - 1))
        inside = inside & ok.reshape([-1 if a == ax else 1 for a in range(len(size))])
    grid = np.ix_(*idx)
    return {
        "label": volume.label[grid],
        "weight": np.where(inside, volume.weight[grid], 0).astype(np.float32),
        "ignore": volume.ignore[grid] | ~inside,
    }


def cut_sample(
    volume: Volume, out_start: Sequence[int], in_shape: Sequence[int], out_shape: Sequence[int]
) -> dict[str, np.ndarray]:
    """Input tile (mirror-extrapolated past the border) around an output tile at ``out_start``."""
    margin = [(i - o) // 2 for i, o in zip(in_shape, out_shape)]
    in_start = [s - m for s, m in zip(out_start, margin)]
    sample = {"image": np.ascontiguousarray(crop_reflect(volume.image, in_start, in_shape))}
    sample.update(crop_targets(volume, out_start, out_shape))
    return sample


class PatchDataset(Dataset):
    """Random training patches; item ``i`` is a pure function of ``(seed, i)``.

    Seeding by index makes a run reproducible whatever the number of workers, and lets a
    resumed run draw exactly the patches the uninterrupted run would have drawn.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        seed: int = 0,
        augment: bool = True,
        length: int = 2**62,
    ) -> None:
        self.volumes = list(volumes)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.seed, self.augment, self.length = seed, augment, length
        # Larger images hold more distinct patches: sample them proportionally to their size.
        sizes = np.array([np.prod(v.spatial_shape) for v in self.volumes], dtype=float)
        self.p = sizes / sizes.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        volume = self.volumes[rng.choice(len(self.volumes), p=self.p)]
        start = [
            int(rng.integers(0, dim - out + 1)) if dim >= out else -((out - dim) // 2)
            for dim, out in zip(volume.spatial_shape, self.out_shape)
        ]
        sample = cut_sample(volume, start, self.in_shape, self.out_shape)
        if self.augment:
            sample = flip_rot90(sample, rng)
        return to_tensors(sample)


def to_tensors(sample: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        "image": torch.from_numpy(sample["image"].astype(np.float32, copy=False)),
        "label": torch.from_numpy(sample["label"].astype(np.int64, copy=False)),
        "weight": torch.from_numpy(sample["weight"].astype(np.float32, copy=False)),
        "ignore": torch.from_numpy(sample["ignore"].astype(bool, copy=False)),
    }


class StepSampler(Sampler[int]):
    """Sample indices for steps ``start_step .. max_steps - 1``.

    Step ``s`` draws the global batch ``s*B .. s*B + B - 1`` (``B = batch_size * world_size``),
    rank ``r`` its ``r``-th share: the run's data depend on the step alone, not on how often it
    was resumed nor on how many processes share it.
    """

    def __init__(
        self, start_step: int, max_steps: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.start_step, self.max_steps = start_step, max_steps
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        for step in range(self.start_step, self.max_steps):
            first = step * global_batch + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)

    def __len__(self) -> int:
        return max(self.max_steps - self.start_step, 0) * self.batch_size


def iter_tiles(
    volume: Volume, in_shape: Sequence[int], out_shape: Sequence[int]
) -> Iterator[tuple[tuple[int, ...], dict[str, np.ndarray]]]:
    """Output tiles covering the whole volume (overlapping only at the far borders), each with
    its mirror-extrapolated input context: the overlap-tile strategy of the paper's Fig. 2."""
    for start in tile_grid(volume.spatial_shape, out_shape):
        yield tuple(start), cut_sample(volume, start, in_shape, out_shape)
