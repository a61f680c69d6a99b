"""What one training step costs on this device: the planned U-Net, a random batch of the
planned patch, cross-entropy and Adam, timed after warming up (cuDNN picks its kernels, the
allocator fills). ``segunet plan`` turns a time budget into steps with it."""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from segunet.models import UNet
from segunet.plan.rules import Device


def this_device(device: str = "auto") -> Device:
    """The device ``trainer.device`` names, with its free memory (GPU: as CUDA reports it;
    CPU: the memory the system has available)."""
    from segunet.models.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return Device("cuda", int(free), torch.cuda.get_device_name(dev))
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = None
    return Device("cpu", free, f"{os.cpu_count()} CPU cores")


def time_step(model_kwargs: dict[str, Any], patch: tuple[int, ...], batch: int,
              device: str = "auto", warmup: int = 2, steps: int = 3
              ) -> tuple[float, int | None]:
    """``(seconds per step, peak GPU bytes or None)`` of training ``UNet(**model_kwargs)`` on
    random ``batch`` x ``patch`` inputs: bf16 autocast on CUDA, as training uses it."""
    from segunet.models.device import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = UNet(**model_kwargs).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, model_kwargs["in_channels"], *patch, device=dev)
    out_shape = model.output_shape(patch)
    y = torch.randint(model_kwargs["out_channels"], (batch, *out_shape), device=dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    seconds = (time.perf_counter() - start) / steps
    return seconds, int(torch.cuda.max_memory_allocated(dev)) if cuda else None
