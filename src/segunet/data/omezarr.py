"""OME-Zarr images in and out, through the ``ome-zarr`` package (the OME's own).

In: an OME-Zarr image is a zarr group with ``multiscales`` metadata; ``image.ome.zarr:<level>``
picks a resolution level (a dataset path; default the first, the full resolution). The
level is read lazily, with its pixel size (the level's ``scale`` in the axes' units), and
without its axes of length 1 other than channels and the last two spatial ones (the
``(t, c, z, y, x)`` of many writers becomes ``(c, y, x)``). A path named ``*.ome.zarr``
without ``multiscales`` metadata is an error, not a plain zarr store.

Out: :func:`image_output` writes an OME-NGFF 0.4 image (zarr format 2, nested chunk keys:
what napari, Fiji's MoBIE/BigDataViewer and the ome-zarr reader open) with label images
under ``labels/``, each a pyramid that halves Y and X until a level fits one chunk. The
caller fills level 0 (streaming, chunk by chunk); the lower levels are reduced from it a
band at a time when the writer closes, so no level is ever in memory whole. The ome-zarr
package writes the metadata (axes, scales, labels); the arrays are created here because
ome-zarr's writers take whole (dask) arrays, not an output filled tile by tile.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segunet.data.pixelsize import UNIT, PixelSize, micrometers
from segunet.errors import SegunetError

#: Chunk edge per spatial axis of written images (2D, 3D), and the size a pyramid's
#: coarsest level fits in (Y and X halve until then).
CHUNK = {2: 512, 3: 64}
#: Values a pyramid level reads at a time, at most (256 MiB of float32).
BAND_VALUES = 2**26
#: Class colours of the probability channels (hex RGB, cycled): background grey.
COLOURS = ("808080", "00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF")
#: An OME-Zarr image's name ends so (``<stem>.ome.zarr``).
OME_ZARR = ".ome.zarr"

def _ome_zarr() -> Any:
    try:
        import ome_zarr.format
        import ome_zarr.io
        import ome_zarr.reader
        import ome_zarr.writer
    except ModuleNotFoundError as e:
        raise SegunetError(
            "OME-Zarr needs the ome-zarr package (Python 3.11 or later): pip install "
            "'ome-zarr>=0.17'"
        ) from e
    return ome_zarr


# --- reading -------------------------------------------------------------------------------


def _attributes(path: Path) -> dict:
    """The group's NGFF attributes (zarr 3 keeps them under ``ome``); {} for no group."""
    import zarr

    try:
        group = zarr.open_group(store=str(path), mode="r")
    except Exception:  # an array, or no zarr at all: no OME-Zarr image
        return {}
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs))


def is_ome_zarr(path: Path) -> bool:
    """Whether ``path`` is an OME-Zarr image; a SegunetError for a ``*.ome.zarr`` without
    ``multiscales`` metadata."""
    if "multiscales" in _attributes(path):
        return True
    if path.name.lower().endswith(OME_ZARR):
        raise SegunetError(
            f"{path} has no OME-NGFF multiscales metadata: it is not an OME-Zarr image; "
            "rewrite it with an OME-Zarr writer, or rename it to plain .zarr"
        )
    return False


@dataclasses.dataclass(frozen=True)
class OmeImage:
    """One resolution level: its lazily read array and pixel size (None if unknown), and
    the type of each of the array's axes (``channel``, ``space``, ``time``; None unknown)."""

    array: Any
    pixel_size: PixelSize | None
    level: str
    axes: tuple[str | None, ...] = ()


def open_image(path: Path, level: str | None = None) -> OmeImage:
    """The resolution ``level`` of the OME-Zarr image at ``path`` (default the first)."""
    import zarr

    ome_zarr = _ome_zarr()
    # The version as the image says, or ome-zarr logs a warning about the one it expected.
    fmt = ome_zarr.format.detect_format(_attributes(path), ome_zarr.format.CurrentFormat())
    node = ome_zarr.reader.Node(ome_zarr.io.parse_url(str(path), fmt=fmt), [])
    spec = node.first(ome_zarr.reader.Multiscales)
    if spec is None:
        raise SegunetError(f"{path} has no OME-NGFF multiscales metadata: it is no OME-Zarr image")
    paths = list(spec.datasets)
    level = paths[0] if level is None else _level_path(level.strip("/"), paths)
    if level not in paths:
        raise SegunetError(
            f"{path} has no resolution level '{level}'; its levels are {', '.join(paths)} "
            f"(or 0..{len(paths) - 1} by position): name one as {path}:<level>"
        )
    axes = node.metadata["axes"]
    transforms = (node.metadata.get("coordinateTransformations") or [None] * len(paths))
    array = zarr.open_array(store=str(path / level), mode="r")
    keep = _kept_axes(axes, array.shape)
    sizes = _scale(axes, transforms[paths.index(level)], keep)
    kinds = tuple(_axis_type(axes[i]) for i in keep)
    return OmeImage(Squeezed(array, keep) if len(keep) < array.ndim else array, sizes, level,
                    kinds)


def _axis_type(axis: Mapping) -> str | None:
    """An axis' type, from its name where the metadata leaves the (optional) type out."""
    names = {"c": "channel", "t": "time", "z": "space", "y": "space", "x": "space"}
    return axis.get("type") or names.get(str(axis.get("name", "")).lower())


def _level_path(level: str, paths: Sequence[str]) -> str:
    """A level's dataset path: ``level`` itself if the image has a level of that name, else
    a whole number is its position in the multiscales list (writers name levels ``0, 1, ...``
    or ``s0, s1, ...``; the position means the same on both)."""
    if level in paths or not level.isdigit() or int(level) >= len(paths):
        return level
    return paths[int(level)]


def _kept_axes(axes: Sequence[Mapping], shape: Sequence[int]) -> list[int]:
    """The axes to keep: all but length-1 time axes and length-1 spatial axes before the
    last two (a 2D image's ``z``)."""
    space = [i for i, a in enumerate(axes) if a.get("type") == "space"]
    drop = {i for i, a in enumerate(axes) if a.get("type") == "time" and shape[i] == 1}
    drop |= {i for i in space[:-2] if shape[i] == 1}
    return [i for i in range(len(shape)) if i not in drop]


def _scale(axes: Sequence[Mapping], transforms: Sequence[Mapping] | None,
           keep: Sequence[int]) -> PixelSize | None:
    """The kept spatial axes' sizes in um: the level's ``scale`` in the axes' units."""
    scale = next((t["scale"] for t in transforms or [] if t.get("type") == "scale"), None)
    if scale is None:
        return None
    sizes = [micrometers(scale[i], axes[i].get("unit")) for i in keep
             if axes[i].get("type") == "space"]
    return None if not sizes or any(s is None for s in sizes) else tuple(sizes)


class Squeezed:
    """A lazily read array seen without some of its length-1 axes (read at index 0)."""

    def __init__(self, array: Any, keep: Sequence[int]) -> None:
        self.array, self.keep = array, tuple(keep)
        self.shape = tuple(int(array.shape[i]) for i in self.keep)
        self.ndim, self.dtype = len(self.shape), array.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = () if index == (Ellipsis,) else index
        given = iter((*index, *(slice(None),) * (self.ndim - len(index))))
        full = tuple(next(given) if i in self.keep else 0 for i in range(self.array.ndim))
        return np.asarray(self.array[full])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self[...] if dtype is None else self[...].astype(dtype)


# --- writing -------------------------------------------------------------------------------


class First:
    """The array ``(1, *spatial)`` of a label image seen as ``(*spatial)``, to fill."""

    def __init__(self, array: Any) -> None:
        self.array, self.shape = array, tuple(array.shape[1:])

    def __setitem__(self, index: Any, value: Any) -> None:
        self.array[(0, *(index if isinstance(index, tuple) else (index,)))] = value


class ImageWriter:
    """An OME-Zarr image being written into ``store`` (see the module doc): the
    probabilities ``(C, *spatial)`` as the image (:attr:`image`, level 0) and label images
    ``(1, *spatial)`` under ``labels/`` (:meth:`label`, level 0 seen without its channel
    axis). ``pixel_size``: um per spatial axis (the last ones where it has fewer; None:
    unknown); ``chunks``: per spatial axis (default :data:`CHUNK`)."""

    def __init__(
        self, store: Path, shape: Sequence[int], dtype: Any, pixel_size: PixelSize | None,
        channel_names: Sequence[str], chunks: Sequence[int] | None = None,
    ) -> None:
        import zarr

        self.dims = len(shape) - 1
        self.chunks = tuple(chunks or (CHUNK[self.dims],) * self.dims)
        self.pixel_size, self.channel_names = pixel_size, list(channel_names)
        self.root = zarr.open_group(store=str(store), mode="w", zarr_format=2)
        self.image = self._create(self.root, "0", tuple(shape), dtype)
        self.labels: dict[str, First] = {}

    def label(self, name: str, dtype: Any) -> First:
        """Level 0 of the label image ``labels/<name>`` (created on first use)."""
        if name not in self.labels:
            group = self.root.require_group("labels").create_group(name)
            self.labels[name] = First(self._create(group, "0", (1, *self.image.shape[1:]),
                                                   dtype))
        return self.labels[name]

    def _create(self, group: Any, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        from numcodecs import Blosc

        return group.create_array(
            name, shape=shape, chunks=(1, *(min(n, c) for n, c in zip(shape[1:], self.chunks))),
            dtype=dtype, fill_value=0,
            compressors=Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE),
            chunk_key_encoding={"name": "v2", "separator": "/"},  # NGFF 0.4: nested chunks
        )

    def finish(self, name: str) -> None:
        """Reduce every level 0 to its pyramid and write the metadata (``name``: the
        image's)."""
        ome_zarr = _ome_zarr()
        fmt = ome_zarr.format.FormatV04()
        channels = [
            {"label": label, "color": COLOURS[i % len(COLOURS)], "active": i > 0,
             "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}}
            for i, label in enumerate(self.channel_names)
        ]
        self._metadata(self.root, self._pyramid(self.root, self.image, _halve_mean), name,
                       {"omero": {"channels": channels}})
        for label, first in self.labels.items():
            group = self.root["labels"][label]
            self._metadata(group, self._pyramid(group, first.array, _halve_nearest), label, {})
            ome_zarr.writer.write_label_metadata(  # source: the image it labels
                self.root["labels"], label, fmt=fmt, source={"image": "../../"}
            )

    def _pyramid(self, group: Any, first: Any, reduce: Any) -> list[Any]:
        """Levels 1, 2, ... of ``first``, each ``reduce`` of the one before, until Y and X
        fit one chunk; written a band of whole chunks at a time (3D: slabs of Z), thinner
        where a band would read more than :data:`BAND_VALUES` values."""
        levels = [first]
        while any(n > c for n, c in zip(levels[-1].shape[-2:], self.chunks[-2:])):
            source = levels[-1]
            shape = (*source.shape[:-2], *(-(-n // 2) for n in source.shape[-2:]))
            target = self._create(group, str(len(levels)), shape, source.dtype)
            slabs = self.dims == 3
            axis = 1 if slabs else len(shape) - 2
            per_step = math.prod(source.shape) // source.shape[axis] * (1 if slabs else 2)
            step = max(1, min(target.chunks[axis], BAND_VALUES // per_step))
            for start in range(0, shape[axis], step):
                band = slice(start, start + step)
                read = band if slabs else slice(2 * start, 2 * (start + step))
                index = (slice(None),) * axis
                target[(*index, band)] = reduce(source[(*index, read)]).astype(source.dtype)
            levels.append(target)
        return levels

    def _metadata(self, group: Any, levels: list[Any], name: str, extra: dict) -> None:
        """Axes and per-level scales (Y and X doubling per level) through ome-zarr."""
        ome_zarr = _ome_zarr()
        known = len(self.pixel_size or ())
        sizes = (1.0,) * (self.dims - known) + tuple(self.pixel_size or ())
        names = ("z", "y", "x")[-self.dims :]
        axes = [{"name": "c", "type": "channel"}, *(
            {"name": n, "type": "space", **({"unit": UNIT} if a >= self.dims - known else {})}
            for a, n in enumerate(names)
        )]
        datasets = [
            {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [
                1.0, *sizes[:-2], *(s * 2**k for s in sizes[-2:])]}]}
            for k in range(len(levels))
        ]
        ome_zarr.writer.write_multiscales_metadata(
            group, datasets, fmt=ome_zarr.format.FormatV04(), axes=axes, name=name,
            **({"metadata": extra} if extra else {}),
        )


def _halve_mean(x: Any) -> np.ndarray:
    """2x2 means over the last two axes (an odd edge pixel averaged with itself)."""
    x = np.asarray(x, np.float32)
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        pad = [(0, 0)] * (x.ndim - 2) + [(0, x.shape[-2] % 2), (0, x.shape[-1] % 2)]
        x = np.pad(x, pad, mode="edge")
    return x.reshape(*x.shape[:-2], x.shape[-2] // 2, 2, x.shape[-1] // 2, 2).mean((-3, -1))


def _halve_nearest(x: Any) -> np.ndarray:
    """Every second pixel of the last two axes: labels keep their ids."""
    return np.asarray(x)[..., ::2, ::2]
