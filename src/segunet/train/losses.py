"""Losses: the pixel-wise weighted cross-entropy of the U-Net paper, optionally with Dice.

Ronneberger et al. (2015), eq. (1): E = sum_x w(x) log p_{l(x)}(x), with p the softmax over
classes and w the precomputed weight map. We normalise by sum_x w(x) so the loss scale does
not depend on patch size or on how many pixels the ignore label removes (Cicek et al. 2016
give unlabelled voxels weight 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segunet.config.schema import NonNegative


def effective_weight(
    target: Tensor,
    weight: Tensor | None = None,
    ignore: Tensor | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Per-pixel weight with unlabelled pixels set to 0 (float, shape of ``target``)."""
    w = torch.ones_like(target, dtype=torch.float32) if weight is None else weight.float()
    if ignore is not None:
        w = w * (~ignore.bool())
    if ignore_index is not None:
        w = w * (target != ignore_index)
    return w


def _safe_target(target: Tensor, labelled: Tensor) -> Tensor:
    """``target`` with unlabelled pixels set to class 0: cross-entropy and one-hot encoding
    reject out-of-range ids (an ignore label of 255), and those pixels weigh 0 anyway."""
    return torch.where(labelled, target, torch.zeros_like(target)).long()


class WeightedCrossEntropy(nn.Module):
    """sum_x w(x) * -log softmax(logits)_{target(x)}(x) / sum_x w(x).

    ``logits``: (N, C, *spatial); ``target``: (N, *spatial) integer classes; ``weight``:
    (N, *spatial) or None (all ones); ``ignore``: (N, *spatial) bool, True where unlabelled.
    Pixels labelled ``ignore_index`` also weigh 0.
    """

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        ignore: Tensor | None = None,
    ) -> Tensor:
        w = effective_weight(target, weight, ignore, self.ignore_index)
        ce = F.cross_entropy(logits.float(), _safe_target(target, w > 0), reduction="none")
        # clamp: a patch with no labelled pixel contributes 0, not NaN.
        return (w * ce).sum() / w.sum().clamp_min(1e-8)


class DiceCrossEntropy(nn.Module):
    """Weighted cross-entropy plus MONAI's soft Dice over the labelled pixels.

    Dice balances classes on its own, so it is unweighted; the border weights act through the
    cross-entropy term.
    """

    def __init__(
        self,
        ignore_index: int | None = None,
        lambda_ce: NonNegative = 1.0,
        lambda_dice: NonNegative = 1.0,
        include_background: bool = False,
    ) -> None:
        super().__init__()
        # Imported here: importing monai loads all its submodules (seconds), and only this
        # loss needs it.
        from monai.losses import MaskedDiceLoss

        self.ce = WeightedCrossEntropy(ignore_index)
        self.dice = MaskedDiceLoss(
            include_background=include_background, to_onehot_y=True, softmax=True
        )
        self.lambda_ce = lambda_ce
        self.lambda_dice = lambda_dice

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        ignore: Tensor | None = None,
    ) -> Tensor:
        labelled = effective_weight(target, None, ignore, self.ce.ignore_index) > 0
        dice = self.dice(
            logits.float(),
            _safe_target(target, labelled).unsqueeze(1),
            mask=labelled.unsqueeze(1).float(),
        )
        return self.lambda_ce * self.ce(logits, target, weight, ignore) + self.lambda_dice * dice


class DeepSupervisionLoss(nn.Module):
    """``sum_k w_k * criterion(logits_k, ...) / sum_k w_k`` over a list of logits.

    Deep supervision (Lee et al. 2015, "Deeply-Supervised Nets"; UNet++ and UNet 3+) trains
    auxiliary heads with the same loss as the main one. A model with it returns, in training
    only, a list of full-resolution logits, the main prediction first; this is the one place
    that combines them. A single tensor (eval mode, validation) passes straight through.
    ``weights`` default to equal.
    """

    def __init__(self, criterion: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.criterion = criterion
        self.weights = None if weights is None else tuple(float(w) for w in weights)

    def forward(self, logits: Tensor | Sequence[Tensor], *args, **kwargs) -> Tensor:
        if not isinstance(logits, (list, tuple)):
            return self.criterion(logits, *args, **kwargs)
        weights = self.weights or (1.0,) * len(logits)
        if len(weights) != len(logits):
            raise ValueError(f"{len(weights)} deep-supervision weights for {len(logits)} heads")
        pairs = zip(weights, logits, strict=True)
        total = sum(w * self.criterion(x, *args, **kwargs) for w, x in pairs)
        return total / sum(weights)
