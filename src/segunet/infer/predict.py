"""Tiled prediction of whole images of any size, in memory or streamed from and to disk.

Valid-padded U-Nets use the overlap-tile strategy of Ronneberger et al. (2015, Fig. 2): output
tiles cover the image, each input tile adds the context the unpadded convolutions consume,
mirror-extrapolated beyond the image border. Tile starts keep the max-pooling grid in phase,
so the tiles agree where they overlap and the result equals one pass over the whole (mirror
padded) image: no seams, no blending. Same-padded U-Nets see zero padding at every tile
border, so their tiles overlap and are blended with a Gaussian (or constant) window, placed
as MONAI's ``sliding_window_inference`` places them.

The numeric core is a few pure functions (tile sizes, tile placement, blending window: see
:mod:`segunet.data.tiling`); the pipeline reads tiles in one thread, runs the network in the
caller's and merges results in a third, so reading, computing and writing overlap and host
memory holds only the tiles in flight (plus the output, unless it is on disk: see
:mod:`segunet.infer.merger`). A lazily read image is read in full-width bands of rows, one
per row of tiles; on the GPU an in-memory image is
copied there once and its tiles cropped there, tiles are blended there in the caller's
thread, and finished bands of rows cross to the host in the writer's, so the host does next
to nothing per tile.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from segunet import interrupts
from segunet.checkpoint import unwrap
from segunet.data.tiling import (
    Blend,
    batches_touching,
    blend_window,
    clip_region,
    crop_reflect,
    plan_tiles,
    reflect_indices,
    tile_shapes,
)
from segunet.errors import SegunetError
from segunet.infer.merger import BandMerger, BoxView, CroppedMerger, InMemoryMerger, Merger
from segunet.models.fuse import fold_batchnorm

T = TypeVar("T")
#: Most bytes of activations a batch of tiles takes on the CPU (see :func:`_batch_on`).
CPU_BATCH_BYTES = 2**29


# --- test-time augmentation -------------------------------------------------------------------

Transform = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]


def symmetries(spatial_dims: int) -> list[Transform]:
    """``(forward, inverse)`` pairs on ``(N, C, *spatial)`` tensors: the 8 rotations and
    reflections of a square (the dihedral group) in 2D, the 8 combinations of axis flips in
    3D; the identity first."""
    if spatial_dims == 2:

        def pair(k: int, flip: bool) -> Transform:
            def forward(x: Tensor) -> Tensor:
                return torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))

            def inverse(y: Tensor) -> Tensor:
                y = torch.rot90(y, -k, dims=(-2, -1))
                return y.flip(-1) if flip else y

            return forward, inverse

        return [pair(k, flip) for flip in (False, True) for k in range(4)]

    def flips(axes: tuple[int, ...]) -> Transform:
        def flip(x: Tensor) -> Tensor:
            return x.flip(axes) if axes else x

        return flip, flip  # a flip is its own inverse

    axes = range(-spatial_dims, 0)
    return [flips(c) for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


# --- the predictor ----------------------------------------------------------------------------


def predict_tiled(
    model: nn.Module,
    image: Any,
    tile_shape: int | Sequence[int] | None = None,
    batch_size: int = 8,
    blend: Blend = "gaussian",
    overlap: float = 0.25,
    tta: bool = False,
    device: torch.device | str | None = None,
    out: Any = None,
    progress: bool | type[tqdm] = False,
    resident: bool | None = None,
    box: Sequence[tuple[int, int]] | None = None,
) -> Any:
    """Softmax class probabilities ``(classes, *spatial)`` of a whole image, tile by tile.

    Args:
        model: a :class:`~segunet.models.unet.UNet` (or one wrapped by DDP / torch.compile).
            A plain or DDP-wrapped model is left as it is: the tiles run through an eval copy
            with its BatchNorms folded into the convolutions. Any other wrapper (a compiled
            model) runs as given, moved to ``device`` but in its own memory layout, in eval
            mode for the call and its training mode restored.
        image: ``(channels, *spatial)``: a numpy array or any array-like sliced lazily (memmap,
            zarr, HDF5 dataset); only the tiles in flight are read.
        tile_shape: the network's input tile, rounded down to a valid size; see
            :func:`~segunet.data.tiling.tile_shapes` for the default.
        batch_size: tiles per forward pass (on the CPU, fewer where they would take more
            than :data:`CPU_BATCH_BYTES`).
        blend, overlap: for same-padded nets only: the window that weighs overlapping tiles
            (see :func:`blend_window`) and the fraction by which neighbours overlap. A
            valid-padded net's tiles need neither (Ronneberger et al. 2015, Fig. 2).
        tta: average the probabilities of the 8 rotations/reflections (2D) or flips (3D).
        device: where the network runs; default: the model's.
            On CUDA it runs under bf16 autocast on channels-last inputs.
        out: None to return a float32 numpy array; a :class:`~segunet.infer.merger.Merger` to merge
            into (returns its ``finalize()``); or an array-like of the output shape (zarr,
            memmap, ...) to fill (returns it), band by band with a
            :class:`~segunet.infer.merger.BandMerger`: host memory then holds only the tiles in
            flight and the band of rows they touch, and each chunk of a zarr ``out`` is
            written once.
        progress: show a tqdm bar with tiles/s and megapixels/s; or the tqdm class to show it
            with (``napari.utils.progress``: napari's activity dock).
        resident: True to copy the image to ``device`` once, mirror-padded, and crop the
            tiles there (no host work or copy per tile); False to read each tile on the host,
            in a background thread. Default: resident on CUDA for an in-memory numpy image
            that takes at most :data:`RESIDENT_SHARE` of the free GPU memory.
        box: ``(start, stop)`` per spatial axis (the axes left out: whole): only this box
            of an array ``out``, whole chunks of it: the batches of tiles that touch it are
            predicted, batched as for the whole image, and only the box is written, band
            by band, holding a band of the box's width. What a worker of a cluster does
            for its part of a large image, and how a volume too wide for one band is
            predicted: the boxes together write bitwise what one call for the whole image
            writes (see :func:`~segunet.infer.merger.boxes_for`).
    """
    net = unwrap(model)
    dims, classes = net.spatial_dims, net.out_channels
    _check_image(net, image)
    if batch_size < 1 or not 0 <= overlap < 1:
        raise SegunetError(
            f"need batch_size >= 1 and 0 <= overlap < 1, got {batch_size} and {overlap}"
        )
    spatial = tuple(int(s) for s in image.shape[1:])
    in_tile, out_tile = tile_shapes(net, spatial, tile_shape)
    device = torch.device(device) if device is not None else _model_device(model)
    batch_size = _batch_on(device, net, in_tile, batch_size)
    tiles = plan_tiles(spatial, in_tile, out_tile, net.padding, net.levels, overlap)
    if box is not None:
        box = (*box, *((0, n) for n in spatial[len(box):]))
        tiles = batches_touching(tiles, batch_size, out_tile, box)
    same = net.padding == "same"
    window = blend_window(tuple(out_tile), blend if same else "constant")
    merger, finish = _merger_for(out, (classes, *spatial), same, device, out_tile[0], box)
    # A merger on the computing device takes the tiles as they come: no host sync per batch.
    on_device = merger.takes(device)
    if on_device:
        window = torch.tensor(window, device=device)  # a copy: the cached window is read-only

    runner = _inference_model(model).to(device)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    layout = (torch.channels_last if dims == 2 else torch.channels_last_3d) if cuda else None
    if layout is not None and runner is not model:
        # Weights in the input's layout: cuDNN's fast bf16 kernels want both channels-last.
        # Only on our own copy: a compiled model passed in may share its weights with a
        # training run, whose layout is the trainer's choice.
        runner.to(memory_format=layout)
    transforms = symmetries(dims) if tta else [(_identity, _identity)]

    def write(item: tuple[list, Any]) -> None:
        for (_, start), probs in zip(*item):
            region, crop = clip_region(start, out_tile, spatial)
            weights = window[crop] if merger.weighted else None
            merger.add(region, probs[(slice(None), *crop)], weights)

    was_training, started, pixels = runner.training, time.perf_counter(), 0
    runner.eval()
    bar = None
    try:
        # A Ctrl-C that lands inside tqdm's constructor leaves a half-built bar, whose
        # __del__ then prints an AttributeError traceback under segunet's one-line error:
        # held until the bar is whole (and so closed below).
        with interrupts.held():
            bar_type = progress if isinstance(progress, type) else tqdm
            bar = bar_type(total=len(tiles), unit="tile", disable=not progress, desc="predict")
        with (
            torch.inference_mode(),
            autocast,
            _Writer(write, maxsize=2) as writer,
            _tile_batches(image, tiles, batch_size, in_tile, device, resident) as reader,
        ):
            for chunk, x in reader:
                x = x.to(device, non_blocking=True).float()
                if layout is not None:
                    x = x.contiguous(memory_format=layout)
                probs = _probabilities(runner, x, transforms)
                if on_device:
                    write((chunk, probs))
                else:
                    writer.put((chunk, probs.cpu().numpy()))
                pixels += len(chunk) * math.prod(out_tile)
                bar.update(len(chunk))
                rate = pixels / (time.perf_counter() - started) / 1e6
                bar.set_postfix({"MP/s": f"{rate:.2f}"}, refresh=False)  # drawn at its pace
        return finish()
    except BaseException:
        # A merger's writer thread must not go on writing into an output the caller is
        # about to remove (predict_cli's temporary zarr store).
        merger.close()
        raise
    finally:
        if bar is not None:
            bar.close()
        runner.train(was_training)


def predict_labels(
    model: nn.Module,
    image: Any,
    tile_shape: int | Sequence[int] | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """The most probable class of every pixel, ``(*spatial)`` int64: the argmax of
    :func:`predict_tiled`."""
    probs = predict_tiled(model, image, tile_shape, batch_size=batch_size, device=device)
    return probs.argmax(0)


def _batch_on(device: torch.device, net: nn.Module, in_tile: Sequence[int],
              batch_size: int) -> int:
    """``batch_size``, on the CPU at most the tiles whose activations take
    :data:`CPU_BATCH_BYTES` (a tile: about 12 maps of the first level's width at full size,
    measured on a 3D net). A larger batch buys no speed there (8 tiles of 128³ or 1: 20.1
    vs 20.0 s) and in 3D costs gigabytes (2.6 vs 1.0 GB peak RSS; timed by hand with
    ``/usr/bin/time`` on scripts/bench_scale.py's 256³ volume and 3D net, one run each)."""
    if device.type != "cpu":
        return batch_size
    widths = 12 * net.channels[0] + net.in_channels + 2 * net.out_channels
    return max(1, min(batch_size, CPU_BATCH_BYTES // (4 * math.prod(in_tile) * widths)))


def _inference_model(model: nn.Module) -> nn.Module:
    """What the tiles run through: for a plain or DDP-wrapped model, an eval copy of the
    bare network with its BatchNorms folded into the convolutions (see
    :func:`~segunet.models.fuse.fold_batchnorm`); any other wrapper (torch.compile's) as
    given: its forward is what the caller asked for, compiled code fuses each norm with its
    ReLU anyway, and a copy would compile anew."""
    if model is not unwrap(model) and not isinstance(model, DistributedDataParallel):
        return model
    return fold_batchnorm(unwrap(model))


def _probabilities(model: nn.Module, x: Tensor, transforms: list[Transform]) -> Tensor:
    """Softmax over classes (in float32, whatever autocast computed), averaged over the
    test-time transforms."""
    total = None
    for forward, inverse in transforms:
        probs = inverse(torch.softmax(model(forward(x)).float(), dim=1))
        total = probs if total is None else total + probs
    return total / len(transforms) if len(transforms) > 1 else total


def _identity(x: Tensor) -> Tensor:
    return x


def _check_image(net: nn.Module, image: Any) -> None:
    shape = tuple(getattr(image, "shape", ()))
    dims, channels = net.spatial_dims, net.in_channels
    if len(shape) != dims + 1 or shape[0] != channels:
        axes = "Z, Y, X" if dims == 3 else "Y, X"
        raise SegunetError(
            f"the model ({dims}D, {channels} input channel{'s' * (channels > 1)}) predicts "
            f"images of shape ({channels}, {axes}), got {shape}: add a channel axis "
            f"(image[None]) or move it first, or use a model trained for this data"
        )


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _merger_for(
    out: Any, shape: tuple[int, ...], weighted: bool, device: torch.device, tile_rows: int,
    box: Sequence[tuple[int, int]] | None = None,
) -> tuple[Merger, Callable]:
    """The merger to add tiles to and the function that finishes the prediction. An ``out``
    array is filled band by band, the band kept on the GPU when it fits there. So is a
    result wanted in host memory on CUDA: each band crosses to the host as soon as its last
    tile is in, while the GPU computes the next ones, rather than the whole result after the
    last tile. Elsewhere: sums in host memory."""
    if out is not None and tuple(out.shape) != shape:
        raise SegunetError(f"out has shape {tuple(out.shape)}; the prediction needs {shape}")
    if box is not None and (out is None or isinstance(out, Merger)):
        raise ValueError("box= fills part of an out array: give one")
    if isinstance(out, Merger):
        return out, out.finalize
    if box is not None:
        view = BoxView(out, box)
        rows = BandMerger.block_rows(view.shape, view.chunks)
        on_gpu = _fits_on(device, BandMerger.band_bytes(view.shape, rows, tile_rows))
        merger = CroppedMerger(BandMerger(view, weighted, device=device if on_gpu else "cpu"),
                               box)
        return merger, lambda: (merger.finalize(), out)[1]
    rows = BandMerger.block_rows(shape, getattr(out, "chunks", None))
    on_gpu = _fits_on(device, BandMerger.band_bytes(shape, rows, tile_rows))
    if out is None and not on_gpu:
        merger = InMemoryMerger(shape, weighted)
        return merger, merger.finalize
    if out is None:
        out = np.empty(shape, np.float32)  # every pixel is written: tiles cover the image
    merger = BandMerger(out, weighted, device=device if on_gpu else "cpu")
    return merger, merger.finalize


def _fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` take at most half the free memory of a CUDA ``device``."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2


# --- reading tiles ------------------------------------------------------------------------

#: Share of the free GPU memory an in-memory image (mirror-padded) may take to be kept there
#: whole, its tiles cropped on the GPU.
RESIDENT_SHARE = 0.25
#: Largest band of rows (as float32) read at once from a lazily read image.
BAND_BYTES = 2**28

Tile = tuple[tuple[int, ...], tuple[int, ...]]


@contextlib.contextmanager
def _tile_batches(
    image: Any,
    tiles: Sequence[Tile],
    batch_size: int,
    in_tile: Sequence[int],
    device: torch.device,
    resident: bool | None,
) -> Iterator[Iterator[tuple[list[Tile], Tensor]]]:
    """``(tiles, input batch)`` pairs of ``batch_size`` tiles in order, each batch
    ``(N, C, *in_tile)``, from one of three sources that give identical values: the whole
    image on ``device`` (see :func:`predict_tiled`'s ``resident``), full-width bands of rows
    read ahead from a lazy image (zarr, memmap, HDF5: one read per row of tiles instead of one
    per tile), or tiles cropped from an in-memory array. The last two are read in a
    background thread; their batches keep the image's dtype when it is a small integer or
    float32 type (converted to float32 on the device, so less crosses to it) and are pinned
    for CUDA."""
    batches = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
    in_memory = isinstance(image, np.ndarray) and not isinstance(image, np.memmap)
    if resident is None:
        resident = in_memory and _fits_resident(image, tiles, in_tile, device)
    if resident:
        with torch.inference_mode():
            padded, corner = _resident_image(image, tiles, in_tile, device)

        def crop_resident(chunk: list[Tile]) -> tuple[list[Tile], Tensor]:
            boxes = [
                (slice(None), *(slice(s - c, s - c + n) for s, c, n in zip(start, corner, in_tile)))
                for start, _ in chunk
            ]
            return chunk, torch.stack([padded[box] for box in boxes])

        yield map(crop_resident, batches)
        return
    spatial = tuple(int(n) for n in image.shape[1:])
    band_bytes = 4 * in_tile[0] * math.prod(spatial[1:]) * int(image.shape[0])
    bands = None if in_memory or band_bytes > BAND_BYTES else _Bands(image, in_tile, tiles)
    crop = bands.crop if bands is not None else functools.partial(crop_reflect, image, size=in_tile)
    pin = device.type == "cuda"

    def read(chunk: list[Tile]) -> tuple[list[Tile], Tensor]:
        batch = np.stack([crop(start) for start, _ in chunk])
        if batch.dtype not in _KEPT_DTYPES:
            batch = batch.astype(np.float32)
        x = torch.from_numpy(batch)
        return chunk, x.pin_memory() if pin else x

    try:
        with contextlib.closing(_prefetch(map(read, batches), maxsize=2)) as reader:
            yield reader
    finally:
        if bands is not None:
            bands.close()


#: Input dtypes sent to the device as they are (exactly convertible to float32 there).
_KEPT_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.float16, np.float32))


def _padded_box(tiles: Sequence[Tile], in_tile: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The corner and the far end of the box every tile's input lies in (it may leave the
    image, where it is mirrored)."""
    starts = np.array([start for start, _ in tiles])
    return starts.min(0), starts.max(0) + np.asarray(in_tile)


def _fits_resident(
    image: np.ndarray, tiles: Sequence[Tile], in_tile: Sequence[int], device: torch.device
) -> bool:
    if device.type != "cuda":
        return False
    low, high = _padded_box(tiles, in_tile)
    need = image.shape[0] * math.prod(high - low) * max(image.itemsize, 4) + image.nbytes
    free, _ = torch.cuda.mem_get_info(device)
    return need <= free * RESIDENT_SHARE


def _resident_image(
    image: Any, tiles: Sequence[Tile], in_tile: Sequence[int], device: torch.device
) -> tuple[Tensor, tuple[int, ...]]:
    """The image on ``device``, mirror-extrapolated once over the box all tiles read (the
    same indices as :func:`~segunet.data.tiling.crop_reflect`), and that box's corner."""
    low, high = _padded_box(tiles, in_tile)
    image = np.asarray(image)
    if image.dtype not in _KEPT_DTYPES:  # the host path's rule (uint16 has few CUDA kernels)
        image = image.astype(np.float32)
    x = torch.as_tensor(image, device=device)
    for axis, (lo, hi, n) in enumerate(zip(low, high, image.shape[1:]), start=1):
        if lo >= 0 and hi <= n:
            x = x.narrow(axis, int(lo), int(hi - lo))
        else:
            index = torch.as_tensor(reflect_indices(int(lo), int(hi - lo), int(n)), device=device)
            x = x.index_select(axis, index)
    return x, tuple(int(lo) for lo in low)


class _Bands:
    """Crops tiles from full-width bands of a lazily read image's rows (slabs in 3D): one
    read per row of tiles, the next band read ahead in a thread while tiles are cut from
    the current one. Tiles must come in raster order; two bands are held at most."""

    def __init__(self, image: Any, in_tile: Sequence[int], tiles: Sequence[Tile]) -> None:
        self.image, self.in_tile = image, tuple(in_tile)
        self.rest = tuple(int(n) for n in image.shape[2:])
        tops = sorted({start[0] for start, _ in tiles})
        self.following = dict(zip(tops, tops[1:]))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="segunet-read-band")
        self.bands: dict[int, Future] = {}

    def _read(self, top: int) -> np.ndarray:
        return np.asarray(crop_reflect(
            self.image, (top, *(0 for _ in self.rest)), (self.in_tile[0], *self.rest)
        ))

    def _request(self, top: int | None) -> None:
        if top is not None and top not in self.bands:
            self.bands[top] = self.pool.submit(self._read, top)

    def crop(self, start: Sequence[int]) -> np.ndarray:
        top = start[0]
        for old in [t for t in self.bands if t < top]:
            self.bands.pop(old).cancel()
        self._request(top)
        self._request(self.following.get(top))
        band = self.bands[top].result()
        return crop_reflect(band, (0, *start[1:]), self.in_tile)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# --- background threads -----------------------------------------------------------------------


class _Done:
    """Marks the end of a queue."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; a full queue never blocks a stop."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _prefetch(items: Iterable[T], maxsize: int) -> Iterator[T]:
    """Iterate ``items`` in a background thread at most ``maxsize`` ahead of the consumer
    (reading tiles overlaps computing them); its exceptions re-raise here."""
    q: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                if not _put(q, item, stop):
                    return
            _put(q, _Done, stop)
        except BaseException as e:  # handed to the consumer, which re-raises it
            _put(q, _Failed(e), stop)

    thread = threading.Thread(target=run, name="segunet-read", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _Done:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class _Writer:
    """Runs ``consume`` on each put item in a background thread, at most ``maxsize`` items
    behind (writing results overlaps computing the next ones). Leaving the ``with`` block
    waits for the last item and re-raises the thread's exception; leaving it by an
    exception stops the thread without finishing."""

    def __init__(self, consume: Callable[[Any], None], maxsize: int) -> None:
        self.consume, self.queue = consume, queue.Queue(maxsize)
        self.stop, self.error = threading.Event(), None
        self.thread = threading.Thread(target=self._run, name="segunet-write", daemon=True)

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def put(self, item: Any) -> None:
        if self.error is None and _put(self.queue, item, self.stop):
            return
        raise self.error or RuntimeError("the writer thread has stopped")

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.stop.set()
        try:
            if kind is None:
                self.put(_Done)
        finally:
            self.thread.join()
        if kind is None and self.error is not None:
            raise self.error

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _Done:
                return
            try:
                self.consume(item)
            except BaseException as e:  # re-raised by the producer's next put or exit
                self.error = e
                self.stop.set()
                return
