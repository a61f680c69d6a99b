"""What the napari widget computes, free of napari and Qt: the data of an image layer in,
the layers to add out, as napari's layer-data tuples ``(data, attributes, layer type)``.

The model runs through :mod:`segunet.api`, so a layer gets exactly what ``segunet predict``
gives its file: the same normalisation, tiling, resampling and tuned decoding, and a layer
larger than memory allows is read tile by tile where its data is lazy (a dask or zarr
array).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

#: napari's default scale of a layer: no physical pixel size given.
UNSCALED = 1.0


@dataclasses.dataclass(frozen=True)
class Request:
    """What the widget asks for: the model (``nuclei``, a run folder, a checkpoint, a
    package), whether to add the class probabilities too, test-time augmentation (None:
    as tuned) and the device (``auto``: CUDA where there is one)."""

    source: str = "nuclei"
    probabilities: bool = False
    tta: bool | None = None
    device: str = "auto"


def segment_layer(
    data: Any, name: str, scale: Sequence[float], request: Request, progress: Any = False
) -> list[tuple[Any, dict[str, Any], str]]:
    """The layers made from an image layer's ``data`` (its ``name`` and ``scale``): the
    objects as a labels layer, and with ``request.probabilities`` one image layer per
    class. A layer scale other than napari's default is taken as the pixel size in um, so
    that the model resamples the image to its training pixel size and back."""
    model = load(request.source, request.device)
    wanted = ("instances", "probabilities") if request.probabilities else ("instances",)
    pixel_size = None if all(s == UNSCALED for s in scale) else [float(s) for s in scale]
    dims = model.spatial_dims
    out = model.outputs(data, wanted, tta=request.tta, progress=progress,
                        pixel_size=None if pixel_size is None else pixel_size[-dims:])
    spatial_scale = list(scale)[-dims:]
    layers = [(out["instances"], {"name": f"{name} objects", "scale": spatial_scale},
               "labels")]
    if request.probabilities:
        names = [f"{name} {c}" for c in model.class_names]
        layers.append((out["probabilities"], {
            "name": names, "channel_axis": 0, "scale": spatial_scale,
            "contrast_limits": [0.0, 1.0], "blending": "additive", "visible": False,
        }, "image"))
    return layers


@functools.lru_cache(maxsize=2)
def load(source: str, device: str) -> Any:
    """``segunet.load``, kept for the next run of the widget with the same model."""
    import segunet

    return segunet.load(source, device)
