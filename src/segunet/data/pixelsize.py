"""Physical pixel size: read from image files, checked, and written with outputs.

A pixel size is a tuple of floats in micrometers, one per spatial axis, slowest first
(``(z, y, x)`` or ``(y, x)``); None where it is unknown. Where it is read from:

- OME-TIFF: ``PhysicalSizeX/Y/Z`` (and their units) of the first image's OME-XML;
- ImageJ TIFF: the X/Y resolution tags in pixels per ``unit``, the ``spacing`` of Z;
- other TIFFs: the X/Y resolution tags when their unit is a length (centimeter, as
  segunet writes them; a unit of inch is a print resolution, no pixel size);
- HDF5: the ``element_size_um`` attribute of the dataset (ilastik's and Fiji's convention);
- OME-Zarr: the ``scale`` of the chosen resolution level (:mod:`segunet.data.omezarr`).

A file without a length unit has no pixel size: scales of 1 with no unit, which many tools
write by default, would otherwise count as 1 um.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segunet.errors import SegunetError

PixelSize = tuple[float, ...]

UNIT = "micrometer"  # what segunet records, in NGFF's (UDUNITS-2) spelling

#: Micrometers per unit, for the spellings of OME, NGFF, ImageJ and HDF5 files.
MICROMETERS = {
    "angstrom": 1e-4, "å": 1e-4, "nanometer": 1e-3, "nm": 1e-3,
    "micrometer": 1.0, "micron": 1.0, "microns": 1.0, "um": 1.0, "µm": 1.0, "μm": 1.0,
    "\\u00b5m": 1.0, "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4,
    "meter": 1e6, "m": 1e6,
}

#: Micrometers per TIFF ResolutionUnit (tifffile's RESUNIT: 3 centimeter, 4 millimeter,
#: 5 micrometer); 1 (none) and 2 (inch, a print resolution) give no pixel size.
RESOLUTION_UNITS = {3: 1e4, 4: 1e3, 5: 1.0}


def micrometers(value: Any, unit: str | None) -> float | None:
    """``value`` in ``unit`` as micrometers; None for an unknown unit or a value that is no
    positive finite number (nothing to trust)."""
    factor = MICROMETERS.get(str(unit).strip().lower()) if unit is not None else None
    try:
        size = float(value) * factor if factor is not None else math.nan
    except (TypeError, ValueError):
        return None
    return size if math.isfinite(size) and size > 0 else None


def check_pixel_size(
    value: Sequence[float] | float | None, dims: int, key: str
) -> PixelSize | None:
    """A configured pixel size (one value for every axis, or one per spatial axis) as a
    tuple of ``dims`` positive sizes; one-line SegunetErrors naming ``key`` else."""
    if value is None:
        return None
    sizes = [value] if isinstance(value, (int, float)) else list(value)
    if len(sizes) == 1:
        sizes = sizes * dims
    if len(sizes) != dims:
        raise SegunetError(
            f"{key}={sizes} has {len(sizes)} sizes for {dims} spatial axes: give {dims} "
            "(micrometers per pixel, slowest axis first) or one for all"
        )
    bad = [s for s in sizes if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0)]
    if bad:
        raise SegunetError(
            f"{key}={sizes}: a pixel size must be a positive number of micrometers, not "
            f"{bad[0]}; fix it or set {key}=null to use the files' own"
        )
    return tuple(float(s) for s in sizes)


def spatial(sizes: PixelSize | None, dims: int) -> PixelSize | None:
    """The last ``dims`` sizes (the spatial axes of a ``dims``-D model); None if fewer."""
    if sizes is None or len(sizes) < dims:
        return None
    return tuple(sizes[len(sizes) - dims :])


def describe_pixel_size(sizes: PixelSize | None) -> str:
    """``0.5 x 0.5 um`` (or ``unknown``), for messages."""
    if sizes is None:
        return "unknown"
    return " x ".join(f"{s:.4g}" for s in sizes) + " um"


# --- reading -------------------------------------------------------------------------------


def from_tiff(path: Path) -> PixelSize | None:
    """The pixel size a TIFF records (see the module doc), or None."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        found = _ome_xml(tif.ome_metadata or "") if tif.is_ome else None
        if found is None:
            found = _imagej(tif) if tif.is_imagej else _resolution_tags(tif)
        return found


def _imagej(tif: Any) -> PixelSize | None:
    """ImageJ's resolution tags (pixels per ``unit``) and Z ``spacing`` (in ``unit``)."""
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    y, x = (micrometers(_inverse(r), unit) for r in reversed(tif.pages.first.resolution))
    z = micrometers(meta.get("spacing"), unit) if meta.get("slices", 1) > 1 else None
    return _sizes(z, y, x)


def _resolution_tags(tif: Any) -> PixelSize | None:
    """Resolution tags in a length unit; Z from the ``spacing`` that segunet writes into
    tifffile's description."""
    page = tif.pages.first
    per_unit = RESOLUTION_UNITS.get(int(page.resolutionunit))
    if per_unit is None:
        return None
    y, x = (micrometers(per_unit * _inverse(r), "um") for r in reversed(page.resolution))
    z = micrometers((tif.shaped_metadata or [{}])[0].get("spacing"), "um")
    return _sizes(z, y, x)


def _inverse(value: float) -> float:
    return 1 / value if value else math.nan


def _sizes(z: float | None, y: float | None, x: float | None) -> PixelSize | None:
    """``(z, y, x)``, ``(y, x)`` without a Z size, None without Y or X."""
    if y is None or x is None:
        return None
    return (z, y, x) if z is not None else (y, x)


def _ome_xml(xml: str) -> PixelSize | None:
    """``PhysicalSize{Z,Y,X}`` of the first OME image (units default to um, as OME's)."""
    import tifffile

    try:
        image = tifffile.xml2dict(xml)["OME"]["Image"]
    except Exception:  # no or broken OME-XML: the other sources may still say
        return None
    pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})

    def size(axis: str) -> float | None:
        return micrometers(pixels.get(f"PhysicalSize{axis}"),
                           pixels.get(f"PhysicalSize{axis}Unit", "um"))

    z = size("Z") if int(pixels.get("SizeZ", 1)) > 1 else None
    return _sizes(z, size("Y"), size("X"))


def from_element_size(value: Any) -> PixelSize | None:
    """An ``element_size_um`` attribute (one size per axis) as a pixel size, or None."""
    if value is None:
        return None
    sizes = [micrometers(v, "um") for v in np.atleast_1d(np.asarray(value, dtype=object))]
    return None if not sizes or any(s is None for s in sizes) else tuple(sizes)


# --- writing -------------------------------------------------------------------------------


def tiff_options(sizes: PixelSize | None) -> dict[str, Any]:
    """tifffile ``imwrite`` keywords that record ``sizes``: X/Y resolution tags in pixels
    per centimeter (the unit every TIFF reader knows, Fiji included) and a 3D image's Z
    spacing in tifffile's description, where :func:`read_pixel_size` finds it again."""
    if sizes is None:
        return {}
    y, x = sizes[-2:]
    options: dict[str, Any] = {
        "resolution": (1e4 / x, 1e4 / y), "resolutionunit": "CENTIMETER",
    }
    if len(sizes) == 3:
        options["metadata"] = {"spacing": sizes[0], "unit": "um"}
    return options
