"""ResUNet: the diffusion models' U-Net (residual blocks, GroupNorm, SiLU, self-attention) used
for segmentation, without the time embedding.

Ho, Jain, Abbeel. "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (Appendix B).
Dhariwal, Nichol. "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021 (Sec. 3), whose
layout (``guided_diffusion/unet.py``) this follows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segunet.config.schema import Count, Dropout, SpatialDims
from segunet.models.blocks import Padding, conv
from segunet.models.unet import ModelInputError, SizeRules, whole_number


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``gcd(32, channels)`` groups: the papers' 32 whenever 32 divides the
    width, else the largest count that divides both (e.g. 8 channels -> 8 groups of 1)."""
    return nn.GroupNorm(math.gcd(max_groups, channels), channels)


def zero_(module: nn.Module) -> nn.Module:
    """Zero weights and bias: a residual branch ending in it starts as the identity, as in
    Dhariwal & Nichol's ``zero_module``."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``skip(x) + conv(dropout(silu(gn(conv(silu(gn(x)))))))`` with 3x3 convs (Ho et al. 2020,
    App. B), minus the time embedding. ``skip`` is a 1x1 conv when the width changes, else the
    identity; the last conv starts at zero."""

    def __init__(
        self, in_channels: int, out_channels: int, spatial_dims: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            group_norm(in_channels),
            nn.SiLU(),
            conv(spatial_dims, in_channels, out_channels, 3, padding=1),
            group_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_(conv(spatial_dims, out_channels, out_channels, 3, padding=1)),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else conv(spatial_dims, in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.branch(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all positions, residual: ``x + proj(attn(gn(x)))``.

    ``q, k, v`` come from one 1x1 conv (``3 * C`` outputs, split into q, k, v and then into
    ``num_heads`` heads of ``d = C / num_heads`` channels); per head
    ``attn = softmax(q^T k / sqrt(d)) v`` over the ``T`` positions (Vaswani et al. 2017, eq. 1),
    via ``scaled_dot_product_attention``. ``proj`` is a 1x1 conv that starts at zero.
    """

    def __init__(self, channels: int, spatial_dims: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ModelInputError(
                f"model.num_heads={num_heads} must divide the width of every attention level, "
                f"{channels} channels here"
            )
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = conv(spatial_dims, channels, 3 * channels, 1)
        self.proj = zero_(conv(spatial_dims, channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(x, with_weights=False)[0]

    def attend(self, x: Tensor, with_weights: bool) -> tuple[Tensor, Tensor | None]:
        """The output, and with ``with_weights`` the softmax weights (N, heads, T, T)."""
        n, c, *spatial = x.shape
        # (N, 3C, T) -> three (N, heads, T, d)
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, -1)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        if with_weights:  # the same maths spelled out, for the logged maps only
            weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            h = weights @ v
        else:
            weights, h = None, F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(n, c, *spatial)
        return x + self.proj(h), weights


class Stage(nn.Module):
    """A residual block, followed by self-attention at the attention levels."""

    def __init__(self, res: ResBlock, attention: SelfAttention | None) -> None:
        super().__init__()
        self.res, self.attention = res, attention

    def forward(self, x: Tensor, maps: list[Tensor] | None = None) -> Tensor:
        x = self.res(x)
        if self.attention is None:
            return x
        x, weights = self.attention.attend(x, with_weights=maps is not None)
        if maps is not None:
            maps.append(received_attention(weights, x.shape[2:]))
        return x


def received_attention(weights: Tensor, spatial: Sequence[int]) -> Tensor:
    """A picture of (N, heads, T, T) attention weights: the weight each position receives,
    averaged over heads and queries, scaled by its maximum to [0, 1]; (N, 1, *spatial)."""
    received = weights.detach().mean(dim=(1, 2))
    received = received / received.amax(dim=1, keepdim=True)
    return received.reshape(weights.shape[0], 1, *spatial)


class ResUNet(SizeRules, nn.Module):
    """The U-Net of Dhariwal & Nichol (2021), after Ho et al. (2020), for segmentation (2D/3D).

    A 3x3 conv lifts the input to ``channels[0]``. Each level ``l`` of the encoder has
    ``num_res_blocks`` residual blocks to ``channels[l]`` (GroupNorm, SiLU, dropout; see
    :class:`ResBlock`), each followed by self-attention at the attention levels, and all but the
    last end in a stride-2 3x3 conv. The middle is res block, attention, res block. Each decoder
    level has ``num_res_blocks + 1`` residual blocks, each taking the concatenation with the
    matching encoder output (every encoder stage's output is a skip), and all but the finest end
    in nearest-neighbour 2x upsampling and a 3x3 conv. GroupNorm, SiLU and a 3x3 conv give the
    logits. There is no time embedding.

    Args:
        in_channels, out_channels, spatial_dims, channels: as for :class:`UNet`.
        padding: ``"same"`` only; the input must be divisible by ``2 ** (len(channels) - 1)``.
        num_res_blocks: residual blocks per encoder level (2 in both papers).
        dropout: drop-out probability inside each residual block (0.1 in Ho et al. on CIFAR10).
        num_heads: attention heads; must divide every attention level's width.
        attention_resolution: self-attention at every level whose feature maps are at most this
            many pixels wide for an ``image_size`` input; the middle block always has it. Fixed
            at construction, so parameters never go unused and a traced graph is valid at every
            input size. With the defaults (256 px, 4 levels: 256/128/64/32) no level is <= 16,
            so only the middle block attends; Ho et al.'s 16x16 maps need a 16 px level.
        image_size: the reference width that fixes the attention levels (Dhariwal & Nichol's
            ``image_size``); level ``l`` counts as ``image_size / 2 ** l`` pixels. It is not the
            patch size: any valid input runs, with the same attention blocks.

    ``forward_with_attention`` also returns one map per attention block for TensorBoard.
    """

    def __init__(
        self,
        in_channels: Count = 1,
        out_channels: Count = 2,
        spatial_dims: SpatialDims = 2,
        channels: Sequence[Count] = (64, 128, 256, 512),
        padding: Padding = "same",
        num_res_blocks: Count = 2,
        dropout: Dropout = 0.0,
        num_heads: Count = 4,
        attention_resolution: Count = 16,
        image_size: Count = 256,
    ) -> None:
        super().__init__()
        channels = self._init_sizes(
            in_channels, out_channels, spatial_dims, channels, padding, None, dropout,
            same_only=True,
        )
        num_res_blocks = whole_number("num_res_blocks", num_res_blocks)
        num_heads = whole_number("num_heads", num_heads)
        attention_resolution = whole_number("attention_resolution", attention_resolution)
        image_size = whole_number("image_size", image_size)
        levels = self.levels
        self.attention_levels = tuple(
            lv for lv in range(levels) if image_size / 2**lv <= attention_resolution
        )

        def stage(cin: int, cout: int, level: int) -> Stage:
            attention = level in self.attention_levels
            return Stage(
                ResBlock(cin, cout, spatial_dims, dropout),
                SelfAttention(cout, spatial_dims, num_heads) if attention else None,
            )

        self.stem = conv(spatial_dims, in_channels, channels[0], 3, padding=1)
        skips, width = [channels[0]], channels[0]  # widths of the skips, in push order
        self.encoder, self.downs = nn.ModuleList(), nn.ModuleList()
        for level, c in enumerate(channels):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(stage(width, c, level))
                width = c
                skips.append(width)
            self.encoder.append(nn.ModuleList(blocks))
            if level < levels - 1:
                self.downs.append(conv(spatial_dims, width, width, 3, stride=2, padding=1))
                skips.append(width)
        self.middle = Stage(
            ResBlock(width, width, spatial_dims, dropout),
            SelfAttention(width, spatial_dims, num_heads),
        )
        self.middle_out = ResBlock(width, width, spatial_dims, dropout)
        # Index l belongs to level l, as in UNet: ups[l] lifts level l + 1 to level l.
        decoder: list[nn.ModuleList] = []
        for level in reversed(range(levels)):
            c = channels[level]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(stage(width + skips.pop(), c, level))
                width = c
            decoder.append(nn.ModuleList(blocks))
        self.decoder = nn.ModuleList(decoder[::-1])
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv(spatial_dims, channels[lv + 1], channels[lv + 1], 3, padding=1),
            )
            for lv in range(levels - 1)
        )
        self.out = nn.Sequential(
            group_norm(channels[0]),
            nn.SiLU(),
            conv(spatial_dims, channels[0], out_channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, out_channels, *x.shape[2:])."""
        return self._forward(x, None)

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and one detached map per attention block, (N, 1, *its spatial size), in
        network order: the weight each position receives (see :func:`received_attention`)."""
        maps: list[Tensor] = []
        return self._forward(x, maps), maps

    def _forward(self, x: Tensor, maps: list[Tensor] | None) -> Tensor:
        self._check_input(x)
        h = self.stem(x)
        skips = [h]
        for level, blocks in enumerate(self.encoder):
            for block in blocks:
                h = block(h, maps)
                skips.append(h)
            if level < self.levels - 1:
                h = self.downs[level](h)
                skips.append(h)
        h = self.middle_out(self.middle(h, maps))
        for level in reversed(range(self.levels)):
            for block in self.decoder[level]:
                h = block(torch.cat([h, skips.pop()], dim=1), maps)
            if level > 0:
                h = self.ups[level - 1](h)
        return self.out(h)
