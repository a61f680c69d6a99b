"""UNet++: a U-Net whose skip connections are nested, dense convolution blocks.

Zhou, Rahman Siddiquee, Tajbakhsh, Liang. "UNet++: A Nested U-Net Architecture for Medical
Image Segmentation", DLMIA 2018 (MICCAI workshops).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segunet.config.schema import Count, NonNegative, SpatialDims
from segunet.models.blocks import DoubleConv, NormKind, Padding, conv, he_init, max_pool, up_conv
from segunet.models.unet import ModelInputError, SizeRules, check_ds_weights


class UNetPlusPlus(SizeRules, nn.Module):
    """UNet++ (Zhou et al. 2018, Fig. 1), for 2D or 3D images, with same-padded convs.

    With ``L = len(channels) - 1``, node ``X(i, j)`` (depth ``i``, ``j`` convs along the skip
    pathway) is

        X(i, 0) = H(pool(X(i - 1, 0)))                                 (the encoder)
        X(i, j) = H([X(i, 0), ..., X(i, j - 1), Up(X(i + 1, j - 1))])   for j >= 1,

    eq. (1) of the paper, where ``H`` is two 3x3 convs (each with optional ``norm`` and a ReLU)
    to ``channels[i]`` and ``Up`` a 2x2 transposed conv of stride 2 from ``channels[i + 1]`` to
    ``channels[i]``, as in the authors' code. ``X(0, L)`` is the U-Net's output node; a 1x1 conv
    head maps it to ``out_channels`` logits.

    Args:
        in_channels, out_channels, spatial_dims, channels, norm: as for :class:`UNet`.
        padding: ``"same"`` only; the input must be divisible by ``2 ** L``.
        deep_supervision: a 1x1 head on every top node ``X(0, 1..L)`` (Sec. 2, "deep
            supervision"). In training mode ``forward`` then returns the ``L`` logits, all at
            full resolution, deepest (the main prediction) first: ``[head L, head L-1, ...,
            head 1]``; :class:`segunet.train.losses.DeepSupervisionLoss` averages their losses. In
            eval mode it returns one tensor, the head of ``prune_depth``.
        ds_weights: loss weight per head, in the order above; None weighs them equally.
        prune_depth: ``d`` in 1..L, eval only: run the pruned UNet++ L^d (Sec. 2, Fig. 1c),
            the nodes ``X(i, j)`` with ``i + j <= d`` and the head of ``X(0, d)``, which needs
            ``deep_supervision``. None is ``L``, the whole network.
    """

    def __init__(
        self,
        in_channels: Count = 1,
        out_channels: Count = 2,
        spatial_dims: SpatialDims = 2,
        channels: Sequence[Count] = (32, 64, 128, 256, 512),
        padding: Padding = "same",
        norm: NormKind | None = "batch",
        deep_supervision: bool = True,
        ds_weights: Sequence[NonNegative] | None = None,
        prune_depth: Count | None = None,
    ) -> None:
        super().__init__()
        channels = self._init_sizes(
            in_channels, out_channels, spatial_dims, channels, padding, norm, 0.0, same_only=True
        )
        self.depth = depth = self.levels - 1
        self.deep_supervision = bool(deep_supervision)
        # Heads by depth d = 1..L; without deep supervision only X(0, L) has one, so no
        # parameter goes unused (DDP requires that every parameter gets a gradient).
        self.head_depths = tuple(range(1, depth + 1)) if self.deep_supervision else (depth,)
        # ds_weights go with deep supervision's L heads, so the error names L even without it.
        self.ds_weights = check_ds_weights(ds_weights, depth, self.deep_supervision)
        self.prune_depth = _check_prune_depth(prune_depth, self.head_depths)

        def block(cin: int, cout: int) -> DoubleConv:
            return DoubleConv(cin, cout, cout, spatial_dims, padding, norm)

        inputs = (in_channels, *channels[:-1])
        self.encoders = nn.ModuleList(
            block(cin, cout) for cin, cout in zip(inputs, channels, strict=True)
        )
        self.pool = max_pool(spatial_dims)
        # Node X(i, j), j >= 1, is nodes[key(i, j)] and takes ups[key(i, j)](X(i + 1, j - 1)).
        keys = [(i, j) for i in range(depth) for j in range(1, depth - i + 1)]
        self.ups = nn.ModuleDict(
            {_key(i, j): up_conv(spatial_dims, channels[i + 1], channels[i]) for i, j in keys}
        )
        self.nodes = nn.ModuleDict(
            {_key(i, j): block((j + 1) * channels[i], channels[i]) for i, j in keys}
        )
        self.heads = nn.ModuleDict(
            {str(d): conv(spatial_dims, channels[0], out_channels, 1) for d in self.head_depths}
        )
        self.apply(he_init)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits (N, out_channels, *x.shape[2:]); a list of them, deepest first, in training
        with deep supervision."""
        self._check_input(x)
        if self.training and self.deep_supervision:
            top = self.top_nodes(x, self.depth)
            return [self.heads[str(d)](top[d - 1]) for d in reversed(self.head_depths)]
        d = self.depth if self.training or self.prune_depth is None else self.prune_depth
        return self.heads[str(d)](self.top_nodes(x, d)[-1])

    def top_nodes(self, x: Tensor, depth: int) -> list[Tensor]:
        """``[X(0, 1), ..., X(0, depth)]``, computing only the nodes with ``i + j <= depth``."""
        grid: list[list[Tensor]] = [[] for _ in range(depth + 1)]  # grid[i][j] = X(i, j)
        for k in range(depth + 1):
            # Column by column as in the paper's Fig. 1: X(k, 0), then back up to X(0, k).
            grid[k].append(self.encoders[k](x if k == 0 else self.pool(grid[k - 1][0])))
            for j in range(1, k + 1):
                i = k - j
                up = self.ups[_key(i, j)](grid[i + 1][j - 1])
                grid[i].append(self.nodes[_key(i, j)](torch.cat([*grid[i], up], dim=1)))
        return grid[0][1:]


def _key(i: int, j: int) -> str:
    return f"x{i}_{j}"


def _check_prune_depth(prune_depth: int | None, head_depths: tuple[int, ...]) -> int | None:
    if prune_depth is not None and int(prune_depth) not in head_depths:
        raise ModelInputError(
            f"model.prune_depth={prune_depth} has no trained head: use one of "
            f"{list(head_depths)} (depths below {head_depths[-1]} need model.deep_supervision=true)"
        )
    return None if prune_depth is None else int(prune_depth)
