"""What ``segunet predict`` predicts and how: a :class:`Batch` (which images, which outputs
where) and :class:`Settings` (how, as given), from the command's arguments or the Python
API; once the checkpoint is read, resolved into the :class:`Prediction` that every image is
predicted with (see :mod:`segunet.infer.run`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from segunet.data.pixelsize import PixelSize
from segunet.data.tiling import Blend
from segunet.errors import SegunetError
from segunet.postprocess.decoding import Decoder, InstancesConfig

if TYPE_CHECKING:
    from segunet.checkpoint import Trained


@dataclasses.dataclass(frozen=True)
class Batch:
    """The images to predict and where their outputs go: all that is checked before the
    checkpoint is read. ``format``: tif, zarr or ome-zarr."""

    input: str
    output: Path
    outputs: tuple[str, ...]
    format: str
    overwrite: bool
    skip_existing: bool


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How an image is cut into tiles and put back (the arguments of
    :func:`segunet.infer.predict.predict_tiled` that the options set). ``tile``: one size
    for every axis, one per axis, or None (auto); ``tta``: None until it is decided."""

    tile: int | tuple[int, ...] | None
    batch_size: int
    blend: Blend
    overlap: float
    tta: bool | None


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to predict, as given: what is left open (None) the checkpoint decides (see
    :meth:`Prediction.of`). ``pixel_size``: the inputs', instead of their files'."""

    checkpoint: str
    device: str
    compile: bool
    tiling: Tiling
    resample: bool
    pixel_size: tuple[float, ...] | None
    instances: InstancesConfig
    scale: str = "none"  # none or auto (see segunet.infer.scale)
    diameter: float | None = None  # the inputs' objects, px: their scale, given


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What every image is predicted with: the settings resolved with the checkpoint read,
    once, before the first image. ``device``: the one resolved (``cuda:0``, not ``auto``);
    ``tiling.tta``: decided (as tuned where not given)."""

    device: str
    tiling: Tiling
    decoder: Decoder
    foreground_classes: tuple[int, ...] | None  # instances.foreground_classes
    resample: bool
    pixel_size: tuple[float, ...] | None
    trained_pixel_size: PixelSize | None  # the model's training one, if recorded
    format: str
    output: Path
    scale: str = "none"
    diameter: float | None = None
    trained_objects: tuple[float, float, float] | None = None  # its object widths, px

    @classmethod
    def of(cls, batch: Batch | None, settings: Settings, trained: Trained, device: str
           ) -> Prediction:
        """``settings`` of ``batch`` resolved with the checkpoint read, on ``device``
        (``batch`` None: arrays in memory, no files)."""
        from segunet.checkpoint import object_sizes_of, pixel_size_of

        decoder = Decoder.of(settings.instances, trained.config, trained.postprocess)
        recorded = pixel_size_of(trained)
        objects = object_sizes_of(trained)
        if objects is None and (settings.scale == "auto" or settings.diameter):
            asked = "scale=auto" if settings.scale == "auto" else "diameter="
            raise SegunetError(
                f"{trained.file} records no training object size, which {asked} scales "
                "inputs to: use a checkpoint of a newer segunet train, or give pixel_size="
            )
        tta = settings.tiling.tta
        if tta is None:
            tta = bool(decoder.post and decoder.post.tta)
        given = settings.instances.foreground_classes
        return cls(
            device, dataclasses.replace(settings.tiling, tta=tta), decoder,
            None if given is None else tuple(given), settings.resample, settings.pixel_size,
            tuple(recorded[0]) if recorded else None, batch.format if batch else "tif",
            batch.output if batch else Path("."),
            settings.scale, settings.diameter, objects,
        )
