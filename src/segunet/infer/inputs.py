"""The inputs of ``segunet predict``: files, folders and globs expanded, images opened
lazily where the format allows, their pixels checked, and each normalised as the
checkpoint's training data was, in the channel layout the model takes."""

from __future__ import annotations

import contextlib
import glob
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segunet.data.io import SUPPORTED, CheckedReads, file_kind, read_array, short_message, split_key
from segunet.data.normalize import (
    DEFAULT_PERCENTILES,
    apply_range,
    bright_background,
    convert_channels,
    percentile_range,
)
from segunet.data.tiling import blocks
from segunet.errors import SegunetError

#: Percentiles are computed on at most about this many pixels per channel: a strided subsample
#: of larger images, which moves them by a negligible amount and bounds the reading.
PERCENTILE_SAMPLE = 2**24


def expand_inputs(spec: str) -> list[Path]:
    """A file (or zarr folder), a folder of image files, or a glob -> sorted image paths."""
    path, key = split_key(spec)
    if any(c in spec for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
        what = f"no file matches input={spec}"
    elif path.is_dir() and file_kind_or_none(path) != "zarr":
        paths = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        what = f"input folder {path} holds no image files ({', '.join(SUPPORTED)})"
    elif path.exists():
        return [Path(spec)]
    else:
        raise SegunetError(
            f"input={spec}: no such file or folder (relative paths start at {Path.cwd()})"
        )
    paths = [p for p in paths if file_kind_or_none(p) is not None]
    if not paths:
        raise SegunetError(what)
    return paths


def file_kind_or_none(path: Path) -> str | None:
    try:
        return file_kind(path)
    except SegunetError:
        return None


def stem_of(path: Path) -> str:
    """``a/b/cell.tif`` -> ``cell``; ``vol.h5:raw`` -> ``vol``; ``x.ome.zarr`` -> ``x``."""
    return split_key(path)[0].stem.removesuffix(".ome")


def open_array(path: Path, stack: contextlib.ExitStack) -> Any:
    """The raw array of an image file, opened lazily where the format allows: an
    uncompressed TIFF as a memory map, a compressed one or a zarr store through zarr, an
    OME-Zarr image's level (``image.ome.zarr:<level>``, default the first) as
    :func:`segunet.data.omezarr.open_image` sees it. Anything else is read whole.
    Unreadable files are one-line SegunetErrors, also where a lazily read one turns out
    truncated or corrupt only when its broken part is read."""
    file = split_key(path)[0]
    raw = _open_array(path, stack)
    return raw if isinstance(raw, np.ndarray) and not isinstance(raw, np.memmap) else (
        CheckedReads(raw, file)
    )


def _open_array(path: Path, stack: contextlib.ExitStack) -> Any:
    file, key = split_key(path)
    if not file.exists():
        raise SegunetError(f"cannot read {file}: no such file")
    kind = file_kind(file)
    if kind not in ("tiff", "zarr"):
        return read_array(path)
    import zarr

    try:
        if kind == "zarr":
            from segunet.data import omezarr

            if omezarr.is_ome_zarr(file):  # the key names the resolution level
                return omezarr.open_image(file, key).array
            node = zarr.open(store=str(file), mode="r")
            if isinstance(node, zarr.Array) and key is None:
                return node
            return read_array(path)  # a group: io picks (and checks) the array
        import tifffile

        try:
            return tifffile.memmap(file, mode="r")
        except ValueError:  # compressed or scattered strips: not memory-mappable
            store = stack.enter_context(contextlib.closing(tifffile.imread(file, aszarr=True)))
            array = zarr.open(store, mode="r")
            # A pyramid opens as a group: its level 0 is the full resolution image.
            return array if isinstance(array, zarr.Array) else array["0"]
    except SegunetError:
        raise
    except Exception as e:
        raise SegunetError(
            f"cannot read {file}: {short_message(e)}; the file may be corrupt or truncated"
        ) from e


class NormalizedImage:
    """A raw image array as the network's ``(C, *spatial)`` float32 input, read lazily.

    Slicing reads only that window of the raw array, then does what training did to whole
    images (:func:`segunet.data.normalize.prepare_image`): channels first (an RGBA image loses
    its alpha), RGB -> grey by luma or grey -> RGB when the training data converted them, and
    ``(x - p_low) / (p_high - p_low)`` per channel with the percentiles of the whole image
    (of a strided subsample of it when it is large).
    """

    def __init__(
        self,
        raw: Any,
        layout: str,
        channels: int,
        convert_to: int | None,
        percentiles: Sequence[float] | None,
        source: str,
        polarity: str = "as_is",
    ) -> None:
        self.raw, self.layout, self.raw_channels = raw, layout, channels
        self.convert_to, self.source = convert_to, source
        spatial = raw.shape[1:] if layout == "first" else (
            raw.shape[:-1] if layout == "last" else raw.shape
        )
        self.shape = (convert_to or channels, *(int(s) for s in spatial))
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)
        self.lo = self.scale = None
        self.invert, self.polarity = False, polarity
        refuse_non_finite(raw, source)
        if percentiles is not None:
            self.lo, self.scale = self._range(percentiles, source)

    def detached(self) -> NormalizedImage:
        """This image without its raw array, to send to another process, where
        :meth:`attached` gives it the file reopened: its normalisation is not measured
        again."""
        return self.attached(None)

    def attached(self, raw: Any) -> NormalizedImage:
        """This image reading ``raw`` (the same file, reopened)."""
        copy = object.__new__(NormalizedImage)
        copy.__dict__.update(self.__dict__, raw=raw)
        return copy

    def _channels_first(self, index: tuple[slice, ...]) -> np.ndarray:
        """The raw window at the spatial ``index``, as float32 ``(C, *window)``, converted."""
        if self.layout == "grey":
            x = np.asarray(self.raw[index])[None]
        elif self.layout == "first":
            x = np.asarray(self.raw[(slice(0, self.raw_channels), *index)])
        else:
            x = np.moveaxis(np.asarray(self.raw[(*index, slice(0, self.raw_channels))]), -1, 0)
        return convert_channels(x.astype(np.float32, copy=False), self.convert_to, self.source)

    def _range(self, percentiles: Sequence[float], source: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``p_low`` and ``p_high - p_low``, as :func:`normalize_percentile`."""
        spatial = self.shape[1:]
        stride = max(1, math.ceil((math.prod(spatial) / PERCENTILE_SAMPLE) ** (1 / len(spatial))))
        sample = self._channels_first(tuple(slice(None, None, stride) for _ in spatial))
        low, high = (float(p) for p in percentiles)
        with np.errstate(over="ignore", invalid="ignore"):  # said below, in one line
            lo, scale = percentile_range(sample, low, high, channel_axis=0)
        if not (np.isfinite(lo).all() and np.isfinite(scale).all()):
            raise SegunetError(
                f"{source}: its values span more than float32 holds (percentiles {low:g} to "
                f"{high:g} lie beyond 3.4e38 apart), so they cannot be normalised: rescale "
                "the image"
            )
        # Oriented as training oriented the whole image (the sample: all of a small one).
        self.invert = self.polarity == "bright_objects" and bright_background(
            apply_range(sample, lo, scale))
        return lo, scale

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        channel, spatial = (index[0], index[1:]) if index else (slice(None), ())
        spatial = tuple(spatial) + (slice(None),) * (len(self.shape) - 1 - len(spatial))
        x = self._channels_first(spatial)
        if self.lo is not None:
            # Per channel, shaped for x (a whole-number index, a stack's slice, drops an axis).
            shape = (-1, *(1,) * (x.ndim - 1))
            x = apply_range(x, self.lo.reshape(shape), self.scale.reshape(shape))
            if self.invert:
                x = np.subtract(1, x, dtype=np.float32)
        return x[channel]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self[...] if dtype is None else self[...].astype(dtype)


#: Bytes of an array read at a time when every value is checked (see :func:`non_finite`).
CHECK_BYTES = 2**26


def value_blocks(shape: Sequence[int], itemsize: int) -> Iterator[tuple[slice | int, ...]]:
    """Indexes that read an array of ``shape`` in blocks of about :data:`CHECK_BYTES` at
    most: runs along the first axis, or, where one index of it holds more, each of its
    indexes in blocks of the next."""
    if not shape:
        yield ()
        return
    per_index = itemsize * math.prod(shape[1:])
    if per_index > CHECK_BYTES and len(shape) > 1:
        for i in range(shape[0]):
            for rest in value_blocks(shape[1:], itemsize):
                yield (i, *rest)
        return
    for s in blocks(shape[0], max(1, CHECK_BYTES // max(1, per_index))):
        yield (s,)


def non_finite(array: Any) -> int:
    """How many NaN or infinite values ``array`` holds: every value, read block by block (a
    lazily read array never comes into memory whole); 0 for integer arrays, unread."""
    if not np.issubdtype(np.dtype(array.dtype), np.inexact):
        return 0
    shape = tuple(int(n) for n in array.shape)
    return sum(int(np.size(block) - np.count_nonzero(np.isfinite(block)))
               for block in (np.asarray(array[index])
                             for index in value_blocks(shape, np.dtype(array.dtype).itemsize)))


def refuse_non_finite(raw: Any, source: str) -> None:
    """A one-line SegunetError if the input holds NaN or infinite values: every pixel is
    checked, as one in the network's input turns its whole receptive field non-finite."""
    count = non_finite(raw)
    if count:
        raise SegunetError(
            f"{source} holds {count:,} NaN or infinite value{'s' * (count != 1)} (of "
            f"{math.prod(raw.shape):,}): replace them in the file (e.g. by 0 or the "
            "background level) or leave the file out"
        )


def image_for_model(
    raw: Any, path: Path, in_channels: int, spatial_dims: int, data_cfg: dict
) -> NormalizedImage:
    """Decide the raw array's axes and wrap it as the model's normalised input; one-line
    errors naming the file when its shape or channels do not fit the model."""
    shape = tuple(int(s) for s in raw.shape)
    layout, channels = _layout(shape, path, spatial_dims)
    fits, convert = _fits(channels, in_channels, data_cfg)
    if not fits:
        raise SegunetError(
            f"{path} has {channels} channel{'s' * (channels != 1)} (shape {shape}) but the "
            f"model expects {in_channels}: give images like the training data"
        )
    percentiles = data_cfg.get("percentiles", DEFAULT_PERCENTILES)
    return NormalizedImage(raw, layout, channels, convert, percentiles, str(path),
                           data_cfg.get("polarity", "as_is"))


def stack_for_model(
    raw: Any, path: Path, in_channels: int, spatial_dims: int, data_cfg: dict
) -> NormalizedImage | None:
    """A grey ``(Z, Y, X)`` stack given to a 2D model, whose depth is no channel count the
    model takes, as the normalised ``(C, Z, Y, X)`` input to predict slice by slice; None
    for anything else. The stack is normalised as a whole, as training on a stack does."""
    shape = tuple(int(s) for s in raw.shape)
    if spatial_dims != 2 or len(shape) != 3:
        return None
    layout, channels = _layout(shape, path, spatial_dims)
    declared = first_axis_type(path)  # an OME-Zarr says which it is; else the counts do
    if layout != "first" or declared == "channel":
        return None
    grey, convert = _fits(1, in_channels, data_cfg)
    if declared == "space" and not grey:
        raise SegunetError(
            f"{path} is a (Z, Y, X) stack of {shape[0]} slices (so its axes say) but the model "
            f"takes {in_channels}-channel images: give images like the training data"
        )
    if (declared is None and _fits(channels, in_channels, data_cfg)[0]) or not grey:
        return None
    percentiles = data_cfg.get("percentiles", DEFAULT_PERCENTILES)
    return NormalizedImage(raw, "grey", 1, convert, percentiles, str(path),
                           data_cfg.get("polarity", "as_is"))


def first_axis_type(path: Path) -> str | None:
    """The type an OME-Zarr image's metadata gives its first axis (``channel``, ``space``);
    None for any other file, whose axes only their sizes tell."""
    file, key = split_key(path)
    if file_kind_or_none(file) != "zarr":
        return None
    from segunet.data import omezarr

    if not omezarr.is_ome_zarr(file):
        return None
    axes = omezarr.open_image(file, key).axes
    return axes[0] if axes else None


def _layout(shape: tuple[int, ...], path: Path, spatial_dims: int) -> tuple[str, int]:
    """Where a raw array of ``shape`` keeps its channels (grey, first or last) and how many
    of them the model would see."""
    if len(shape) == spatial_dims:
        return "grey", 1
    if len(shape) == spatial_dims + 1:
        # Pictures and RGB TIFFs store colour last; multi-channel microscopy stores it first.
        last = file_kind_or_none(split_key(path)[0]) == "picture" or shape[-1] <= 4 < shape[0]
        if last:
            return "last", 3 if shape[-1] == 4 else shape[-1]  # RGBA: alpha is no content
        return "first", shape[0]
    axes = "Z, Y, X" if spatial_dims == 3 else "Y, X"
    raise SegunetError(
        f"{path} has shape {shape}: the {spatial_dims}D model takes ({axes}) or "
        f"(C, {axes}) images" + (" or (Z, Y, X) stacks" if spatial_dims == 2 else "")
    )


def _fits(channels: int, in_channels: int, data_cfg: dict) -> tuple[bool, int | None]:
    """Whether images of ``channels`` channels fit the model, and the conversion that
    training applied to them (RGB -> grey, grey -> RGB), if any."""
    convert = data_cfg.get("channels")
    convertible = convert == in_channels and (channels, convert) in ((3, 1), (1, 3))
    return channels == in_channels or convertible, convert if convertible else None


def check_pixel_type(raw: Any, path: Path) -> None:
    """A one-line SegunetError for pixels that are no real numbers (complex values would
    lose their imaginary part, text or records cannot be converted at all)."""
    kind = np.dtype(raw.dtype).kind
    if kind not in "biuf":
        raise SegunetError(
            f"{path} holds {np.dtype(raw.dtype)} values: images must hold integer, float or "
            "bool pixels; convert it (e.g. the magnitude of a complex image)"
        )
