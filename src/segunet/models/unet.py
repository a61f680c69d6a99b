"""The U-Net of Ronneberger et al. (2015), in 2D or 3D, with the 3D U-Net options of Cicek et al.
(2016).

Ronneberger, Fischer, Brox. "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015. Cicek, Abdulkadir, Lienkamp, Brox, Ronneberger. "3D U-Net: Learning Dense
Volumetric Segmentation from Sparse Annotation", MICCAI 2016.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segunet.config.schema import Count, Dropout, SpatialDims
from segunet.errors import SegunetError
from segunet.models.blocks import (
    DoubleConv,
    NormKind,
    Padding,
    center_crop,
    conv,
    he_init,
    max_pool,
    up_conv,
)
from segunet.models.shapes import nearest_valid_sizes, output_size, valid_input_size


class ModelInputError(SegunetError, ValueError):
    """A tensor or shape the model cannot take, or arguments it cannot be built from."""


class SizeRules:
    """Spatial-size rules shared by every U-Net here: ``output_shape``, ``valid_input_shape``,
    ``nearest_valid_sizes`` and the input check of ``forward``, from :mod:`shapes`.

    Mixed into an ``nn.Module`` whose ``__init__`` calls ``_init_sizes``, which checks the
    arguments they all take and sets the attributes below; the variants that always pad
    ("same") share the UNet's messages this way.
    """

    in_channels: int
    out_channels: int
    spatial_dims: int
    channels: tuple[int, ...]
    levels: int
    padding: Padding

    def _init_sizes(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int,
        channels: Sequence[int],
        padding: Padding,
        norm: NormKind | None,
        dropout: float,
        *,
        same_only: bool,
    ) -> tuple[int, ...]:
        """Check the shared arguments, one line naming the setting, and set the attributes;
        ``same_only`` for the variants that pad every conv. Returns ``channels`` as ints."""
        if same_only and padding != "same":
            raise ModelInputError(
                f"{type(self).__name__} supports padding=same only (output size == input size), "
                f"got padding={padding!r}: use model=unet for valid padding"
            )
        channels = tuple(int(c) for c in channels)
        _check_arguments(in_channels, out_channels, spatial_dims, channels, padding, norm, dropout)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.spatial_dims, self.channels, self.padding = spatial_dims, channels, padding
        self.levels = len(channels)
        return channels

    # ------------------------------------------------------------------------------- shapes
    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial output size for a spatial input size; ValueError if it does not fit."""
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != self.spatial_dims:
            raise ModelInputError(
                f"{self._name} takes {self.spatial_dims} spatial sizes, got {shape}: pass the "
                f"spatial part of the shape only"
            )
        out = [output_size(s, self.levels, self.padding) for s in shape]
        if None in out:
            raise ModelInputError(self._size_message(shape))
        return tuple(out)

    def valid_input_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The smallest spatial input size that fits, at least ``shape`` on every axis."""
        return tuple(valid_input_size(int(s), self.levels, self.padding) for s in shape)

    def nearest_valid_sizes(self, shape: Sequence[int]) -> list[tuple[int | None, int]]:
        """Per axis, the largest valid size <= ``shape`` (None if none) and the smallest >=."""
        return [nearest_valid_sizes(int(s), self.levels, self.padding) for s in shape]

    # --------------------------------------------------------------------------- validation
    @property
    def _name(self) -> str:
        return f"{type(self).__name__} ({self.padding} padding, {self.levels} levels)"

    def _check_input(self, x: Tensor) -> None:
        # Checked up front so a bad shape never surfaces as a torch.cat error deep inside.
        name = type(self).__name__
        if x.ndim != self.spatial_dims + 2:
            axes = "D, H, W" if self.spatial_dims == 3 else "H, W"
            raise ModelInputError(
                f"{name} ({self.spatial_dims}D) expects input of shape (N, C, {axes}), got "
                f"{tuple(x.shape)}: add the missing batch/channel axes or set model.spatial_dims"
            )
        if x.shape[1] != self.in_channels:
            raise ModelInputError(
                f"{name} expects {self.in_channels} input channels, got {x.shape[1]}: set "
                f"model.in_channels={x.shape[1]} or fix the data"
            )
        self.output_shape(x.shape[2:])

    def _size_message(self, shape: tuple[int, ...]) -> str:
        hints = {
            axis: f"{lower} or {upper}" if lower is not None else f"{upper} (smallest)"
            for axis, (lower, upper) in enumerate(self.nearest_valid_sizes(shape))
            if lower != upper  # a valid size is its own nearest
        }
        if len(hints) == len(shape) and len(set(hints.values())) == 1:
            nearest = f"nearest valid sizes per axis are {hints[0]}"
        else:
            nearest = "nearest valid sizes are " + ", ".join(
                f"{hint} on axis {axis}" for axis, hint in hints.items()
            )
        return f"{self._name} cannot take spatial size {shape}: {nearest}"


class UNet(SizeRules, nn.Module):
    """The U-Net (Ronneberger et al. 2015, Fig. 1), for 2D or 3D images.

    There are ``len(channels)`` levels. Each level of the contracting path has two 3x3
    convolutions, each with optional normalisation and a ReLU, followed by a 2x2 max-pool with
    stride 2; the bottom level has the two convolutions only. Each level of the expanding path
    upsamples with a 2x2 transposed convolution of stride 2, concatenates the skip connection
    of its level (``[skip, up]``, the skip centre-cropped to the upsampled size), and applies two
    3x3 convolutions. A 1x1 convolution maps to ``out_channels`` class scores.

    Args:
        in_channels: channels of the input image.
        out_channels: number of classes (logits per pixel).
        spatial_dims: 2 for images, 3 for volumes.
        channels: output width of each level, finest first.
        padding: ``"valid"``, the paper's unpadded convolutions, so the output is smaller than
            the input (572 -> 388 with the defaults), or ``"same"``, which keeps the size; the
            input must then be divisible by ``2 ** (len(channels) - 1)``.
        norm: None (the paper), ``"batch"``, ``"group"`` or ``"instance"`` after each conv.
        double_before_pool: the 3D U-Net layout (Cicek et al. 2016, Fig. 2): the first conv of
            each contracting level outputs ``channels[i] // 2`` and the second ``channels[i]``,
            doubling the width before each max-pool rather than after it, and the up-convolution
            keeps its width. With ``channels=(64, 128, 256, 512)`` the contracting path gives
            32, 64 | 64, 128 | 128, 256 | 256, 512, and the first expanding level up-convolves
            512 -> 512, concatenates the 256-channel skip (768) and convolves to 256, 256.
            That net has the paper's 19,069,955 parameters plus 896 up-conv biases.
        dropout: drop-out probability at the end of the contracting path (Ronneberger et al.
            2015, Sec. 3.1); 0 disables it.

    With the defaults the network has 31,030,658 parameters. ``output_shape`` and
    ``valid_input_shape`` answer which spatial sizes fit; ``forward`` rejects the others with
    a message naming the nearest ones.
    """

    def __init__(
        self,
        in_channels: Count = 1,
        out_channels: Count = 2,
        spatial_dims: SpatialDims = 2,
        channels: Sequence[Count] = (64, 128, 256, 512, 1024),
        padding: Padding = "valid",
        norm: NormKind | None = None,
        double_before_pool: bool = False,
        dropout: Dropout = 0.0,
    ) -> None:
        super().__init__()
        channels = self._init_sizes(
            in_channels, out_channels, spatial_dims, channels, padding, norm, dropout,
            same_only=False,
        )

        def level(cin: int, cout: int) -> DoubleConv:
            mid = max(cout // 2, 1) if double_before_pool else cout
            return DoubleConv(cin, mid, cout, spatial_dims, padding, norm)

        *top, bottom = zip((in_channels, *channels[:-1]), channels, strict=True)
        self.encoders = nn.ModuleList(level(cin, cout) for cin, cout in top)
        self.pool = max_pool(spatial_dims)
        self.bottom = level(*bottom)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Index i belongs to level i throughout: ups[i] lifts level i + 1 to level i.
        up_widths = channels[1:] if double_before_pool else channels[:-1]
        self.ups = nn.ModuleList(
            up_conv(spatial_dims, coarse, up)
            for coarse, up in zip(channels[1:], up_widths, strict=True)
        )
        self.decoders = nn.ModuleList(
            DoubleConv(skip + up, skip, skip, spatial_dims, padding, norm)
            for skip, up in zip(channels[:-1], up_widths, strict=True)
        )
        self.head = conv(spatial_dims, channels[0], out_channels, kernel_size=1)
        self.apply(he_init)

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, out_channels, *output_shape(x.shape[2:]))."""
        return self._forward(x)[0]

    def _forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and the detached attention maps of ``_gate_skip``, finest level first."""
        self._check_input(x)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        maps = []
        for i in reversed(range(self.levels - 1)):
            up = self.ups[i](x)
            skip = center_crop(skips[i], up.shape[2:])
            skip, alpha = self._gate_skip(i, skip, x)
            if alpha is not None:
                maps.append(alpha.detach())
            x = self.decoders[i](torch.cat([skip, up], dim=1))
        return self.head(x), maps[::-1]

    def _gate_skip(self, level: int, skip: Tensor, gate: Tensor) -> tuple[Tensor, Tensor | None]:
        """Hook for subclasses to reweight the skip of ``level`` given ``gate``, the coarser
        level's features before upsampling; returns the skip and its attention map, if any."""
        return skip, None


def _check_arguments(
    in_channels: int,
    out_channels: int,
    spatial_dims: int,
    channels: tuple[int, ...],
    padding: str,
    norm: str | None,
    dropout: float,
) -> None:
    if spatial_dims not in (2, 3):
        raise ModelInputError(f"model.spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if len(channels) < 2 or min(channels) < 1:
        raise ModelInputError(
            f"model.channels={list(channels)} needs at least two levels of positive widths"
        )
    if min(in_channels, out_channels) < 1:
        raise ModelInputError(
            f"model.in_channels={in_channels} and model.out_channels={out_channels} must be >= 1"
        )
    if padding not in ("valid", "same"):
        raise ModelInputError(f"model.padding must be 'valid' or 'same', got {padding!r}")
    if norm not in (None, "batch", "group", "instance"):
        raise ModelInputError(
            f"model.norm must be null, 'batch', 'group' or 'instance', got {norm!r}"
        )
    if not 0 <= dropout < 1:
        raise ModelInputError(f"model.dropout={dropout} must be in [0, 1)")


def whole_number(name: str, value: float, hint: str = "") -> int:
    """``value`` as an int, or a one-line ModelInputError unless it is a whole number >= 1
    (``hint`` ends the message): 1.5 would otherwise fail deep inside torch or be truncated
    silently, and 0 would silently change the architecture."""
    whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 1:
        raise ModelInputError(f"model.{name}={value!r} must be a whole number >= 1{hint}")
    return int(value)


def check_ds_weights(
    weights: Sequence[float] | None, heads: int, deep_supervision: bool
) -> tuple[float, ...] | None:
    """Deep-supervision loss weights, one per head, checked against the head count."""
    if weights is None:
        return None
    weights = tuple(float(w) for w in weights)
    if not deep_supervision or len(weights) != heads or min(weights) < 0 or sum(weights) <= 0:
        raise ModelInputError(
            f"model.ds_weights={list(weights)} needs model.deep_supervision=true and {heads} "
            f"non-negative weights (not all 0), one per head, the main prediction first"
        )
    return weights
