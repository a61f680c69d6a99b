"""``segunet predict``: segment image files with a trained checkpoint.

``segunet predict checkpoint=<ckpt or run folder> input=<file, folder or glob> output=<folder>``

Per input ``<stem>``, writes ``<stem>_probabilities`` (float16, ``(classes, *spatial)``),
``<stem>_labels`` (uint8 argmax) and ``<stem>_instances`` (uint16/uint32 objects, see
:mod:`segunet.postprocess.instances`) as TIFF or zarr, each atomically. The model and the input
normalisation come from the config stored in the checkpoint, so nothing about the training run
needs repeating. Inputs are read tile by tile where the format allows (uncompressed TIFF by
memory map, compressed TIFF and zarr through zarr), and with ``format=zarr`` the probabilities
are written band by band to disk too (see :class:`segunet.infer.merger.BandMerger`) and the labels
block by block from them, so images larger than memory can be predicted. Instances are not
streamed: connected components and watershed need the whole foreground map in memory
(float32, plus the instance labels), as does ``format=tif``, which writes each output whole.

A ``(Z, Y, X)`` stack given to a 2D model whose depth is no channel count the model takes is
predicted slice by slice (see :func:`predict_stack`). The checkpoint and the output folder are
checked before anything is predicted; temps left by killed runs (see
:func:`segunet.atomic.remove_stale_temps`) are removed at the start.

An input whose pixel size differs from the checkpoint's training one is predicted at the
training pixel size and its outputs resampled back onto its own grid (see
:mod:`segunet.infer.resample`). ``format=ome-zarr`` writes one OME-NGFF image per input, the
probabilities with the labels and instances as its label images (see
:mod:`segunet.data.omezarr`), streamed as ``format=zarr`` is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from omegaconf import MISSING
from tqdm import tqdm

from segunet.atomic import remove_stale_temps
from segunet.config.args import check_range, option, parse, run_command, usage
from segunet.data.io import (
    BIGTIFF_BYTES,
    SUPPORTED,
    CheckedReads,
    atomic_path,
    file_kind,
    output_folder,
    read_array,
    read_pixel_size,
    refuse_existing,
    short_message,
    split_key,
    temp_path,
)
from segunet.data.pixelsize import PixelSize, check_pixel_size, describe, spatial, tiff_options
from segunet.data.sources import apply_range, convert_channels, percentile_range
from segunet.errors import SegunetError, first_line
from segunet.infer.predict import Blend
from segunet.infer.resample import Grid, grid_for
from segunet.postprocess.decoding import PostProcess, decode_boundary, decode_foreground
from segunet.postprocess.instances import WatershedOn, instances_from_foreground
from segunet.pretrained import checkpoint_or_model

OUTPUTS = ("probabilities", "labels", "instances")
#: Percentiles are computed on at most about this many pixels per channel: a strided subsample
#: of larger images, which moves them by a negligible amount and bounds the reading.
PERCENTILE_SAMPLE = 2**24
#: Chunk edge of zarr outputs per spatial axis (2D, 3D).
ZARR_CHUNK = {2: 512, 3: 64}

USAGE = """usage: segunet predict checkpoint=<file or run folder> input=<file, folder or glob>
                       output=<folder> [key=value ...]
       segunet predict model=nuclei input=... output=...   (a model that ships with segunet)

output must be a folder you can write to (created if missing); it is checked before the
prediction starts. Each output is written to a hidden temp name and renamed when complete:
an error or Ctrl-C leaves no partial file, and temps of runs killed outright (kill -9) are
removed by the next predict into that folder.

Z-stacks and 2D models: a (Z, Y, X) stack whose depth Z is no channel count of the 2D model
is predicted slice by slice (the stack normalised as a whole, as training on a stack does)
and written back as stacks, slice by slice: probabilities (Z, C, Y, X) (Fiji's hyperstack
order; a 3D model's are (C, Z, Y, X)), labels (Z, Y, X), instances (Z, Y, X) uint32 with the
2D objects of each slice numbered on through the stack, so no id repeats across slices.
With format=tif these TIFFs are uncompressed.

example:
  segunet predict checkpoint=outputs/train/2025-01-01_12-00-00 input='data/test/*.tif' \\
      output=predictions outputs=labels,instances instances.method=watershed
"""


# --- inputs --------------------------------------------------------------------------------


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
    images (:func:`segunet.data.sources.prepare_image`): channels first (an RGBA image loses
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
    ) -> None:
        self.raw, self.layout, self.raw_channels = raw, layout, channels
        self.convert_to, self.source = convert_to, source
        spatial = raw.shape[1:] if layout == "first" else (
            raw.shape[:-1] if layout == "last" else raw.shape
        )
        self.shape = (convert_to or channels, *(int(s) for s in spatial))
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)
        self.lo = self.scale = None
        refuse_non_finite(raw, source)
        if percentiles is not None:
            self.lo, self.scale = self._range(percentiles, source)

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


def refuse_non_finite_output(probs: Any, path: Path) -> None:
    """The last check before outputs are moved into place: probabilities that are not all
    finite (a checkpoint with NaN weights, input values that overflow once normalised) are
    an error, and the outputs of ``path`` are not written."""
    count = non_finite(probs)
    if count:
        raise SegunetError(
            f"{path}: the model predicted {count:,} NaN or infinite probabilit"
            f"{'ies' if count != 1 else 'y'}, so nothing was written for it: check the "
            "checkpoint (its weights may be non-finite) and the input's value range"
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
    percentiles = data_cfg.get("percentiles", (1.0, 99.8))
    return NormalizedImage(raw, layout, channels, convert, percentiles, str(path))


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
    grey, convert = _fits(1, in_channels, data_cfg)
    if layout != "first" or _fits(channels, in_channels, data_cfg)[0] or not grey:
        return None
    percentiles = data_cfg.get("percentiles", (1.0, 99.8))
    return NormalizedImage(raw, "grey", 1, convert, percentiles, str(path))


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


# --- outputs -------------------------------------------------------------------------------


def output_paths(output: Path, stem: str, outputs: Sequence[str], fmt: str) -> dict[str, Path]:
    """Where each output of an input goes; with ``ome-zarr``, all into one image."""
    if fmt == "ome-zarr":
        return dict.fromkeys(outputs, output / f"{stem}.ome.zarr")
    suffix = ".zarr" if fmt == "zarr" else ".tif"
    return {name: output / f"{stem}_{name}{suffix}" for name in outputs}


def label_dtype(top: int) -> np.dtype:
    return np.dtype(np.uint16 if top < 2**16 else np.uint32)


def class_dtype(classes: int) -> np.dtype:
    """Of a label map of ``classes`` classes: uint8, or uint16 beyond 256."""
    return np.dtype(np.uint8 if classes <= 256 else np.uint16)


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
    chunks = (*shape[:lead], *(min(s, ZARR_CHUNK[dims]) for s in shape[lead:]))
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


def blocks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def foreground_of(probs: Any, classes: Sequence[int], rows: int) -> np.ndarray:
    """Summed foreground probability ``(*spatial)`` float32, read ``rows`` at a time along the
    first spatial axis (so class probabilities on disk never come into memory whole)."""
    out = np.empty(probs.shape[1:], np.float32)
    for s in blocks(probs.shape[1], rows):
        out[s] = np.asarray(probs[list(classes), s], np.float32).sum(0)
    return out


def argmax_of(probs: Any, rows: int, out: Any = None) -> Any:
    """The most probable class ``(*spatial)`` (uint8, or uint16 beyond 256 classes), read and
    written ``rows`` at a time along the first spatial axis: into ``out`` (a zarr array, so
    the label map never comes into memory whole) or a new numpy array."""
    dtype = class_dtype(probs.shape[0])
    out = np.empty(probs.shape[1:], dtype) if out is None else out
    for s in blocks(probs.shape[1], rows):
        out[s] = np.asarray(probs[:, s]).argmax(0).astype(dtype)
    return out


# --- the command ---------------------------------------------------------------------------


@dataclasses.dataclass
class InstancesConfig:
    """``instances.*``: how the objects of the ``instances`` output are made."""

    method: Literal["auto", "components", "watershed"] = option(
        "auto", "auto: the decoding of the checkpoint's training target with the settings "
        "`segunet tune` or training chose on its validation images (else the defaults); "
        "components or watershed: connected components or a watershed of the foreground")
    threshold: float | None = option(None, "foreground probability (null: as tuned, else 0.5)")
    min_size: int | None = option(
        None, "objects of fewer pixels are removed (null: as tuned, else 0)")
    seed_threshold: float | None = option(
        None, "boundary target: interior probability of a seed (null: as tuned, else 0.5)")
    grow: int | None = option(
        None, "foreground target: close gaps up to 2*grow px between touching objects "
        "(null: as tuned, else 0)")
    watershed_on: WatershedOn = option("distance", "what the watershed method floods")
    min_distance: int = option(3, "the watershed method: least distance between seeds, px")
    h: float | None = option(
        None, "the watershed method: seeds are h-maxima of this height; null: peaks "
        "(peak_local_max)")
    foreground_classes: list[int] | None = option(
        None, "the classes that are foreground, e.g. 1,2 (null: all but 0)")

    def __post_init__(self) -> None:
        # Checked before predicting: a bad value would otherwise stop the run with the
        # probabilities and labels already written.
        for key in ("threshold", "seed_threshold"):
            value = getattr(self, key)
            check_range(f"instances.{key}", value, value is None or 0 <= value < 1,
                        "a probability, 0 <= p < 1")
        for key, low in (("min_size", 0), ("grow", 0), ("min_distance", 1)):
            value = getattr(self, key)
            check_range(f"instances.{key}", value, value is None or value >= low,
                        f"a whole number >= {low}")
        check_range("instances.h", self.h, self.h is None or self.h > 0,
                    "h > 0 (or null for peak_local_max seeds)")

    def given(self) -> dict[str, Any]:
        """The decoding settings given (None: as tuned, or the default)."""
        return {"threshold": self.threshold, "seed_threshold": self.seed_threshold,
                "min_size": self.min_size, "grow": self.grow}

    def of_foreground(self) -> dict[str, Any]:
        """The keyword arguments of
        :func:`~segunet.postprocess.instances.instances_from_foreground`."""
        return {
            "method": "components" if self.method == "auto" else self.method,
            "min_size": self.min_size or 0,
            "threshold": 0.5 if self.threshold is None else self.threshold,
            "watershed_on": self.watershed_on, "min_distance": self.min_distance, "h": self.h,
        }


@dataclasses.dataclass
class PredictConfig:
    """The arguments of ``segunet predict`` (see :data:`USAGE`)."""

    checkpoint: str | None = option(
        None, "a checkpoint file, or a run folder (its best.pt); or give model=")
    model: str | None = option(
        None, "a model that ships with segunet instead of a checkpoint: nuclei (DSB 2018 "
        "fluorescence nuclei)")
    input: str = option(MISSING, "an image file, a folder of them or a glob ('data/*.tif')")
    output: Path = option(MISSING, "the folder the outputs go to (created if missing)")
    tile: list[int] | None = option(
        None, "network input tile, e.g. 572,572 (one size: every axis); rounded down to a "
        "valid size (valid nets: at least one whose output spans a pooling step); null: auto")
    batch_size: int = option(8, "tiles per forward pass")
    tta: bool | None = option(
        None, "average over the 8 rotations/reflections (2D) or flips (3D); null: as tuned, "
        "else false")
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    compile: bool = option(
        False, "torch.compile the network: on a GPU about 1.5x the tiles/s after a one-off "
        "compile (tens of seconds); for many or large images. If compiling fails, one "
        "warning and it runs eagerly")
    outputs: list[Literal["probabilities", "labels", "instances"]] = option(
        list(OUTPUTS), "which outputs to write, e.g. labels,instances")
    format: Literal["tif", "tiff", "zarr", "ome-zarr"] = option(
        "tif", "zarr: probabilities and labels are streamed to disk; ome-zarr: the same, as "
        "one OME-NGFF image <stem>.ome.zarr per input (the probabilities, always, with the "
        "labels and instances under labels/, each a pyramid) for napari, Fiji and ome-zarr")
    resample: bool = option(
        True, "an input whose pixel size differs from the model's training one by more "
        "than 5% is predicted at the training pixel size and its outputs resampled back "
        "onto its own grid; false: predict every input as it is")
    pixel_size: list[float] | None = option(
        None, "the inputs' pixel size in um per spatial axis (one value: all), instead of "
        "what their files record")
    overwrite: bool = option(False, "replace existing outputs (else an existing one is an error)")
    skip_existing: bool = option(
        False, "keep existing outputs and predict only what is missing: to continue a batch "
        "stopped by an error or Ctrl-C")
    blend: Blend = option("gaussian", "tile blending of same-padded models")
    overlap: float = option(0.25, "tile overlap of same-padded models, 0 <= overlap < 1")
    instances: InstancesConfig = dataclasses.field(default_factory=InstancesConfig)
    #: How the instances are made: set once the checkpoint is read.
    decoder: Decoder | None = dataclasses.field(default=None, init=False)
    #: The model's training pixel size (um per spatial axis), if the checkpoint has one.
    trained_pixel_size: PixelSize | None = dataclasses.field(default=None, init=False)

    def __post_init__(self) -> None:
        self.checkpoint = checkpoint_or_model(self.checkpoint, self.model)
        self.output = Path(self.output)
        check_range("batch_size", self.batch_size, self.batch_size >= 1, "a whole number >= 1")
        check_range("overlap", self.overlap, 0 <= self.overlap < 1, "0 <= overlap < 1")
        check_range("tile", self.tile, not self.tile or min(self.tile) >= 1,
                    "positive sizes, e.g. 572,572")
        check_range("outputs", self.outputs, bool(self.outputs), f"some of {','.join(OUTPUTS)}")
        if self.pixel_size is not None:  # the count of sizes is checked per input
            check_pixel_size(self.pixel_size, len(self.pixel_size), "pixel_size")
        if self.tile is not None:  # one size is for every axis
            self.tile = self.tile[0] if len(self.tile) == 1 else tuple(self.tile)
        self.format = "tif" if self.format == "tiff" else self.format
        if self.overwrite and self.skip_existing:
            raise SegunetError(
                "overwrite=true and skip_existing=true contradict each other: replace the "
                "existing outputs (overwrite) or keep them and predict the rest (skip_existing)"
            )


def predict_files(options: PredictConfig) -> list[Path]:
    """Predict every input; returns the files written. The checkpoint, the output folder and
    output clashes are checked for all inputs before the first prediction, so a long run
    does not stop halfway on them."""
    from segunet.checkpoint import load_trained, pixel_size_of

    inputs = expand_inputs(options.input)
    refuse_output_in_inputs(inputs, options)
    todo = {path: targets for path, targets in plan_outputs(inputs, options).items() if targets}
    if len(todo) < len(inputs):
        print(
            f"segunet: skip_existing: {len(inputs) - len(todo)} of {len(inputs)} images have "
            f"all their outputs; predicting {len(todo)}", file=sys.stderr,
        )
    if todo:  # before the output folder: a bad checkpoint creates nothing
        from segunet.train.distributed import resolve_device

        device = str(resolve_device(options.device))  # before loading: not the file's fault
        trained = load_trained(options.checkpoint, device)
        model, config = trained.model, trained.config
        options.decoder = Decoder.of(options, config, trained.postprocess)
        recorded = pixel_size_of(trained)
        options.trained_pixel_size = tuple(recorded[0]) if recorded else None
        if options.tta is None:
            options.tta = bool(options.decoder.post and options.decoder.post.tta)
        print(f"segunet: {trained.file}: {options.decoder.describe()}", file=sys.stderr)
    output_folder(options.output, f"output={options.output}")
    removed = remove_stale_temps(options.output)
    if removed:
        print(
            f"segunet: removed {len(removed)} temporary file{'s' * (len(removed) != 1)} of "
            f"killed runs from {options.output}", file=sys.stderr,
        )
    return predict_all(todo, model, config, options, device) if todo else []


def predict_all(
    todo: dict[Path, dict[str, Path]], model: Any, config: dict, options: PredictConfig, device: str
) -> list[Path]:
    """Predict each input of ``todo`` into its outputs, one after another; a failure or
    Ctrl-C says how far the batch got and how to continue it."""
    runner = compiled(model) if options.compile else model
    written: list[Path] = []
    for i, (path, targets) in enumerate(todo.items(), 1):
        print(f"segunet: [{i}/{len(todo)}] {path}", file=sys.stderr)
        done = f"{i - 1} of {len(todo)} images done"
        try:
            files, runner = predict_or_fall_back(
                runner, model, config, path, targets, options, device
            )
        except KeyboardInterrupt:
            # Outputs are written atomically: the interrupted image left nothing behind.
            raise SegunetError(
                f"interrupted while predicting {path} ({done}): rerun with skip_existing=true "
                "to predict the rest"
            ) from None
        except SegunetError as e:
            # A bad file (unreadable, truncated, non-finite, wrong channels) stops the batch
            # rather than being skipped: it often means a broken copy or export of more than
            # one file, and a batch that went on would end with the same non-zero exit but
            # the first failure scrolled far out of sight. Nothing is lost: every finished
            # output is complete and kept, and skip_existing=true goes on from there.
            if len(todo) == 1:
                raise
            raise SegunetError(
                f"{e} ({done}: fix or move {path}, then rerun with skip_existing=true to "
                "predict the rest)"
            ) from e
        written += files
    return written


def refuse_output_in_inputs(inputs: Sequence[Path], options: PredictConfig) -> None:
    """A one-line SegunetError if ``output`` is an input or lies inside one (a zarr store),
    if an output would replace an input (``format=ome-zarr`` beside ``x.ome.zarr``), or if
    ``output`` is the folder that ``input`` lists (a folder or a glob): the next run over it
    would predict the outputs of this one as images."""
    folder = options.output.resolve()
    files = {split_key(path)[0].resolve(): path for path in inputs}
    listed = inputs != [Path(options.input)]  # a folder's listing or a glob's matches
    for file, path in files.items():
        targets = output_paths(options.output, stem_of(path), options.outputs, options.format)
        replaced = [t for t in targets.values() if t.resolve() in files]
        if file == folder or file in folder.parents:
            what = f"is the input {path}" if file == folder else f"lies inside the input {path}"
        elif replaced:
            what = f"would replace the input {files[replaced[0].resolve()]} by an output"
        elif listed and file.parent == folder:
            what = f"is the folder that input={options.input} reads"
        else:
            continue
        raise SegunetError(
            f"output={options.output} {what}: choose another output folder, so that "
            "inputs and outputs never mix"
        )


def plan_outputs(inputs: Sequence[Path], options: PredictConfig) -> dict[Path, dict[str, Path]]:
    """The outputs to write per input: all requested ones, less those that exist with
    ``skip_existing``. Two inputs writing one file, or an existing output without
    ``overwrite``/``skip_existing``, are one-line errors."""
    plans: dict[Path, dict[str, Path]] = {}
    owners: dict[Path, Path] = {}
    for path in inputs:
        plans[path] = output_paths(options.output, stem_of(path), options.outputs, options.format)
        for target in dict.fromkeys(plans[path].values()):  # ome-zarr: one for all
            if target in owners:
                raise SegunetError(
                    f"{owners[target]} and {path} would both write {target}: rename one"
                )
            owners[target] = path
            if not options.skip_existing:
                refuse_existing(target, options.overwrite, ", skip_existing=true to keep it")
        if options.skip_existing:
            plans[path] = {k: v for k, v in plans[path].items() if not v.exists()}
    return plans


def predict_or_fall_back(
    runner: Any, model: Any, config: dict, path: Path, targets: dict[str, Path],
    options: PredictConfig, device: str,
) -> tuple[list[Path], Any]:
    """:func:`predict_file` with ``runner``; if a compiled runner fails, one warning and the
    eager ``model`` from then on. Returns the files written and the runner to go on with."""
    try:
        return predict_file(runner, config, path, targets, options, device), runner
    except Exception as e:
        if runner is model or isinstance(e, SegunetError):
            raise
        # Outputs are written atomically: a failed attempt leaves none to clean up.
        warnings.warn(
            f"torch.compile failed ({first_line(e)}); predicting without it "
            "(compile=false skips the attempt)", RuntimeWarning, stacklevel=2,
        )
        return predict_file(model, config, path, targets, options, device), model


def compiled(model: Any) -> Any:
    """``torch.compile`` of the network with its BatchNorms folded (what
    :func:`~segunet.infer.predict.predict_tiled` runs for an eager model too)."""
    import torch

    from segunet.models.fuse import fold_batchnorm

    return torch.compile(fold_batchnorm(model))


def predict_file(
    model: Any, config: dict, path: Path, targets: dict[str, Path], options: PredictConfig,
    device: str,
) -> list[Path]:
    """Predict one image and write the requested outputs to ``targets``: on the model's
    training pixel grid where the input's pixel size differs (see :mod:`segunet.infer.resample`),
    the outputs on the input's own grid."""
    from segunet.checkpoint import unwrap

    net = unwrap(model)  # the sizes of a compiled model's network
    dims, classes = net.spatial_dims, net.out_channels
    foreground = foreground_classes(options, classes, targets)
    data_cfg = config.get("data") or {}
    with contextlib.ExitStack() as stack:
        raw = open_array(path, stack)
        check_pixel_type(raw, path)
        volume = stack_for_model(raw, path, net.in_channels, dims, data_cfg)
        if volume is not None:
            grid = input_grid(path, volume.shape[2:], options)
            say_tile_reduced(net, grid.model_shape, options.tile, path)
            out = Outputs(targets, options, grid, channel_names(config, classes), path)
            return predict_stack(model, volume, grid, out, options, device, foreground)
        image = image_for_model(raw, path, net.in_channels, dims, data_cfg)
        grid = input_grid(path, image.shape[1:], options)
        say_tile_reduced(net, grid.model_shape, options.tile, path)
        out = Outputs(targets, options, grid, channel_names(config, classes), path)
        if options.format == "tif":
            return predict_whole(model, grid.to_model(image), grid, out, options, device,
                                 foreground)
        return predict_streamed(model, grid.to_model(image), grid, out, options, device,
                                foreground)


def check_pixel_type(raw: Any, path: Path) -> None:
    """A one-line SegunetError for pixels that are no real numbers (complex values would
    lose their imaginary part, text or records cannot be converted at all)."""
    kind = np.dtype(raw.dtype).kind
    if kind not in "biuf":
        raise SegunetError(
            f"{path} holds {np.dtype(raw.dtype)} values: images must hold integer, float or "
            "bool pixels; convert it (e.g. the magnitude of a complex image)"
        )


def say_tile_reduced(net: Any, shape: Sequence[int], tile: Any, path: Path) -> None:
    """One line when ``tile=`` is larger than the image needs on some axis: it is cut to the
    smallest tile that predicts the image in one pass (a larger one computes only padding,
    and a very large one does not fit in memory)."""
    from segunet.infer.predict import tile_shapes, whole_image_tile

    if tile is None:
        return
    wanted = [tile] * len(shape) if isinstance(tile, int) else list(tile)
    used = tile_shapes(net, shape, tile)[0]  # a one-line error for the wrong axis count
    if any(w > n for w, n in zip(wanted, whole_image_tile(net, shape))):
        given = tile if isinstance(tile, int) else ",".join(map(str, tile))
        print(f"segunet: {path}: tile={given} is larger than this {' x '.join(map(str, shape))}"
              f" px image needs: predicting in tiles of {' x '.join(map(str, used))} px",
              file=sys.stderr)


def input_grid(path: Path, shape: Sequence[int], options: PredictConfig) -> Grid:
    """The input's pixel size (``pixel_size=``, else its file's) and the grid the model
    predicts it on; a line on stderr when it is resampled, or cannot be."""
    dims = len(shape)
    sizes = check_pixel_size(options.pixel_size, dims, "pixel_size")
    sizes = sizes or spatial(read_pixel_size(path), dims)
    trained = spatial(options.trained_pixel_size, dims)
    grid = grid_for(shape, sizes, trained, options.resample, str(path))
    if grid.resampled:
        print(f"segunet: {path}: pixel size {describe(sizes)}, the model's {describe(trained)}: "
              f"predicting at {' x '.join(map(str, grid.model_shape))} px", file=sys.stderr)
    elif options.resample and trained is not None and sizes is None:
        print(f"segunet: {path} records no pixel size: predicted as it is (pixel_size=... "
              f"resamples it to the model's {describe(trained)})", file=sys.stderr)
    return grid


def channel_names(config: dict, classes: int) -> list[str]:
    """The class names of the training data, or ``class 0``, ``class 1``, ..."""
    names = (config.get("data") or {}).get("class_names")
    if names and len(names) == classes:
        return [str(n) for n in names]
    return [f"class {k}" for k in range(classes)]


class Outputs:
    """Where one input's outputs go, in ``options.format``: a TIFF each (written whole, or
    slice by slice through a memory map), a zarr store each, or one OME-Zarr image (whose
    image is always the probabilities). Each is written at a temp name and moved into
    place when complete, as the ``with`` block ends without an error. The outputs carry the
    input's pixel size where the format has a place for it."""

    def __init__(
        self, targets: dict[str, Path], options: PredictConfig, grid: Grid,
        names: Sequence[str], path: Path,
    ) -> None:
        self.targets, self.format, self.names = targets, options.format, list(names)
        self.folder, self.path, self.stem = options.output, path, stem_of(path)
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
            chunks = (1,) * per_slice + (ZARR_CHUNK[dims],) * dims
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
        chunks = (*shape[:lead], *(min(s, ZARR_CHUNK[dims]) for s in shape[lead:]))
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


def predict_whole(
    model: Any, image: Any, grid: Grid, out: Outputs, options: PredictConfig, device: str,
    foreground: Sequence[int],
) -> list[Path]:
    """Predict into memory and write each requested output whole (``format=tif``)."""
    from segunet.infer.predict import predict_tiled

    with out:
        model_probs = predict_tiled(model, image, **tiling(options, device, progress=True))
        refuse_non_finite_output(model_probs, out.path)
        probs = np.asarray(grid.to_input(model_probs))
        rows = rows_per_block(probs.shape[0], grid.shape)
        if "probabilities" in out.targets:
            out.write("probabilities", probs.astype(np.float16))
        if "labels" in out.targets:
            out.write("labels", argmax_of(probs, rows))
        if "instances" in out.targets:
            del probs
            out.write("instances", instances_of(model_probs, grid, options, foreground))
    return out.written


def predict_streamed(
    model: Any, image: Any, grid: Grid, out: Outputs, options: PredictConfig, device: str,
    foreground: Sequence[int],
) -> list[Path]:
    """Predict band by band into zarr (``format=zarr`` or ``ome-zarr``): the probabilities
    straight into their output, or, when resampled, into a hidden store on the model's
    grid that is then resampled band by band into it; the labels block by block from
    them. Neither comes into memory whole."""
    from segunet.checkpoint import unwrap
    from segunet.infer.predict import predict_tiled

    classes, dims = unwrap(model).out_channels, len(grid.shape)
    chunk = ZARR_CHUNK[dims]
    with out:
        probs = out.array("probabilities", (classes, *grid.shape), np.float16, dims)
        model_probs = probs
        if grid.resampled:
            model_probs = out.scratch(f"{out.stem}_model_grid.zarr",
                                      (classes, *grid.model_shape), np.float16, dims)
        predict_tiled(model, image, out=model_probs, **tiling(options, device, progress=True))
        refuse_non_finite_output(model_probs, out.path)
        # Whole chunks, block by block: nothing in memory whole.
        rows = max(chunk, rows_per_block(classes, grid.shape) // chunk * chunk)
        if grid.resampled:  # a chunk row at a time: its window on the model's grid is larger
            back = grid.to_input(model_probs)
            for s in blocks(grid.shape[0], chunk):
                probs[:, s] = back[:, s]
        if "labels" in out.targets:
            argmax_of(probs, rows, out.array("labels", grid.shape, class_dtype(classes), dims))
        if "instances" in out.targets:
            out.write("instances", instances_of(model_probs, grid, options, foreground))
    return out.written


def instances_of(
    model_probs: Any, grid: Grid, options: PredictConfig, foreground: Sequence[int]
) -> np.ndarray:
    """The objects decoded on the model's grid (where the tuned settings, in its pixels,
    hold) and carried onto the input's by nearest neighbour, as uint16 or uint32."""
    rows = rows_per_block(model_probs.shape[0], model_probs.shape[1:])
    labels = grid.labels_to_input(options.decoder(model_probs, foreground, rows))
    return labels.astype(label_dtype(labels.max()))


def predict_stack(
    model: Any, volume: NormalizedImage, grid: Grid, out: Outputs, options: PredictConfig,
    device: str, foreground: Sequence[int],
) -> list[Path]:
    """Predict a ``(Z, Y, X)`` stack with a 2D model slice by slice, writing each output
    slice by slice as a stack: probabilities ``(Z, C, Y, X)`` float16 (an OME-Zarr's ``(C,
    Z, Y, X)``), labels and instances ``(Z, Y, X)``. Instances are the 2D objects of each
    slice, numbered on through the stack (uint32), so no two slices share an id. Only one
    slice's results are in memory. ``grid``: a slice's."""
    from segunet.checkpoint import unwrap
    from segunet.infer.predict import predict_tiled

    classes = unwrap(model).out_channels
    depth, spatial = volume.shape[1], grid.shape
    print(
        f"segunet: {out.path} is a stack of {depth} slices (shape {volume.raw.shape}) and the "
        f"model is 2D: predicting slice by slice", file=sys.stderr,
    )
    shapes = {
        "probabilities": ((depth, classes, *spatial), np.float16),
        "labels": ((depth, *spatial), class_dtype(classes)),
        "instances": ((depth, *spatial), np.uint32),
    }
    rows, predict = rows_per_block(classes, spatial), tiling(options, device, progress=False)
    with out:
        arrays = {name: out.array(name, *shapes[name], 2, per_slice=True) for name in out.filled}
        place = {name: _slice_of(name, options.format) for name in arrays}
        count = 0  # objects in the slices before
        for z in tqdm(range(depth), unit="slice", desc="predict"):
            model_probs = predict_tiled(model, grid.to_model(volume[:, z]), **predict)
            refuse_non_finite_output(model_probs, out.path)
            probs = np.asarray(grid.to_input(model_probs))
            if "probabilities" in arrays:
                arrays["probabilities"][place["probabilities"](z)] = probs.astype(np.float16)
            if "labels" in arrays:
                arrays["labels"][z] = argmax_of(probs, rows)
            if "instances" in arrays:
                objects = instances_of(model_probs, grid, options, foreground).astype(np.uint32)
                arrays["instances"][z] = np.where(objects > 0, objects + count, 0)
                count += int(objects.max())
    return out.written


def _slice_of(name: str, fmt: str) -> Any:
    """The index of slice ``z`` in an output array of a stack."""
    if name == "probabilities" and fmt == "ome-zarr":
        return lambda z: (slice(None), z)
    return lambda z: z


@dataclasses.dataclass(frozen=True)
class Decoder:
    """How the instances are made: with ``instances.method=auto`` the decoding of the
    checkpoint's training target (:mod:`segunet.postprocess.decoding`) with its tuned settings, each
    overridden by an ``instances.*`` key given; else the components or watershed of the
    foreground (:func:`segunet.postprocess.instances.instances_from_foreground`)."""

    target: str
    post: PostProcess | None  # None: the components/watershed method of ``instances``
    instances: dict[str, Any]
    tuned: bool = False

    @classmethod
    def of(cls, options: PredictConfig, config: dict, tuned: dict | None) -> Decoder:
        target = (config.get("data") or {}).get("target", "foreground")
        if options.instances.method != "auto":
            return cls(target, None, options.instances.of_foreground())
        base = PostProcess.from_dict(tuned["settings"]) if tuned else PostProcess()
        given = {k: v for k, v in options.instances.given().items() if v is not None}
        return cls(target, dataclasses.replace(base, **given), {}, tuned is not None)

    def __call__(self, probs: Any, foreground: Sequence[int], rows: int) -> np.ndarray:
        """Objects of ``probs`` ``(C, *spatial)`` (an array or a zarr store on disk, read
        ``rows`` at a time: only the maps a decoding needs come into memory)."""
        if self.post is None:
            return instances_from_foreground(foreground_of(probs, foreground, rows),
                                             **self.instances)
        if self.target == "boundary":
            interior, boundary = (foreground_of(probs, [k], rows) for k in (1, 2))
            return decode_boundary(interior, boundary, self.post)
        return decode_foreground(foreground_of(probs, foreground, rows), self.post)

    def describe(self) -> str:
        if self.post is None:
            return f"instances by {self.instances['method']}"
        settings = ", ".join(f"{k}={v}" for k, v in self.post.as_dict().items())
        how = "tuned on its validation images" if self.tuned else "defaults (never tuned)"
        return f"instances of the {self.target} target, {how}: {settings}"


def foreground_classes(options: PredictConfig, classes: int, targets: dict[str, Path]) -> tuple:
    """``instances.foreground_classes`` (default: all but 0), checked against the model."""
    foreground = tuple(options.instances.foreground_classes or range(1, classes))
    if "instances" in targets and (
        not foreground or max(foreground) >= classes or min(foreground) < 0
    ):
        raise SegunetError(
            f"instances.foreground_classes={list(foreground)} must name classes of the "
            f"model's 0..{classes - 1}"
        )
    return foreground


def rows_per_block(classes: int, spatial: Sequence[int]) -> int:
    """Rows per block when reducing probabilities: about 64 Mi values at a time."""
    return max(1, 2**26 // max(1, classes * math.prod(spatial[1:])))


def tiling(options: PredictConfig, device: str, progress: bool) -> dict[str, Any]:
    """The keyword arguments of :func:`segunet.infer.predict.predict_tiled` from the options."""
    return dict(
        tile_shape=options.tile, batch_size=options.batch_size, blend=options.blend,
        overlap=options.overlap, tta=options.tta, device=device, progress=progress,
    )


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``segunet predict key=value ...``; returns the exit status (2 on an error)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> None:
        options = parse(PredictConfig, argv, "predict")
        written = predict_files(options)
        print(
            f"segunet: wrote {len(written)} file{'s' * (len(written) != 1)} to {options.output}",
            file=sys.stderr,
        )

    return run_command(body, usage(PredictConfig, USAGE), argv)


if __name__ == "__main__":
    sys.exit(main())
