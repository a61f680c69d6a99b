"""The outputs of ``segunet predict``: probabilities, labels and instances as TIFF, zarr or
one OME-Zarr image per input, each written at a temp name and moved into place when
complete."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segunet.data.io import BIGTIFF_BYTES, PREDICT_OUTPUTS, atomic_path, temp_path
from segunet.data.omezarr import CHUNK, OME_ZARR
from segunet.data.pixelsize import PixelSize, tiff_options
from segunet.errors import SegunetError
from segunet.infer.inputs import non_finite, stem_of
from segunet.infer.resample import Grid

OUTPUTS = PREDICT_OUTPUTS



def output_paths(output: Path, stem: str, outputs: Sequence[str], fmt: str) -> dict[str, Path]:
    """Where each output of an input goes; with ``ome-zarr``, all into one image."""
    if fmt == "ome-zarr":
        return dict.fromkeys(outputs, output / f"{stem}{OME_ZARR}")
    suffix = ".zarr" if fmt == "zarr" else ".tif"
    return {name: output / f"{stem}_{name}{suffix}" for name in outputs}


def label_dtype(top: int) -> np.dtype:
    return np.dtype(np.uint16 if top < 2**16 else np.uint32)


@contextlib.contextmanager
def array_output(
    path: Path, shape: Sequence[int], dtype: Any, dims: int, fmt: str = "zarr",
    per_slice: bool = False, pixel_size: PixelSize | None = None,
) -> Iterator[Any]:
    """An empty array to fill, created at a temp name beside ``path`` and moved onto it once
    filled: zarr, or (``fmt="tif"``) an uncompressed TIFF filled through a memory map, so
    neither comes into memory whole. ``per_slice``: zarr chunks one slice deep along the
    first axis (stacks written slice by slice). ``pixel_size``: recorded in a TIFF."""
    lead = len(shape) - dims  # classes (and slices): one chunk holds all of them
    chunks = (*shape[:lead], *(min(s, CHUNK[dims]) for s in shape[lead:]))
    chunks = (1, *chunks[1:]) if per_slice else chunks
    with atomic_path(path) as tmp:
        if fmt == "zarr":
            import zarr

            yield zarr.create_array(store=str(tmp), shape=tuple(shape), chunks=chunks, dtype=dtype)
            return
        import tifffile

        out = tifffile.memmap(
            tmp, shape=tuple(shape), dtype=dtype, photometric="minisblack",
            bigtiff=math.prod(shape) * np.dtype(dtype).itemsize > BIGTIFF_BYTES,
            **tiff_options(pixel_size),
        )
        yield out
        out.flush()


class Outputs:
    """Where one input's outputs go, in format ``fmt`` in ``folder``: a TIFF each (written
    whole, or slice by slice through a memory map), a zarr store each, or one OME-Zarr image (whose
    image is always the probabilities). Each is written at a temp name and moved into
    place when complete, as the ``with`` block ends without an error. The outputs carry the
    input's pixel size where the format has a place for it."""

    def __init__(
        self, targets: dict[str, Path], fmt: str, folder: Path, grid: Grid,
        names: Sequence[str], path: Path,
    ) -> None:
        self.targets, self.format, self.names = targets, fmt, list(names)
        self.folder, self.path, self.stem = folder, path, stem_of(path)
        self.pixel_size = grid.pixel_size
        self.stack = contextlib.ExitStack()
        self.writer: Any = None  # the OME-Zarr image, once opened

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *error: Any) -> None:
        self.stack.__exit__(*error)

    @property
    def written(self) -> list[Path]:
        return list(dict.fromkeys(self.targets.values()))

    @property
    def filled(self) -> list[str]:
        """The outputs to compute: those asked for (an OME-Zarr's image always)."""
        image = ["probabilities"] if self.format == "ome-zarr" else []
        return [name for name in OUTPUTS if name in self.targets or name in image]

    def array(
        self, name: str, shape: Sequence[int], dtype: Any, dims: int, per_slice: bool = False
    ) -> Any:
        """An empty output array ``name`` to fill: ``(C, *spatial)`` probabilities or a
        ``(*spatial)`` label image of ``dims`` spatial axes; a stack's (``per_slice``) are
        ``(Z, C, Y, X)`` and ``(Z, Y, X)``, chunked one slice deep. Probabilities of a zarr
        output that were not asked for go to a hidden store, removed at the end."""
        if self.format == "ome-zarr":
            return self._ome(name, shape, dtype, dims, per_slice)
        if name not in self.targets:
            return self.scratch(f"{self.stem}_{name}.zarr", shape, dtype, dims)
        return self.stack.enter_context(array_output(
            self.targets[name], shape, dtype, dims, self.format, per_slice, self.pixel_size,
        ))

    def _ome(self, name: str, shape: Sequence[int], dtype: Any, dims: int,
             per_slice: bool) -> Any:
        if self.writer is None:  # the probabilities come first: they are the image
            # NGFF's axes: a stack's (Z, C, Y, X) probabilities become (C, Z, Y, X).
            classes, *spatial = (shape[1], shape[0], *shape[2:]) if per_slice else shape
            chunks = (1,) * per_slice + (CHUNK[dims],) * dims
            self.writer = self.stack.enter_context(ome_zarr_output(
                self.targets[name] if name in self.targets else self.written[0],
                (classes, *spatial), self.pixel_size, self.names, chunks,
            ))
        return self.writer.image if name == "probabilities" else self.writer.label(name, dtype)

    def scratch(self, name: str, shape: Sequence[int], dtype: Any, dims: int) -> Any:
        """A zarr array at a hidden temp name in the output folder, removed at the end."""
        import zarr

        store = temp_path(self.folder / name)
        self.stack.callback(_remove_tree, store)
        lead = len(shape) - dims
        chunks = (*shape[:lead], *(min(s, CHUNK[dims]) for s in shape[lead:]))
        return zarr.create_array(store=str(store), shape=tuple(shape), chunks=chunks, dtype=dtype)

    def write(self, name: str, array: np.ndarray) -> None:
        """Write a whole output (a TIFF, a zarr store, or a label image of the OME-Zarr)."""
        from segunet.data.io import write_array

        if self.format == "ome-zarr":
            self.writer.label(name, array.dtype)[...] = array
        else:
            write_array(self.targets[name], array, pixel_size=self.pixel_size)


@contextlib.contextmanager
def ome_zarr_output(
    path: Path, shape: Sequence[int], pixel_size: PixelSize | None, names: Sequence[str],
    chunks: Sequence[int],
) -> Iterator[Any]:
    """An :class:`~segunet.data.omezarr.ImageWriter` of float16 probabilities at a temp
    name beside ``path``, completed (pyramids, metadata) and moved onto it at the end."""
    from segunet.data.omezarr import ImageWriter

    with atomic_path(path) as tmp:
        writer = ImageWriter(tmp, shape, np.float16, pixel_size, names, chunks)
        yield writer
        writer.finish(stem_of(path))


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def refuse_non_finite_output(probs: Any, path: Path) -> None:
    """The last check before outputs are moved into place: probabilities that are not all
    finite (a checkpoint with NaN weights, input values that overflow once normalised) are
    an error, and the outputs of ``path`` are not written."""
    refuse_non_finite_count(non_finite(probs), path)


def refuse_non_finite_count(count: int, path: Path) -> None:
    """:func:`refuse_non_finite_output` where the ``count`` is known (summed over parts)."""
    if count:
        raise SegunetError(
            f"{path}: the model predicted {count:,} NaN or infinite probabilit"
            f"{'ies' if count != 1 else 'y'}, so nothing was written for it: check the "
            "checkpoint (its weights may be non-finite) and the input's value range"
        )
