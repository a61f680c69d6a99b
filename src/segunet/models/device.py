"""Where a model runs: the ``device`` option of training, prediction and tuning as a torch
device, checked before anything is loaded onto it."""

from __future__ import annotations

import torch

from segunet.errors import SegunetError


def resolve_device(name: str, key: str = "device", local_rank: int | None = None) -> torch.device:
    """The device option ``key=name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as a device,
    checked before anything is loaded onto it: anything else (``foo``, ``meta``) or a GPU
    that is not visible is a one-line SegunetError listing the devices there are. Under
    DDP (``local_rank`` given) CUDA means this process's own GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):  # torch's own message lists every backend it knows
        device = None
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device is None or device.type not in ("cpu", "cuda"):
        raise SegunetError(f"{key}={name} is not a device segunet runs on: use "
                           f"{', '.join(devices_here(gpus))}")
    if device.type == "cuda" and not gpus:
        raise SegunetError(f"{key}={name} but no CUDA device is visible: use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= gpus:
        raise SegunetError(f"{key}={name} but {gpus} CUDA device{'s' * (gpus != 1)} "
                           f"{'are' if gpus != 1 else 'is'} visible: use "
                           f"{', '.join(devices_here(gpus))}")
    if device.type == "cuda" and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device


def devices_here(gpus: int) -> list[str]:
    """The device names that work on this machine, ``gpus`` CUDA devices visible."""
    return ["auto", "cpu", *(["cuda", *(f"cuda:{i}" for i in range(gpus))] if gpus else [])]
