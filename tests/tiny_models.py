"""Tiny trained-looking checkpoints for the export and predict tests: a saved state dict
plus the config a training run would store, without running training."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate

from segunet.checkpoint import save_atomic

MODELS = {
    "unet_valid": {"_target_": "segunet.models.UNet", "padding": "valid"},
    "unet_same": {"_target_": "segunet.models.UNet", "padding": "same"},
    "attention_unet": {"_target_": "segunet.models.AttentionUNet", "padding": "valid"},
}


def save_tiny_checkpoint(
    folder: Path, kind: str = "unet_valid", in_channels: int = 1, out_channels: int = 2,
    spatial_dims: int = 2, channels: tuple[int, ...] = (4, 8, 16),
) -> Path:
    """A model of ``kind`` (by default 3 levels of 4..16 channels) saved as
    ``folder/checkpoints/last.pt`` (the layout of a run folder); returns the file."""
    model_cfg = {
        **MODELS[kind], "in_channels": in_channels, "out_channels": out_channels,
        "spatial_dims": spatial_dims, "channels": list(channels), "norm": None, "dropout": 0.0,
    }
    torch.manual_seed(0)
    model = instantiate(model_cfg)
    config = {"model": model_cfg, "data": {"percentiles": [1.0, 99.8], "channels": None}}
    path = folder / "checkpoints" / "last.pt"
    save_atomic({"model": model.state_dict(), "config": config, "step": 2}, path)
    return path
