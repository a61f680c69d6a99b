"""Datasets: full images in memory and random overlap-tile patches for training (whole
images are predicted tile by tile by :mod:`segunet.infer.predict`).

A sample is a dict ``{"image": (C, *in), "label": (*out), "weight": (*out), "ignore": (*out)}``:
the network input carries the context a valid-padded U-Net consumes, the targets cover only
the output tile (Ronneberger et al. 2015, Fig. 2); context beyond the image border is
mirror-extrapolated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segunet.data.objectsize import typical_diameters
from segunet.data.tiling import crop_reflect


@dataclass
class Volume:
    """One whole image with its training targets."""

    name: str
    image: np.ndarray  # (C, *spatial) float32, normalised
    label: np.ndarray  # (*spatial) int64 class ids
    weight: np.ndarray  # (*spatial) float32 pixel weights (border weight map)
    ignore: np.ndarray  # (*spatial) bool, True where unlabelled
    instances: np.ndarray | None = None  # (*spatial) objects of the labels, for object metrics
    group: str = ""  # its kind (data.balance=appearance: normalize.appearance), "" for all

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
    foreground_oversample: float = 0.0
    balance: bool = False  # temper the draws across groups of images (draw_shares)
    name: str = "data"
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    target: str = "foreground"  # what the classes are (segunet.data.targets)
    metric: str = "dice"  # what validation scores and best.pt is chosen by
    pixel_size: tuple[float, ...] | None = None  # um per spatial axis; None: unknown

    @property
    def spatial_dims(self) -> int:
        return self.train[0].label.ndim

    @property
    def in_channels(self) -> int:
        return self.train[0].image.shape[0]

    def object_diameters(self) -> tuple[float, float, float] | None:
        """The quartiles of the training images' object diameters, px (see
        :func:`~segunet.data.objectsize.typical_diameters`); None without object labels."""
        return typical_diameters(v.instances for v in self.train)


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
    """Input tile (mirror-extrapolated past the border) around an output tile at ``out_start``,
    with the targets of the output tile: what validation and prediction feed the network."""
    margin = [(i - o) // 2 for i, o in zip(in_shape, out_shape)]
    in_start = [s - m for s, m in zip(out_start, margin)]
    sample = {"image": np.ascontiguousarray(crop_reflect(volume.image, in_start, in_shape))}
    sample.update(crop_targets(volume, out_start, out_shape))
    return sample


def cut_patch(
    volume: Volume, in_start: Sequence[int], in_shape: Sequence[int]
) -> dict[str, np.ndarray]:
    """Every array of the volume over the whole input tile, mirror-extrapolated alike.

    Training patches keep their targets at input size until after augmentation: an elastic
    deformation moves context into the output tile, and the mirrored label is exactly the
    label of the mirrored image. :func:`crop_to_output` then cuts the targets down.
    """
    return {
        key: np.ascontiguousarray(crop_reflect(getattr(volume, key), in_start, in_shape))
        for key in ("image", "label", "weight", "ignore")
    }


def crop_to_output(sample: dict, out_shape: Sequence[int]) -> dict:
    """Centre-crop label, weight and ignore (arrays or tensors, batched or not) to the output
    tile; the image keeps its context."""
    out = dict(sample)
    for key in ("label", "weight", "ignore"):
        if key in sample:
            out[key] = _centre_crop(sample[key], out_shape)
    return out


def _centre_crop(array, shape: Sequence[int]):
    lead = array.ndim - len(shape)
    starts = [(n - s) // 2 for n, s in zip(array.shape[lead:], shape)]
    index = (slice(None),) * lead + tuple(slice(a, a + s) for a, s in zip(starts, shape))
    return array[index]


class PatchDataset(Dataset):
    """Random training patches at the network's input size; item ``i`` is a pure function of
    ``(seed, i)``.

    Seeding by index makes a run reproducible whatever the number of workers, and lets a
    resumed run draw exactly the patches the uninterrupted run would have drawn. With
    probability ``foreground_oversample`` the output tile is centred on a random foreground
    pixel (sparse objects otherwise rarely appear in a patch). Images are drawn in proportion
    to their size; ``balance`` tempers that across groups of images (:func:`draw_shares`).
    ``augment``, if given, runs here on a batch of one (``augment.device=cpu``: in the
    DataLoader workers); otherwise the trainer augments whole batches on its device and crops
    to the output tile afterwards.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        seed: int = 0,
        foreground_oversample: float = 0.0,
        augment: Callable | None = None,
        length: int = 2**62,
        balance: bool = False,
    ) -> None:
        self.volumes = list(volumes)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.seed, self.length = seed, length
        self.foreground_oversample, self.augment = foreground_oversample, augment
        self.p = draw_shares(self.volumes, balance)
        self._foreground: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        k = int(rng.choice(len(self.volumes), p=self.p))
        volume = self.volumes[k]
        centre = None
        if self.foreground_oversample and rng.random() < self.foreground_oversample:
            fg = self.foreground(k)
            if fg.size:
                centre = np.unravel_index(fg[rng.integers(fg.size)], volume.spatial_shape)
        out_start = []
        for ax, (dim, out) in enumerate(zip(volume.spatial_shape, self.out_shape)):
            if centre is not None:  # around the chosen pixel, kept inside the image if it fits
                start = int(centre[ax]) - out // 2
                out_start.append(min(max(start, 0), max(dim - out, 0)) if dim >= out else start)
            elif dim >= out:
                out_start.append(int(rng.integers(0, dim - out + 1)))
            else:
                out_start.append(-((out - dim) // 2))
        in_start = [s - (i - o) // 2 for s, i, o in zip(out_start, self.in_shape, self.out_shape)]
        sample = to_tensors(cut_patch(volume, in_start, self.in_shape))
        if self.augment is None:
            return sample
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch = {key: value[None] for key, value in sample.items()}
        batch = crop_to_output(self.augment(batch, generator), self.out_shape)
        return {key: value[0] for key, value in batch.items()}

    def foreground(self, k: int) -> np.ndarray:
        """Flat indices of labelled foreground pixels of volume ``k`` (computed once)."""
        if k not in self._foreground:
            volume = self.volumes[k]
            self._foreground[k] = np.flatnonzero((volume.label > 0) & ~volume.ignore)
        return self._foreground[k]


def draw_shares(volumes: Sequence[Volume], balance: bool = False) -> np.ndarray:
    """How often each volume is drawn. Larger images hold more distinct patches, so the share
    is proportional to size. With ``balance``, that holds within each group
    (:attr:`Volume.group`), and the groups share in proportion to the square root of their
    image counts (temperature sampling, T = 2): a modality that is a tenth of the images gets
    a quarter of the draws rather than a tenth, and a handful of odd images stays a handful."""
    sizes = np.array([np.prod(v.spatial_shape) for v in volumes], dtype=float)
    groups = np.array([v.group if balance else "" for v in volumes])
    kinds, counts = np.unique(groups, return_counts=True)
    weights = np.sqrt(counts) / np.sqrt(counts).sum()
    shares = np.empty_like(sizes)
    for kind, weight in zip(kinds, weights):
        mine = groups == kind
        shares[mine] = weight * sizes[mine] / sizes[mine].sum()
    return shares


def shares_line(volumes: Sequence[Volume]) -> str:
    """The balanced draw per group, for the log: ``grey, dark background 64% (415 images);
    ..."``."""
    shares: dict[str, list[float]] = {}
    for volume, share in zip(volumes, draw_shares(volumes, balance=True)):
        shares.setdefault(volume.group, []).append(share)
    return "; ".join(f"{kind} {sum(s):.0%} ({len(s)} images)"
                     for kind, s in sorted(shares.items()))


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
