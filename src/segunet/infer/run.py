"""``segunet predict``: segment image files with a trained checkpoint.

``segunet predict checkpoint=<ckpt or run folder> input=<file, folder or glob> output=<folder>``

Per input ``<stem>``, writes ``<stem>_probabilities`` (float16, ``(classes, *spatial)``),
``<stem>_labels`` (uint8 argmax) and ``<stem>_instances`` (uint16/uint32 objects, see
:mod:`segunet.postprocess.instances`) as TIFF or zarr, each atomically. The model and the input
normalisation come from the config stored in the checkpoint, so nothing about the training run
needs repeating. Inputs are read tile by tile where the format allows (uncompressed TIFF by
memory map, compressed TIFF and zarr through zarr), and with ``format=zarr`` the probabilities
are written band by band to disk too (see :class:`segunet.infer.merger.BandMerger`), the labels
block by block from them and the instances block by block, stitched across the blocks (see
:mod:`segunet.infer.objects`), so images larger than memory can be predicted.
``format=tif`` writes each output whole from memory.

A ``(Z, Y, X)`` stack given to a 2D model whose depth is no channel count the model takes is
predicted slice by slice (see :func:`predict_stack`). The checkpoint and the output folder are
checked before anything is predicted; temps left by killed runs (see
:func:`segunet.atomic.remove_stale_temps`) are removed at the start.

An input whose pixel size differs from the checkpoint's training one is predicted at the
training pixel size and its outputs resampled back onto its own grid (see
:mod:`segunet.infer.resample`). ``format=ome-zarr`` writes one OME-NGFF image per input, the
probabilities with the labels and instances as its label images (see
:mod:`segunet.data.omezarr`), streamed as ``format=zarr`` is.

The command's arguments (:mod:`segunet.cli.predict`) arrive as a
:class:`~segunet.infer.settings.Batch` (which images, which outputs where) and
:class:`~segunet.infer.settings.Settings` (how, as given); once the checkpoint is read they
are resolved into a :class:`~segunet.infer.settings.Prediction`, immutable, that every
image is predicted with.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from segunet import interrupts
from segunet.atomic import remove_stale_temps
from segunet.data.io import output_folder, read_pixel_size, refuse_existing, split_key
from segunet.data.omezarr import CHUNK
from segunet.data.pixelsize import check_pixel_size, describe_pixel_size, spatial
from segunet.data.sources import class_names_of
from segunet.data.tiling import blocks
from segunet.errors import SegunetError, first_line
from segunet.infer.inputs import (
    NormalizedImage,
    check_pixel_type,
    expand_inputs,
    image_for_model,
    open_array,
    stack_for_model,
    stem_of,
)
from segunet.infer.memory import check_fits_whole
from segunet.infer.outputs import (
    Outputs,
    label_dtype,
    output_paths,
    refuse_non_finite_count,
    refuse_non_finite_output,
)
from segunet.infer.resample import Grid, grid_at, grid_for
from segunet.infer.scale import (
    Measure,
    ScaleEstimate,
    describe_factor,
    given_diameter,
    measure_objects,
    search_scale,
)
from segunet.infer.settings import Batch, Prediction, Settings
from segunet.postprocess.decoding import Decoder, argmax_of, class_dtype

if TYPE_CHECKING:
    from segunet.infer.cluster import Workers


def predict_files(batch: Batch, settings: Settings, dask: Any = None) -> list[Path]:
    """Predict every input; returns the files written. The checkpoint, the output folder and
    output clashes are checked for all inputs before the first prediction, so a long run
    does not stop halfway on them. ``dask``: a :class:`~segunet.infer.cluster.DaskConfig`
    that spreads the images over a Dask cluster."""
    from segunet.checkpoint import load_trained

    inputs = expand_inputs(batch.input)
    refuse_output_in_inputs(inputs, batch)
    todo = {path: targets for path, targets in plan_outputs(inputs, batch).items() if targets}
    if len(todo) < len(inputs):
        print(
            f"segunet: skip_existing: {len(inputs) - len(todo)} of {len(inputs)} images have "
            f"all their outputs; predicting {len(todo)}", file=sys.stderr,
        )
    if todo:  # before the output folder: a bad checkpoint creates nothing
        from segunet.models.device import resolve_device

        device = str(resolve_device(settings.device))  # before loading: not the file's fault
        trained = load_trained(settings.checkpoint, device)
        model, config = trained.model, trained.config
        prediction = Prediction.of(batch, settings, trained, device)
        print(f"segunet: {trained.file}: {prediction.decoder.describe()}", file=sys.stderr)
    output_folder(batch.output, f"output={batch.output}")
    removed = remove_stale_temps(batch.output)
    if removed:
        print(
            f"segunet: removed {len(removed)} temporary file{'s' * (len(removed) != 1)} of "
            f"killed runs from {batch.output}", file=sys.stderr,
        )
    if not todo:
        return []
    if dask is not None and dask.wanted:
        from segunet.infer.cluster import predict_on_cluster

        return predict_on_cluster(
            todo, str(trained.file), device, prediction, dask, predict_file,
            lambda workers: predict_all(todo, model, config, prediction, False, workers))
    return predict_all(todo, model, config, prediction, settings.compile)


def predict_all(
    todo: dict[Path, dict[str, Path]], model: Any, config: dict, prediction: Prediction,
    compile_net: bool, workers: Workers | None = None,
) -> list[Path]:
    """Predict each input of ``todo`` into its outputs, one after another (``compile_net``:
    with the network torch.compiled; ``workers``: with the parts of each image on a Dask
    cluster's); a failure or Ctrl-C says how far the batch got and how to continue it."""
    runner = compiled(model) if compile_net else model
    written: list[Path] = []
    for i, (path, targets) in enumerate(todo.items(), 1):
        print(f"segunet: [{i}/{len(todo)}] {path}", file=sys.stderr)
        done = f"{i - 1} of {len(todo)} images done"
        try:
            files, runner = predict_or_fall_back(
                runner, model, config, path, targets, prediction, workers
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


def refuse_output_in_inputs(inputs: Sequence[Path], batch: Batch) -> None:
    """A one-line SegunetError if ``output`` is an input or lies inside one (a zarr store),
    if an output would replace an input (``format=ome-zarr`` beside ``x.ome.zarr``), or if
    ``output`` is the folder that ``input`` lists (a folder or a glob): the next run over it
    would predict the outputs of this one as images."""
    folder = batch.output.resolve()
    files = {split_key(path)[0].resolve(): path for path in inputs}
    listed = inputs != [Path(batch.input)]  # a folder's listing or a glob's matches
    for file, path in files.items():
        targets = output_paths(batch.output, stem_of(path), batch.outputs, batch.format)
        replaced = [t for t in targets.values() if t.resolve() in files]
        if file == folder or file in folder.parents:
            what = f"is the input {path}" if file == folder else f"lies inside the input {path}"
        elif replaced:
            what = f"would replace the input {files[replaced[0].resolve()]} by an output"
        elif listed and file.parent == folder:
            what = f"is the folder that input={batch.input} reads"
        else:
            continue
        raise SegunetError(
            f"output={batch.output} {what}: choose another output folder, so that "
            "inputs and outputs never mix"
        )


def plan_outputs(inputs: Sequence[Path], batch: Batch) -> dict[Path, dict[str, Path]]:
    """The outputs to write per input: all requested ones, less those that exist with
    ``skip_existing``. Two inputs writing one file, or an existing output without
    ``overwrite``/``skip_existing``, are one-line errors."""
    plans: dict[Path, dict[str, Path]] = {}
    owners: dict[Path, Path] = {}
    for path in inputs:
        plans[path] = output_paths(batch.output, stem_of(path), batch.outputs, batch.format)
        for target in dict.fromkeys(plans[path].values()):  # ome-zarr: one for all
            if target in owners:
                raise SegunetError(
                    f"{owners[target]} and {path} would both write {target}: rename one"
                )
            owners[target] = path
            if not batch.skip_existing:
                refuse_existing(target, batch.overwrite, ", skip_existing=true to keep it")
        if batch.skip_existing:
            plans[path] = missing_outputs(plans[path], batch.format)
    return plans


def missing_outputs(plan: dict[str, Path], fmt: str) -> dict[str, Path]:
    """The outputs of ``plan`` not yet written. An OME-Zarr image holds all of an input's
    outputs, its labels and instances as label images, and is written whole: one that
    exists without some of them cannot be completed, only rewritten (one-line error)."""
    if fmt != "ome-zarr":
        return {k: v for k, v in plan.items() if not v.exists()}
    image = next(iter(plan.values()))
    if not image.exists():
        return plan
    absent = [k for k in plan if k != "probabilities" and not (image / "labels" / k).is_dir()]
    if absent:
        raise SegunetError(
            f"{image} exists without its {' and '.join(absent)} (an earlier predict with "
            "other outputs=), and an OME-Zarr image is written whole: give overwrite=true to "
            "write it again with them, or another output= folder"
        )
    return {}


def predict_or_fall_back(
    runner: Any, model: Any, config: dict, path: Path, targets: dict[str, Path],
    prediction: Prediction, workers: Workers | None = None,
) -> tuple[list[Path], Any]:
    """:func:`predict_file` with ``runner``; if a compiled runner fails, one warning and the
    eager ``model`` from then on. Returns the files written and the runner to go on with."""
    try:
        return predict_file(runner, config, path, targets, prediction, workers), runner
    except Exception as e:
        if runner is model or isinstance(e, SegunetError):
            raise
        # Outputs are written atomically: a failed attempt leaves none to clean up.
        warnings.warn(
            f"torch.compile failed ({first_line(e)}); predicting without it "
            "(compile=false skips the attempt)", RuntimeWarning, stacklevel=2,
        )
        return predict_file(model, config, path, targets, prediction), model


def compiled(model: Any) -> Any:
    """``torch.compile`` of the network with its BatchNorms folded (what
    :func:`~segunet.infer.predict.predict_tiled` runs for an eager model too)."""
    import torch

    from segunet.models.fuse import fold_batchnorm

    return torch.compile(fold_batchnorm(model))


def predict_file(
    model: Any, config: dict, path: Path, targets: dict[str, Path], prediction: Prediction,
    workers: Workers | None = None,
) -> list[Path]:
    """Predict one image and write the requested outputs to ``targets``: on the model's
    training pixel grid where the input's pixel size differs (see :mod:`segunet.infer.resample`),
    the outputs on the input's own grid. ``workers``: a Dask cluster's, that predict and
    decode the parts of a zarr or OME-Zarr output (a stack given to a 2D model is
    predicted here)."""
    from segunet.checkpoint import unwrap

    net = unwrap(model)  # the sizes of a compiled model's network
    dims, classes = net.spatial_dims, net.out_channels
    foreground = foreground_classes(prediction.foreground_classes, classes, targets)
    data_cfg = config.get("data") or {}
    with contextlib.ExitStack() as stack:
        raw = open_array(path, stack)
        check_pixel_type(raw, path)
        volume = stack_for_model(raw, path, net.in_channels, dims, data_cfg)
        if volume is not None:  # its objects measured on the middle slice
            grid = input_grid(path, volume.shape[2:], prediction, lambda: objects_scale(
                model, volume[:, volume.shape[1] // 2], prediction, foreground))
            say_tile_reduced(net, grid.model_shape, prediction.tiling.tile, path)
            out = Outputs(targets, prediction.format, prediction.output, grid,
                          class_names_of(data_cfg, classes), path)
            return predict_stack(model, volume, grid, out, prediction, foreground)
        image = image_for_model(raw, path, net.in_channels, dims, data_cfg)
        grid = input_grid(path, image.shape[1:], prediction,
                          lambda: objects_scale(model, image, prediction, foreground))
        say_tile_reduced(net, grid.model_shape, prediction.tiling.tile, path)
        out = Outputs(targets, prediction.format, prediction.output, grid,
                      class_names_of(data_cfg, classes), path)
        if prediction.format == "tif":
            check_fits_whole(path, grid.shape, grid.model_shape, classes,
                             "instances" in targets)
            return predict_whole(model, grid.to_model(image), grid, out, prediction, foreground)
        return predict_streamed(model, image, grid, out, prediction, foreground, workers)


def say_tile_reduced(net: Any, shape: Sequence[int], tile: Any, path: Path) -> None:
    """One line when ``tile=`` is larger than the image needs on some axis: it is cut to the
    smallest tile that predicts the image in one pass (a larger one computes only padding,
    and a very large one does not fit in memory)."""
    from segunet.data.tiling import tile_shapes, whole_image_tile

    if tile is None:
        return
    wanted = [tile] * len(shape) if isinstance(tile, int) else list(tile)
    used = tile_shapes(net, shape, tile)[0]  # a one-line error for the wrong axis count
    if any(w > n for w, n in zip(wanted, whole_image_tile(net, shape))):
        given = tile if isinstance(tile, int) else ",".join(map(str, tile))
        print(f"segunet: {path}: tile={given} is larger than this {' x '.join(map(str, shape))}"
              f" px image needs: predicting in tiles of {' x '.join(map(str, used))} px",
              file=sys.stderr)


def input_grid(
    path: Path | str, shape: Sequence[int], prediction: Prediction,
    objects: Callable[[], ScaleEstimate], from_file: bool = True,
) -> Grid:
    """The input's pixel size (``pixel_size=``, else its file's where ``from_file``) and the
    grid the model predicts it on: at its training pixel size (with ``resample``), or, with
    ``diameter=``, or ``scale=auto`` where either pixel size is unknown, at the scale
    ``objects()`` estimates. A line on stderr when it is resampled, or cannot be."""
    dims = len(shape)
    sizes = check_pixel_size(prediction.pixel_size, dims, "pixel_size")
    if from_file:
        sizes = sizes or spatial(read_pixel_size(Path(path)), dims)
    trained = spatial(prediction.trained_pixel_size, dims)
    resample = prediction.resample
    if prediction.diameter or (prediction.scale == "auto" and (sizes is None or trained is None)):
        estimate = objects()
        grid = grid_at(shape, estimate.factor, sizes)
        print(f"segunet: {path}: {estimate.describe()}: predicting at "
              f"{describe_factor(estimate.factor, shape) if grid.resampled else 'its own scale'}",
              file=sys.stderr)
        return grid
    grid = grid_for(shape, sizes, trained, resample, str(path))
    if grid.resampled:
        print(f"segunet: {path}: pixel size {describe_pixel_size(sizes)}, the model's "
              f"{describe_pixel_size(trained)}: predicting at "
              f"{' x '.join(map(str, grid.model_shape))} px", file=sys.stderr)
    elif resample and trained is not None and sizes is None:
        print(f"segunet: {path} records no pixel size: predicted as it is (pixel_size=... "
              f"resamples it to the model's {describe_pixel_size(trained)}"
              f"{', scale=auto to its objects' if prediction.trained_objects else ''})",
              file=sys.stderr)
    return grid


def objects_scale(
    model: Any, image: Any, prediction: Prediction, foreground: Sequence[int],
) -> ScaleEstimate:
    """The scale of ``image`` ``(C, *spatial)``: from ``diameter=``, else measured with the
    model (:mod:`segunet.infer.scale`: a few predictions of a window, without TTA)."""
    from segunet.checkpoint import unwrap
    from segunet.infer.predict import predict_tiled

    trained = prediction.trained_objects
    assert trained is not None  # Prediction.of refused the checkpoint
    if prediction.diameter:
        return given_diameter(prediction.diameter, trained)
    predict = dict(tiling(prediction, progress=False), tta=False)
    rows = rows_per_block(unwrap(model).out_channels, image.shape[1:])

    def measure(factor: float) -> Measure:
        return measure_objects(
            image, factor, lambda x: predict_tiled(model, x, **predict),
            lambda p: prediction.decoder(p, foreground, rows),
        )

    return search_scale(measure, trained)


def predict_whole(
    model: Any, image: Any, grid: Grid, out: Outputs, prediction: Prediction,
    foreground: Sequence[int],
) -> list[Path]:
    """Predict into memory and write each requested output whole (``format=tif``)."""
    with out:
        for name, array in predicted_whole(model, image, grid, prediction, foreground,
                                           out.targets, out.path, progress=True):
            out.write(name, array.astype(np.float16) if name == "probabilities" else array)
    return out.written


def predicted_whole(
    model: Any, image: Any, grid: Grid, prediction: Prediction, foreground: Sequence[int],
    wanted: Collection[str], source: Path | str, progress: Any,
) -> Iterator[tuple[str, np.ndarray]]:
    """The ``wanted`` outputs of ``image`` (the model's view of an input on ``grid``), in
    memory, one at a time: probabilities (float32) and labels on the input's grid, and the
    instances decoded on the model's (see :func:`instances_of`). What ``format=tif`` writes
    and the Python API returns."""
    from segunet.infer.predict import predict_tiled

    model_probs = predict_tiled(model, image, **tiling(prediction, progress=progress))
    refuse_non_finite_output(model_probs, source)
    probs = np.asarray(grid.to_input(model_probs))
    rows = rows_per_block(probs.shape[0], grid.shape)
    if "probabilities" in wanted:
        yield "probabilities", probs
    if "labels" in wanted:
        yield "labels", argmax_of(probs, rows)
    if "instances" in wanted:
        del probs
        # From the probabilities as every output format stores them (float16), so that a
        # zarr's instances, decoded block by block from its store, equal a TIFF's.
        stored = model_probs.astype(np.float16)
        del model_probs
        yield "instances", instances_of(stored, grid, prediction.decoder, foreground)


def predict_streamed(
    model: Any, image: NormalizedImage, grid: Grid, out: Outputs, prediction: Prediction,
    foreground: Sequence[int], workers: Workers | None = None,
) -> list[Path]:
    """Predict band by band into zarr (``format=zarr`` or ``ome-zarr``): the probabilities
    straight into their output, or, when resampled, into a hidden store on the model's
    grid that is then resampled band by band into it; the labels block by block from
    them, and the instances block by block (:mod:`segunet.infer.objects`). None comes into
    memory whole. ``workers``: the boxes to predict, the bands of labels and the instance
    blocks as their tasks (the resampling back and the stitching stay here)."""
    from segunet.checkpoint import unwrap
    from segunet.infer.objects import write_instances

    classes, dims = unwrap(model).out_channels, len(grid.shape)
    chunk = CHUNK[dims]
    with out:
        probs = out.array("probabilities", (classes, *grid.shape), np.float16, dims)
        model_probs = probs
        if grid.resampled:
            model_probs = out.scratch(f"{out.stem}_model_grid.zarr",
                                      (classes, *grid.model_shape), np.float16, dims)
        predict_boxes(model, image, grid, model_probs, prediction, out.path, workers)
        # Whole chunks, block by block: nothing in memory whole.
        rows = max(chunk, rows_per_block(classes, grid.shape) // chunk * chunk)
        if grid.resampled:  # a chunk row at a time: its window on the model's grid is larger
            back = grid.to_input(model_probs)
            for s in blocks(grid.shape[0], chunk):
                probs[:, s] = back[:, s]
        if "labels" in out.targets:
            labels = out.array("labels", grid.shape, class_dtype(classes), dims)
            if workers is None:
                argmax_of(probs, rows, labels)
            else:
                from segunet.infer.cluster import argmax_band

                list(workers.map(argmax_band, list(blocks(grid.shape[0], rows)), "labels",
                                 probs=probs, out=labels))
        if "instances" in out.targets:
            write_instances(model_probs, grid, out, prediction.decoder, foreground,
                            prediction.trained_objects, workers and workers.map)
    return out.written


def predict_boxes(
    model: Any, image: NormalizedImage, grid: Grid, model_probs: Any, prediction: Prediction,
    path: Path, workers: Workers | None,
) -> None:
    """Predict ``model_probs`` in one pass, or in boxes where a band of the whole width
    would not fit the memory bound (see :func:`segunet.infer.predict.boxes_for`); on
    ``workers``: in boxes, two per worker, each a task."""
    from segunet.checkpoint import unwrap
    from segunet.data.tiling import tile_shapes
    from segunet.infer.merger import boxes_for
    from segunet.infer.predict import predict_tiled

    _, out_tile = tile_shapes(unwrap(model), grid.model_shape, prediction.tiling.tile)
    # Two boxes per worker balance the load; more would add seams, whose tiles are
    # predicted twice (measured at 1 Gpx on 2 workers: 4 per worker gave 1.58x one worker).
    boxes = boxes_for(model_probs.shape, model_probs.chunks, out_tile[0],
                      2 * workers.count if workers else 1)
    if workers is not None:
        from segunet.infer.cluster import predict_box

        refuse_non_finite_count(sum(count for _, count in workers.map(
            predict_box, boxes, "predict", progress=True, checkpoint=workers.checkpoint,
            device=workers.device, image=image.detached(), grid=grid, out=model_probs,
            tiling=tiling(prediction, progress=False))), path)
        return
    if len(boxes) == 1:
        predict_tiled(model, grid.to_model(image), out=model_probs,
                      **tiling(prediction, progress=True))
    else:
        print(f"segunet: {path}: predicted in {len(boxes)} boxes, as a band of its whole "
              "width would not fit in memory", file=sys.stderr)
        with interrupts.held():
            bar = tqdm(total=len(boxes), unit="box", desc="predict")
        with contextlib.closing(bar):
            for box in boxes:
                predict_tiled(model, grid.to_model(image), out=model_probs, box=box,
                              **tiling(prediction, progress=False))
                bar.update(1)
    refuse_non_finite_output(model_probs, path)


def instances_of(
    model_probs: Any, grid: Grid, decoder: Decoder, foreground: Sequence[int]
) -> np.ndarray:
    """The objects decoded on the model's grid (where the tuned settings, in its pixels,
    hold) and carried onto the input's by nearest neighbour, as uint16 or uint32."""
    rows = rows_per_block(model_probs.shape[0], model_probs.shape[1:])
    labels = grid.labels_to_input(decoder(model_probs, foreground, rows))
    return labels.astype(label_dtype(labels.max()))


def predict_stack(
    model: Any, volume: NormalizedImage, grid: Grid, out: Outputs, prediction: Prediction,
    foreground: Sequence[int],
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
    rows, predict = rows_per_block(classes, spatial), tiling(prediction, progress=False)
    with out:
        arrays = {name: out.array(name, *shapes[name], 2, per_slice=True) for name in out.filled}
        place = {name: _slice_of(name, out.format) for name in arrays}
        count = 0  # objects in the slices before
        bar = None
        try:
            with interrupts.held():  # as predict_tiled builds its bar
                bar = tqdm(total=depth, unit="slice", desc="predict")
            for z in range(depth):
                model_probs = predict_tiled(model, grid.to_model(volume[:, z]), **predict)
                refuse_non_finite_output(model_probs, out.path)
                probs = np.asarray(grid.to_input(model_probs))
                if "probabilities" in arrays:
                    arrays["probabilities"][place["probabilities"](z)] = probs.astype(
                        np.float16)
                if "labels" in arrays:
                    arrays["labels"][z] = argmax_of(probs, rows)
                if "instances" in arrays:
                    objects = instances_of(model_probs, grid, prediction.decoder,
                                           foreground).astype(np.uint32)
                    arrays["instances"][z] = np.where(objects > 0, objects + count, 0)
                    count += int(objects.max())
                bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    return out.written


def _slice_of(name: str, fmt: str) -> Any:
    """The index of slice ``z`` in an output array of a stack."""
    if name == "probabilities" and fmt == "ome-zarr":
        return lambda z: (slice(None), z)
    return lambda z: z


def foreground_classes(
    given: Sequence[int] | None, classes: int, targets: dict[str, Path]
) -> tuple:
    """``instances.foreground_classes`` (``given``; default: all but 0), checked against the
    model."""
    foreground = tuple(given or range(1, classes))
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


def tiling(prediction: Prediction, progress: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`segunet.infer.predict.predict_tiled`."""
    t = prediction.tiling
    return dict(
        tile_shape=t.tile, batch_size=t.batch_size, blend=t.blend, overlap=t.overlap,
        tta=t.tta, device=prediction.device, progress=progress,
    )

