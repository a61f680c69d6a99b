"""Dimension-agnostic layers shared by the U-Net variants.

Each factory takes ``spatial_dims`` (2 or 3) and returns the matching torch layer, so one
implementation serves the 2D U-Net (Ronneberger et al. 2015) and the 3D U-Net (Cicek et al.
2016).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

Padding = Literal["valid", "same"]
NormKind = Literal["batch", "group", "instance"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UP_CONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
INTERPOLATION = {2: "bilinear", 3: "trilinear"}


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: int = 0,
    bias: bool = True,
) -> nn.Module:
    conv_cls = _CONV[check_spatial_dims(spatial_dims)]
    return conv_cls(in_channels, out_channels, kernel_size, stride, padding, bias=bias)


def up_conv(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """2x2 transposed convolution with stride 2: doubles every spatial size."""
    return _UP_CONV[check_spatial_dims(spatial_dims)](in_channels, out_channels, 2, stride=2)


def max_pool(spatial_dims: int, factor: int = 2) -> nn.Module:
    """Max-pooling with kernel and stride ``factor``: divides every spatial size by it (2x2 with
    stride 2 in the U-Net)."""
    return _MAX_POOL[check_spatial_dims(spatial_dims)](kernel_size=factor, stride=factor)


def norm_layer(kind: NormKind | None, channels: int, spatial_dims: int) -> nn.Module | None:
    """A normalisation layer by name, or None for the paper's plain conv + ReLU."""
    if kind is None:
        return None
    if kind == "batch":
        return _BATCH_NORM[check_spatial_dims(spatial_dims)](channels)
    if kind == "group":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    if kind == "instance":
        return _INSTANCE_NORM[check_spatial_dims(spatial_dims)](channels, affine=True)
    raise ValueError(f"norm must be None, 'batch', 'group' or 'instance', got {kind!r}")


def conv_norm_relu(
    spatial_dims: int, in_channels: int, out_channels: int, norm: NormKind | None, padding: int = 1
) -> nn.Sequential:
    """A 3x3 conv (``padding`` pixels per side), optional normalisation and a ReLU."""
    # A following norm re-centres the output, which makes a conv bias redundant.
    layers = [conv(spatial_dims, in_channels, out_channels, 3, padding=padding, bias=norm is None)]
    if norm is not None:
        layers.append(norm_layer(norm, out_channels, spatial_dims))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by optional normalisation and a ReLU.

    ``padding="valid"`` leaves the convolutions unpadded, so each trims one pixel per side.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        spatial_dims: int,
        padding: Padding = "valid",
        norm: NormKind | None = None,
    ) -> None:
        pad = 1 if padding == "same" else 0
        super().__init__(
            *conv_norm_relu(spatial_dims, in_channels, mid_channels, norm, pad),
            *conv_norm_relu(spatial_dims, mid_channels, out_channels, norm, pad),
        )


def center_crop(x: Tensor, shape: Sequence[int]) -> Tensor:
    """The centre ``shape`` window of the trailing ``len(shape)`` dims of ``x``, as a view."""
    have = x.shape[x.ndim - len(shape) :]
    if any(w > h for w, h in zip(shape, have, strict=True)):
        raise ValueError(f"cannot crop spatial size {tuple(have)} to a larger {tuple(shape)}")
    window = tuple(slice((h - w) // 2, (h - w) // 2 + w) for h, w in zip(have, shape, strict=True))
    return x[(..., *window)]


def he_init(module: nn.Module) -> None:
    """Gaussian weights with std sqrt(2 / fan_in), zero biases (Ronneberger et al. 2015, Sec. 3;
    He et al. 2015). Use as ``model.apply(he_init)``."""
    if not isinstance(module, tuple(_CONV.values()) + tuple(_UP_CONV.values())):
        return
    if module.transposed:
        # Each output of a transposed conv sees in_channels * prod(kernel / stride) inputs,
        # not the weight's dim-1 size torch's own fan-in helper would use.
        ratio = math.prod(k / s for k, s in zip(module.kernel_size, module.stride, strict=True))
        fan_in = module.in_channels * ratio
    else:
        fan_in = module.weight[0].numel()
    nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
    if module.bias is not None:
        nn.init.zeros_(module.bias)
