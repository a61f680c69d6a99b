"""Whether an image can be predicted whole in memory (``format=tif``), checked before any
work: else one line that names the formats that stream (zarr, OME-Zarr), rather than a run
the system kills half-way."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from segunet.errors import SegunetError

#: Bytes per pixel of the model's grid that decoding instances takes besides the
#: probabilities: a float16 copy is per class; the foreground maps, the seeds, the labels
#: and the watershed's own arrays come to about this.
DECODE_BYTES = 24


def available_bytes() -> int | None:
    """The memory the system can give this process now (Linux ``MemAvailable``), or None
    where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def whole_bytes(shape: Sequence[int], model_shape: Sequence[int], classes: int,
                instances: bool) -> int:
    """About what predicting an input of ``shape`` whole takes (on ``model_shape``, the
    grid the model sees it on): float32 probabilities on both grids, and the decoding."""
    model, image = math.prod(model_shape), math.prod(shape)
    need = model * 4 * classes + (image * 4 * classes if tuple(shape) != tuple(model_shape) else 0)
    return need + (model * (2 * classes + DECODE_BYTES) if instances else 0)


def check_fits_whole(path: Path, shape: Sequence[int], model_shape: Sequence[int],
                     classes: int, instances: bool) -> None:
    """One line where an input's whole prediction takes more memory than is available."""
    need, free = whole_bytes(shape, model_shape, classes, instances), available_bytes()
    if free is None or need <= free:
        return
    raise SegunetError(
        f"{path}: predicting its {' x '.join(map(str, shape))} px whole for format=tif takes "
        f"about {_size(need)}, more than the {_size(free)} available: use "
        "format=zarr or format=ome-zarr, which stream every output, instances included, to "
        "disk in bounded memory"
    )


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
