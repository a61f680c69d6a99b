"""segunet in Python: :func:`load` a model, then :meth:`Model.segment` or
:meth:`Model.predict` arrays, for notebooks and pipelines::

    import segunet

    model = segunet.load("nuclei")          # or a checkpoint file or run folder
    labels = model.segment(image)           # objects, decoded as tuned on validation
    probs = model.predict(image, tta=True)  # class probabilities (C, *spatial)

Arrays in, arrays out. Both run the code of ``segunet predict`` (the same normalisation,
tiling, resampling and decoding), so they give what it writes for the same image and
options: the instances exactly, the probabilities before its float16 rounding.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segunet.errors import SegunetError

#: The name inputs are called by in messages.
SOURCE = "image"


def load(source: str | os.PathLike = "nuclei", device: str = "auto") -> Model:
    """The model of ``source``: the name of a model that ships with segunet (``nuclei``), a
    checkpoint file, a run folder (its ``best.pt``, as ``segunet predict`` reads it) or a
    bioimage.io package (``.zip``) written by ``segunet export``, on ``device`` (``auto``:
    CUDA where there is one)."""
    from segunet import pretrained
    from segunet.checkpoint import load_trained
    from segunet.models.device import resolve_device

    resolved = str(resolve_device(device))
    path = os.fspath(source)
    if path.lower().endswith(".zip"):
        from segunet.export.package_model import load_package

        return Model(load_package(Path(path), resolved), resolved)
    return Model(load_trained(pretrained.resolve(path, "source"), resolved), resolved)


class Model:
    """A trained model and how it predicts (see :func:`load`)."""

    def __init__(self, trained: Any, device: str) -> None:
        from segunet.checkpoint import unwrap

        self.trained, self.device = trained, device
        net = unwrap(trained.model)
        self.spatial_dims, self.classes = net.spatial_dims, net.out_channels
        self.in_channels = net.in_channels

    @property
    def file(self) -> Any:
        """The checkpoint file read."""
        return self.trained.file

    @property
    def class_names(self) -> list[str]:
        from segunet.data.sources import class_names_of

        return class_names_of(self.trained.config.get("data") or {}, self.classes)

    def __repr__(self) -> str:
        return (f"segunet.Model({self.file}, {self.spatial_dims}D, classes "
                f"{', '.join(self.class_names)}, on {self.device})")

    def predict(
        self, image: Any, *, pixel_size: float | Sequence[float] | None = None,
        tta: bool | None = None, tile: int | Sequence[int] | None = None,
        batch_size: int = 8, scale: str = "none", diameter: float | None = None,
        progress: Any = False,
    ) -> np.ndarray:
        """Class probabilities ``(classes, *spatial)`` float32 of ``image`` (``(*spatial)``
        or with channels first or last, as files are read; any array-like), on its own grid.

        Args:
            pixel_size: the image's, in um (one value: every axis); where it and the
                model's training one differ, the image is predicted at the model's and the
                result resampled back. None: predicted as it is.
            tta: average the 8 rotations/reflections (3D: flips); None: as tuned.
            tile, batch_size: the network's input tile (None: auto) and tiles per pass.
            scale, diameter: ``scale="auto"`` measures the objects with the model and
                brings them to its training size; ``diameter``: their width in px, given.
            progress: a progress bar on stderr; or the tqdm class to show it with
                (``napari.utils.progress``).
        """
        return self._run(image, ("probabilities",), pixel_size, tta, tile, batch_size, scale,
                         diameter, progress, {})["probabilities"]

    def segment(
        self, image: Any, *, pixel_size: float | Sequence[float] | None = None,
        tta: bool | None = None, tile: int | Sequence[int] | None = None,
        batch_size: int = 8, scale: str = "none", diameter: float | None = None,
        progress: Any = False, **instances: Any,
    ) -> np.ndarray:
        """The objects of ``image``: a label image of its spatial shape (0: background,
        uint16 or uint32), decoded as the checkpoint's training target is decoded, with the
        settings tuned on its validation images. Keyword arguments as :meth:`predict`;
        ``instances``: any ``instances.*`` option of ``segunet predict`` (``threshold=0.6``,
        ``min_size=30``, ``seed_threshold``, ``grow``, ``method="watershed"``, ...), each
        replacing its tuned setting. An unknown one is an error, not a silent default."""
        return self._run(image, ("instances",), pixel_size, tta, tile, batch_size, scale,
                         diameter, progress, instances)["instances"]

    def outputs(
        self, image: Any, wanted: Sequence[str] = ("instances", "probabilities"), *,
        pixel_size: float | Sequence[float] | None = None, tta: bool | None = None,
        tile: int | Sequence[int] | None = None, batch_size: int = 8, scale: str = "none",
        diameter: float | None = None, progress: Any = False, **instances: Any,
    ) -> dict[str, np.ndarray]:
        """Several outputs of one prediction of ``image``, by name: ``instances`` (as
        :meth:`segment`), ``probabilities`` (as :meth:`predict`) and ``labels`` (the most
        probable class per pixel). Keyword arguments as :meth:`segment`."""
        unknown = [w for w in wanted if w not in ("instances", "probabilities", "labels")]
        if unknown or not wanted:
            raise SegunetError(f"outputs({list(wanted)}): each one of instances, "
                               "probabilities, labels")
        return self._run(image, tuple(wanted), pixel_size, tta, tile, batch_size, scale,
                         diameter, progress, instances)

    def _run(
        self, image: Any, wanted: tuple[str, ...], pixel_size: Any, tta: bool | None,
        tile: Any, batch_size: int, scale: str, diameter: float | None, progress: Any,
        instances: dict[str, Any],
    ) -> dict[str, np.ndarray]:
        from segunet.infer.inputs import check_pixel_type, image_for_model, stack_for_model
        from segunet.infer.run import (
            foreground_classes,
            input_grid,
            objects_scale,
            predicted_whole,
        )
        from segunet.infer.scale import check_options
        from segunet.infer.settings import Prediction, Settings, Tiling
        from segunet.postprocess.decoding import InstancesConfig

        known = [f.name for f in dataclasses.fields(InstancesConfig)]
        unknown = [k for k in instances if k not in known]
        if unknown:
            raise SegunetError(f"segment({unknown[0]}=...) is no option: it takes "
                               f"{', '.join(known)} (and predict's)")
        options = InstancesConfig(**instances)
        sizes = None if pixel_size is None else tuple(
            [float(pixel_size)] * self.spatial_dims if np.isscalar(pixel_size)
            else (float(v) for v in pixel_size))
        check_options(scale, diameter, sizes)
        if tile is not None and not isinstance(tile, int):
            tile = tuple(int(t) for t in tile)
        settings = Settings(
            str(self.file), self.device, False,
            Tiling(tile, int(batch_size), "gaussian", 0.25, tta), True, sizes, options,
            scale, diameter,
        )
        prediction = Prediction.of(None, settings, self.trained, self.device)
        raw = image if hasattr(image, "shape") and hasattr(image, "dtype") else np.asarray(image)
        check_pixel_type(raw, SOURCE)
        data = self.trained.config.get("data") or {}
        model = self.trained.model
        if stack_for_model(raw, SOURCE, self.in_channels, self.spatial_dims, data) is not None:
            raise SegunetError(
                f"an image of shape {tuple(raw.shape)} is a (Z, Y, X) stack to this 2D model: "
                "give it one slice at a time (segunet predict numbers objects through a stack)"
            )
        normalised = image_for_model(raw, SOURCE, self.in_channels, self.spatial_dims, data)
        foreground = foreground_classes(prediction.foreground_classes, self.classes,
                                        dict.fromkeys(wanted))
        grid = input_grid(SOURCE, normalised.shape[1:], prediction, lambda: objects_scale(
            model, normalised, prediction, foreground), from_file=False)
        return dict(predicted_whole(model, grid.to_model(normalised), grid, prediction,
                                    foreground, set(wanted), SOURCE, progress))
