"""The ``trainer`` config group (:class:`TrainerConfig`) and what a run resolves from it, the
model and the data before it trains: precision, compiling, BatchNorm sync, the patch size,
whether model and data fit, and the seeds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from torch import nn

from segunet.config.schema import Range, check_ranges
from segunet.data.datasets import SegmentationData
from segunet.errors import SegunetError


@dataclass
class TrainerConfig:
    """The ``trainer`` config group."""

    max_steps: Annotated[int, Range(ge=1)] = 2000
    batch_size: Annotated[int, Range(ge=1)] = 4
    val_every: Annotated[int, Range(ge=1)] = 200
    seed: Annotated[int, Range(ge=0)] = 0  # numpy's generators take no negative seed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, else fp32
    channels_last: bool = True  # CUDA only
    num_workers: Annotated[int, Range(ge=0)] = 0
    grad_clip: Annotated[float, Range(gt=0)] | None = None  # the norm's limit: 0 or less flips
    resume: str | None = None
    # Fine-tuning: the weights of a checkpoint or of a model that ships with segunet (nuclei)
    # to start from, with a new optimiser and schedule; an output layer of other classes is
    # re-initialised.
    init_from: str | None = None
    # With init_from, the optimiser's learning rate times this: a recipe's rate, meant for
    # a net that starts from nothing, moves a trained one away from what it knew.
    finetune_lr_scale: Annotated[float, Range(gt=0)] = 1.0
    compile: bool | Literal["auto"] = "auto"  # auto: on for CUDA, off for CPU
    # processes (one per GPU) that `segunet train` launches through torchrun
    devices: Annotated[int, Range(ge=1)] = 1
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (CUDA, DDP only)

    def __post_init__(self) -> None:
        check_ranges(self, "trainer")
        if self.resume and self.init_from:
            raise SegunetError(
                "trainer.resume continues a run, trainer.init_from starts a new one from "
                "another's weights: give one of them"
            )


def resolve_compile(value: bool | str, device: torch.device) -> bool:
    """``trainer.compile``: ``auto`` compiles on CUDA only (on the CPU compiling costs more
    time than a short run saves)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise SegunetError(f"trainer.precision={name} is unknown: use auto, fp32, bf16 or fp16")
    if table[name] is torch.float16 and device.type != "cuda":
        raise SegunetError("trainer.precision=fp16 needs CUDA: use fp32 or bf16 on the CPU")
    return table[name]


def sync_batchnorm(cfg: TrainerConfig, device: torch.device, world_size: int) -> bool:
    """Whether BatchNorm statistics sync across the processes: ``trainer.sync_batchnorm``
    under DDP; PyTorch's SyncBatchNorm runs on CUDA only."""
    if not (cfg.sync_batchnorm and world_size > 1):
        return False
    if device.type != "cuda":
        raise SegunetError("trainer.sync_batchnorm=true needs CUDA: set it false on the CPU")
    return True


def resolve_patch_size(model: nn.Module, data: SegmentationData) -> tuple[int, ...]:
    """The network input size: ``data.patch_size`` checked against the model, or a default
    that fits the smallest training image (capped at the paper's 572 / 3D U-Net's 132)."""
    dims = data.spatial_dims
    if data.patch_size is None:
        smallest = np.min([v.spatial_shape for v in data.train], axis=0)
        cap = 572 if dims == 2 else 132
        return tuple(model.valid_input_shape([min(int(s), cap) for s in smallest]))
    patch = tuple(int(p) for p in data.patch_size)
    if len(patch) != dims:
        raise SegunetError(
            f"data.patch_size={list(patch)} has {len(patch)} axes but the images are {dims}D"
        )
    try:
        model.output_shape(patch)
    except ValueError as e:
        raise SegunetError(f"data.patch_size={list(patch)} does not fit the model: {e}") from e
    return patch


def check_compatible(model: nn.Module, data: SegmentationData) -> None:
    """Model and data must agree before any compute is spent; say which setting to change."""
    name = data.name
    if model.spatial_dims != data.spatial_dims:
        fix = "data=synthetic3d" if model.spatial_dims == 3 else "a 3D model (model=unet3d)"
        raise SegunetError(
            f"model.spatial_dims={model.spatial_dims} but data '{name}' has "
            f"{data.spatial_dims}D images: use {fix} or set model.spatial_dims={data.spatial_dims}"
        )
    if model.in_channels != data.in_channels:
        raise SegunetError(
            f"model.in_channels={model.in_channels} but data '{name}' has {data.in_channels}-"
            f"channel images: set model.in_channels={data.in_channels}"
        )
    if model.out_channels < data.num_classes:
        raise SegunetError(
            f"model.out_channels={model.out_channels} but data '{name}' has "
            f"{data.num_classes} classes: set model.out_channels={data.num_classes}"
        )
    if not any((v.label[~v.ignore] > 0).any() for v in data.train):
        # A net trained on background alone predicts nothing and still scores "done".
        raise SegunetError(
            f"the labels of the {len(data.train)} training images of data '{name}' hold no "
            "foreground (every pixel is background or ignored): check the label files, "
            "data.targets.label_kind and data.targets.foreground_value"
        )


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed that depends on (seed, step, rank) only."""
    state = np.random.SeedSequence([seed % 2**64, step, rank]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    # numpy's global RNG is deliberately not seeded: data code uses explicit Generators only.
    random.seed(seed)
    torch.manual_seed(seed)
