"""Attention U-Net: a U-Net whose skip connections pass through additive attention gates.

Oktay, Schlemper, Le Folgoc, Lee, Heinrich, Misawa, Mori, McDonagh, Hammerla, Kainz, Glocker,
Rueckert. "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segunet.models.blocks import INTERPOLATION, conv, he_init
from segunet.models.unet import UNet


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, Fig. 2).

    ``alpha = sigmoid(psi(relu(theta(x) + phi(g))))``, computed at half the resolution of ``x``
    and resampled to it; the gate returns ``x * alpha`` and ``alpha``. ``theta`` is a 1x1 conv of
    stride 2, which brings the skip ``x`` to the grid of the gating signal ``g``; ``phi`` and
    ``psi`` are 1x1 convs, ``psi`` to a single channel.
    """

    def __init__(
        self,
        skip_channels: int,
        gate_channels: int,
        inter_channels: int | None = None,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        inter = inter_channels or max(skip_channels // 2, 1)
        # phi's bias already offsets the sum, so theta needs none (as in Oktay et al.'s code).
        self.theta = conv(spatial_dims, skip_channels, inter, kernel_size=1, stride=2, bias=False)
        self.phi = conv(spatial_dims, gate_channels, inter, kernel_size=1)
        self.psi = conv(spatial_dims, inter, 1, kernel_size=1)
        self.mode = INTERPOLATION[spatial_dims]

    def forward(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        theta_x = self.theta(x)
        phi_g = self.phi(g)
        if phi_g.shape[2:] != theta_x.shape[2:]:
            phi_g = self._resample(phi_g, theta_x.shape[2:])
        alpha = torch.sigmoid(self.psi(F.relu(theta_x + phi_g)))
        alpha = self._resample(alpha, x.shape[2:])
        return x * alpha, alpha

    def _resample(self, t: Tensor, size: torch.Size) -> Tensor:
        return F.interpolate(t, size=size, mode=self.mode, align_corners=False)


class AttentionUNet(UNet):
    """The U-Net with an attention gate on every skip connection (Oktay et al. 2018).

    Takes the arguments of :class:`UNet`. The gate of level i weighs that level's skip,
    centre-cropped to the upsampled size, by the features of level i + 1 before their
    upsampling (for the deepest skip: the bottom level's output). ``forward`` returns the
    logits only; ``forward_with_attention`` also returns the attention maps, for logging.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.channels
        self.gates = nn.ModuleList(
            AttentionGate(c[i], c[i + 1], spatial_dims=self.spatial_dims)
            for i in range(self.levels - 1)
        )
        self.gates.apply(he_init)

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and one detached attention map per skip, (N, 1, *skip spatial), finest first.

        Returned rather than stored on the module, which keeps ``forward`` free of side
        effects for torch.compile and DDP.
        """
        return self._forward(x)

    def _gate_skip(self, level: int, skip: Tensor, gate: Tensor) -> tuple[Tensor, Tensor]:
        return self.gates[level](skip, gate)
