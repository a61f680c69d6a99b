"""``segunet predict``: its arguments (:class:`PredictConfig`), usage and ``run()``; the run
itself is :mod:`segunet.infer.run`, which takes what the arguments say as a
:class:`~segunet.infer.settings.Batch` and :class:`~segunet.infer.settings.Settings`."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from omegaconf import MISSING

from segunet.config.args import check_range, option, parse, run_command, usage
from segunet.data.pixelsize import check_pixel_size
from segunet.data.tiling import Blend
from segunet.errors import SegunetError
from segunet.infer.cluster import DaskConfig
from segunet.infer.outputs import OUTPUTS
from segunet.infer.run import predict_files
from segunet.infer.scale import check_options
from segunet.infer.settings import Batch, Settings, Tiling
from segunet.postprocess.decoding import InstancesConfig
from segunet.pretrained import checkpoint_or_model

USAGE = """usage: segunet predict checkpoint=<file or run folder> input=<file, folder or glob>
                       output=<folder> [key=value ...]
       segunet predict model=nuclei input=... output=...   (a model that ships with segunet)

output must be a folder you can write to (created if missing); it is checked before the
prediction starts. Each output is written to a hidden temp name and renamed when complete:
an error or Ctrl-C leaves no partial file, and temps of runs killed outright (kill -9) are
removed by the next predict into that folder.

Z-stacks and 2D models: a (Z, Y, X) stack whose depth Z is no channel count of the 2D model
(an OME-Zarr's axes say which it is) is predicted slice by slice (the stack normalised as a
whole, as training on a stack does)
and written back as stacks, slice by slice: probabilities (Z, C, Y, X) (Fiji's hyperstack
order; a 3D model's are (C, Z, Y, X)), labels (Z, Y, X), instances (Z, Y, X) uint32 with the
2D objects of each slice numbered on through the stack, so no id repeats across slices.
With format=tif these TIFFs are uncompressed.

example:
  segunet predict checkpoint=outputs/train/2025-01-01_12-00-00 input='data/test/*.tif' \\
      output=predictions outputs=labels,instances instances.method=watershed
"""



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
    scale: Literal["none", "auto"] = option(
        "none", "auto: an input that records no pixel size (or a model that records none) "
        "is resampled so that its objects come out the size the model was trained on, "
        "measured with the model on a window of it (a few extra predictions per input); "
        "each input's estimate is printed")
    diameter: float | None = option(
        None, "the typical object's width in the inputs, px: resampled to the model's "
        "training object size, as scale=auto does from its own estimate")
    overwrite: bool = option(False, "replace existing outputs (else an existing one is an error)")
    skip_existing: bool = option(
        False, "keep existing outputs and predict only what is missing: to continue a batch "
        "stopped by an error or Ctrl-C")
    blend: Blend = option("gaussian", "tile blending of same-padded models")
    overlap: float = option(0.25, "tile overlap of same-padded models, 0 <= overlap < 1")
    instances: InstancesConfig = dataclasses.field(default_factory=InstancesConfig)
    dask: DaskConfig = dataclasses.field(default_factory=DaskConfig)

    def __post_init__(self) -> None:
        self.checkpoint = checkpoint_or_model(self.checkpoint, self.model)
        self.output = Path(self.output)
        check_range("batch_size", self.batch_size, self.batch_size >= 1, "a whole number >= 1")
        check_range("overlap", self.overlap, 0 <= self.overlap < 1, "0 <= overlap < 1")
        check_range("tile", self.tile, not self.tile or min(self.tile) >= 1,
                    "positive sizes, e.g. 572,572")
        check_range("outputs", self.outputs, bool(self.outputs), f"some of {','.join(OUTPUTS)}")
        check_options(self.scale, self.diameter, self.pixel_size, self.resample)
        if self.pixel_size is not None:  # the count of sizes is checked per input
            check_pixel_size(self.pixel_size, len(self.pixel_size), "pixel_size")
        if self.tile is not None:  # one size is for every axis
            self.tile = self.tile[0] if len(self.tile) == 1 else tuple(self.tile)
        self.format = "tif" if self.format == "tiff" else self.format
        if self.dask.wanted and self.compile:
            raise SegunetError("compile=true is not for dask.* (each worker would compile "
                               "anew): leave it out")
        if self.dask.split == "blocks" and self.format == "tif":
            raise SegunetError("dask.split=blocks writes the parts of an image in place: "
                               "give format=zarr or format=ome-zarr")
        if self.overwrite and self.skip_existing:
            raise SegunetError(
                "overwrite=true and skip_existing=true contradict each other: replace the "
                "existing outputs (overwrite) or keep them and predict the rest (skip_existing)"
            )

    def batch(self) -> Batch:
        """The images to predict and where their outputs go."""
        return Batch(self.input, self.output, tuple(self.outputs), self.format, self.overwrite,
                     self.skip_existing)

    def settings(self) -> Settings:
        """How to predict them, as given (the checkpoint decides what is left open)."""
        pixel_size = None if self.pixel_size is None else tuple(self.pixel_size)
        tiling = Tiling(self.tile, self.batch_size, self.blend, self.overlap, self.tta)
        return Settings(self.checkpoint, self.device, self.compile, tiling, self.resample,
                        pixel_size, self.instances, self.scale, self.diameter)


def run(argv: Sequence[str]) -> int:
    """``segunet predict key=value ...``; returns the exit status (2 on an error)."""
    argv = list(argv)

    def body() -> None:
        options = parse(PredictConfig, argv, "predict")
        written = predict_files(options.batch(), options.settings(), options.dask)
        print(
            f"segunet: wrote {len(written)} file{'s' * (len(written) != 1)} to {options.output}",
            file=sys.stderr,
        )

    return run_command(body, usage(PredictConfig, USAGE), argv)

