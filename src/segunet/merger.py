"""Where tile predictions go: the seam between computing tiles and storing the result.

A :class:`Merger` receives each tile's class probabilities for a region of the image and
returns the whole prediction at the end. Overlapping tiles of a same-padded net are blended:
each tile adds ``weight * probabilities`` and ``weight``, and ``finalize`` divides the sums.
The valid-padded U-Net's overlap-tile strategy (Ronneberger et al. 2015, Fig. 2) needs no
blending (tiles agree wherever they overlap), so an unweighted merger writes straight through.
Modelled on MONAI's ``inferers/merger.py`` (``AvgMerger``, ``ZarrAvgMerger``).
"""

from __future__ import annotations

import itertools
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Region = tuple[slice, ...]


class Merger(ABC):
    """Collects tile probabilities ``(classes, *region)`` into an array of ``shape``
    ``(classes, *spatial)``.

    Args:
        shape: the full output shape, classes first.
        weighted: True to blend overlapping tiles by their weights (``add`` then needs
            ``weights``); False to write each tile straight, the later winning.
    """

    def __init__(self, shape: Sequence[int], weighted: bool = True) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.weighted = weighted

    @abstractmethod
    def add(self, region: Region, probs: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Merge ``probs`` (classes, *region size) into the spatial ``region`` of the output;
        ``weights`` (*region size) when weighted."""

    @abstractmethod
    def finalize(self) -> Any:
        """The merged ``(classes, *spatial)`` probabilities; call once, after the last add."""

    def _check(self, region: Region, probs: np.ndarray, weights: np.ndarray | None) -> None:
        if self.weighted and weights is None:
            raise ValueError(f"{type(self).__name__} blends tiles: add() needs weights")


class InMemoryMerger(Merger):
    """Accumulates in host memory (float32): weighted sums plus one weight per pixel."""

    def __init__(self, shape: Sequence[int], weighted: bool = True) -> None:
        super().__init__(shape, weighted)
        self.values = np.zeros(self.shape, dtype=np.float32)
        self.weights = np.zeros(self.shape[1:], dtype=np.float32) if weighted else None

    def add(self, region: Region, probs: np.ndarray, weights: np.ndarray | None = None) -> None:
        self._check(region, probs, weights)
        probs = self._as_array(probs)
        if self.weights is None:
            self.values[(slice(None), *region)] = probs
        else:
            weights = self._as_array(weights)
            self.values[(slice(None), *region)] += probs * weights
            self.weights[region] += weights

    def finalize(self) -> np.ndarray:
        if self.weights is not None:
            self.values /= self.weights
            self.weights = None  # finalized: a second call must not divide again
        return self.values

    def _as_array(self, x: Any) -> Any:
        return x


class DeviceMerger(InMemoryMerger):
    """Accumulates in torch tensors on the device that computes the tiles (the GPU).

    Blending there costs no host round trip per tile, so the prediction loop never waits
    for the host; the result crosses to host memory once, in :meth:`finalize`. ``add`` takes
    tensors (or arrays) of any device and moves them.
    """

    def __init__(self, shape: Sequence[int], weighted: bool = True, device: Any = "cpu") -> None:
        import torch

        Merger.__init__(self, shape, weighted)
        self.device = torch.device(device)
        self.values = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        self.weights = (
            torch.zeros(self.shape[1:], dtype=torch.float32, device=self.device)
            if weighted else None
        )

    def _as_array(self, x: Any) -> Any:
        import torch

        return torch.as_tensor(x, device=self.device)

    def finalize(self) -> np.ndarray:
        return super().finalize().cpu().numpy()

    @staticmethod
    def fits(shape: Sequence[int], device: Any) -> bool:
        """Whether sums and weights of ``shape`` take at most half the device's free memory."""
        import torch

        device = torch.device(device)
        if device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        need = 4 * (int(np.prod(shape)) + int(np.prod(shape[1:])))
        return need <= free // 2


class ZarrMerger(Merger):
    """Accumulates in a zarr group on disk, so host memory stays bounded by the tiles in flight.

    The group at ``path`` holds float32 ``sum`` and ``weight`` arrays while tiles arrive;
    ``finalize`` divides them block by block into ``probabilities`` (``dtype``: float16 halves
    the disk space, float32 keeps full precision), removes the sums and returns that array.
    Unweighted, tiles are written straight into ``probabilities``.

    Args:
        path: folder of the zarr group (replaced if it exists).
        shape: ``(classes, *spatial)``.
        chunks: spatial chunk shape (default 256 per axis in 2D, 64 in 3D); classes are never
            split, so one chunk holds every class of its pixels.
        dtype: of the final probabilities.
        weighted: see :class:`Merger`.
        out: an array-like of ``shape`` to finalize into instead of ``probabilities`` (used to
            blend into a memmap or a user's zarr array through a temporary store).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: Sequence[int],
        chunks: Sequence[int] | None = None,
        dtype: str | np.dtype = "float16",
        weighted: bool = True,
        out: Any = None,
    ) -> None:
        import zarr

        super().__init__(shape, weighted)
        spatial = self.shape[1:]
        if chunks is None:
            chunks = [256 if len(spatial) <= 2 else 64] * len(spatial)
        self.chunks = tuple(min(int(c), s) for c, s in zip(chunks, spatial, strict=True))
        self.path = Path(path)
        self.group = zarr.open_group(store=str(self.path), mode="w")
        full_chunks = (self.shape[0], *self.chunks)
        if out is not None:
            if tuple(out.shape) != self.shape:
                raise ValueError(f"out has shape {tuple(out.shape)}, expected {self.shape}")
            self.out = out
        else:
            self.out = self.group.create_array(
                "probabilities", shape=self.shape, chunks=full_chunks, dtype=dtype, fill_value=0
            )
        self.sum = self.weight = None
        if weighted:
            self.sum = self.group.create_array(
                "sum", shape=self.shape, chunks=full_chunks, dtype="float32", fill_value=0,
                compressors=None,  # temporary, and noise-like sums barely compress
            )
            self.weight = self.group.create_array(
                "weight", shape=spatial, chunks=self.chunks, dtype="float32", fill_value=0,
                compressors=None,
            )

    def add(self, region: Region, probs: np.ndarray, weights: np.ndarray | None = None) -> None:
        self._check(region, probs, weights)
        index = (slice(None), *region)
        if self.sum is None:
            self.out[index] = probs
        else:  # read-modify-write: the caller adds from one thread only
            self.sum[index] = self.sum[index] + probs * weights
            self.weight[region] = self.weight[region] + weights

    def finalize(self) -> Any:
        if self.sum is not None:
            for region in blocks(self.shape[1:], self.chunks):
                index = (slice(None), *region)
                self.out[index] = self.sum[index] / self.weight[region]
            del self.group["sum"], self.group["weight"]
            self.sum = self.weight = None
        return self.out

    def remove(self) -> None:
        """Delete the store from disk (for a temporary merger that finalized into ``out``)."""
        shutil.rmtree(self.path, ignore_errors=True)


def blocks(shape: Sequence[int], block: Sequence[int]) -> Iterator[Region]:
    """The regions of a grid of ``block``-sized boxes covering ``shape`` (the last ones cut)."""
    axes = [range(0, n, b) for n, b in zip(shape, block, strict=True)]
    for corner in itertools.product(*axes):
        yield tuple(slice(c, min(c + b, n)) for c, b, n in zip(corner, block, shape))


class ArrayMerger(Merger):
    """Writes tiles straight into an array-like of ``(classes, *spatial)`` (numpy, memmap,
    zarr, HDF5): for tiles that agree where they overlap, such as the valid-padded U-Net's."""

    def __init__(self, out: Any) -> None:
        super().__init__(out.shape, weighted=False)
        self.out = out

    def add(self, region: Region, probs: np.ndarray, weights: np.ndarray | None = None) -> None:
        self.out[(slice(None), *region)] = probs

    def finalize(self) -> Any:
        return self.out
