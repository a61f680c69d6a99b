"""UNet 3+: a U-Net whose decoder levels each see every encoder and coarser decoder scale.

Huang, Lin, Tong, Hu, Zhang, Iwamoto, Han, Chen, Wu. "UNet 3+: A Full-Scale Connected UNet for
Medical Image Segmentation", ICASSP 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segunet.config.schema import Count, NonNegative, SpatialDims
from segunet.models.blocks import (
    INTERPOLATION,
    DoubleConv,
    NormKind,
    Padding,
    conv,
    conv_norm_relu,
    he_init,
    max_pool,
)
from segunet.models.unet import SizeRules, check_ds_weights, whole_number


class UNet3Plus(SizeRules, nn.Module):
    """UNet 3+ (Huang et al. 2020, Fig. 1c), for 2D or 3D images, with same-padded convs.

    The encoder is the U-Net's: two 3x3 convs per level and 2x2 max-pooling. With ``L =
    len(channels)`` levels, ``E_j`` the encoder output of level ``j`` and ``D_{L-1} = E_{L-1}``
    (the bottom), the decoder of level ``i = L-2, ..., 0`` is eq. (1):

        D_i = F([C(pool_{2^(i-j)}(E_j)) for j < i], C(E_i), [C(up_{2^(j-i)}(D_j)) for j > i])

    where each ``C`` is its own 3x3 conv to ``cat_channels`` with ``norm`` and ReLU, ``pool_s``
    max-pooling with kernel and stride ``s``, ``up_s`` bi/trilinear upsampling by ``s``, and
    ``F`` concatenates the ``L`` maps (``L * cat_channels`` wide, 5 x 64 = 320 in the paper) and
    fuses them with one 3x3 conv, norm and ReLU at that width. A 3x3 conv head gives the logits.

    Args:
        in_channels, out_channels, spatial_dims, channels, norm: as for :class:`UNet`.
        padding: ``"same"`` only; the input must be divisible by ``2 ** (L - 1)``.
        cat_channels: width of each scale's map before the fusion; None is ``channels[0]``,
            the paper's 64 with its widths, and scales with narrower nets.
        deep_supervision: a 3x3 head on every decoder level and the bottom (Sec. 2.2),
            bi/trilinearly upsampled to full resolution. In training mode ``forward`` returns
            the ``L`` logits, finest (the main prediction, ``D_0``) first; in eval mode the
            main prediction only.
        ds_weights: loss weight per head, in the order above; None weighs them equally.
    """

    def __init__(
        self,
        in_channels: Count = 1,
        out_channels: Count = 2,
        spatial_dims: SpatialDims = 2,
        channels: Sequence[Count] = (64, 128, 256, 512, 1024),
        padding: Padding = "same",
        norm: NormKind | None = "batch",
        cat_channels: Count | None = None,
        deep_supervision: bool = False,
        ds_weights: Sequence[NonNegative] | None = None,
    ) -> None:
        super().__init__()
        channels = self._init_sizes(
            in_channels, out_channels, spatial_dims, channels, padding, norm, 0.0, same_only=True
        )
        levels = self.levels
        self.cat_channels = int(channels[0]) if cat_channels is None else whole_number(
            "cat_channels", cat_channels, ", or null for channels[0]"
        )
        self.deep_supervision = bool(deep_supervision)
        self.ds_weights = check_ds_weights(ds_weights, levels, self.deep_supervision)
        self.mode = INTERPOLATION[spatial_dims]
        fused = levels * self.cat_channels

        inputs = (in_channels, *channels[:-1])
        self.encoders = nn.ModuleList(
            DoubleConv(cin, cout, cout, spatial_dims, padding, norm)
            for cin, cout in zip(inputs, channels, strict=True)
        )
        self.pool = max_pool(spatial_dims)

        def width(j: int, i: int) -> int:  # channels of the level-j map seen by decoder i
            return channels[j] if j <= i or j == levels - 1 else fused

        # branches[i][j] brings level j to decoder level i; the bottom level has no decoder,
        # so index i runs over 0..L-2 as in UNet.decoders.
        self.branches = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(
                    self._resample(i - j),
                    *conv_norm_relu(spatial_dims, width(j, i), self.cat_channels, norm),
                )
                for j in range(levels)
            )
            for i in range(levels - 1)
        )
        self.fusions = nn.ModuleList(
            conv_norm_relu(spatial_dims, fused, fused, norm) for _ in range(levels - 1)
        )
        # Head k reads decoder level k (the bottom encoder for k = L-1) and upsamples its
        # logits to full resolution.
        head_inputs = [fused] * (levels - 1) + [channels[-1]]
        self.heads = nn.ModuleList(
            nn.Sequential(
                conv(spatial_dims, head_inputs[k], out_channels, 3, padding=1),
                self._resample(-k),
            )
            for k in range(levels if self.deep_supervision else 1)
        )
        self.apply(he_init)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits (N, out_channels, *x.shape[2:]); a list of them, one per level finest
        first, in training with deep supervision."""
        self._check_input(x)
        encoded = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))
            encoded.append(x)
        decoded = {self.levels - 1: encoded[-1]}  # by level; the bottom is its own decoder
        for i in reversed(range(self.levels - 1)):
            sources = encoded[: i + 1] + [decoded[j] for j in range(i + 1, self.levels)]
            maps = [branch(t) for branch, t in zip(self.branches[i], sources, strict=True)]
            decoded[i] = self.fusions[i](torch.cat(maps, dim=1))
        if not (self.training and self.deep_supervision):
            return self.heads[0](decoded[0])
        return [head(decoded[k]) for k, head in enumerate(self.heads)]

    def _resample(self, steps: int) -> nn.Module:
        """Max-pooling by ``2 ** steps`` for a finer scale (steps > 0), bi/trilinear upsampling
        by ``2 ** -steps`` for a coarser one; a scale factor rather than a target size keeps
        traced and ONNX graphs free of baked-in sizes (exact here: sizes are divisible)."""
        if steps > 0:
            return max_pool(self.spatial_dims, 2**steps)
        if steps < 0:
            return nn.Upsample(scale_factor=2**-steps, mode=self.mode, align_corners=False)
        return nn.Identity()
