"""Overlap metrics on label maps: Dice and IoU (Jaccard), accumulated over many tiles.

Dice = 2|P & G| / (|P| + |G|), IoU = |P & G| / |P | G|, per foreground class, averaged over
classes. A class absent from both prediction and ground truth scores 1 (nothing to find,
nothing falsely found), as in the Cell Tracking Challenge convention.
"""

from __future__ import annotations

import torch
from torch import Tensor


class OverlapCounter:
    """Accumulates per-class intersection and sizes so metrics cover a whole dataset.

    Counting first and dividing last gives the dataset-level Dice, not the mean of per-tile
    Dice values, which small, nearly empty tiles would distort.
    """

    def __init__(self, num_classes: int, ignore_background: bool = True) -> None:
        self.num_classes = num_classes
        self.first = 1 if ignore_background and num_classes > 1 else 0
        self.inter = torch.zeros(num_classes, dtype=torch.float64)
        self.pred = torch.zeros(num_classes, dtype=torch.float64)
        self.true = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """``pred``, ``target``: integer label maps of equal shape; ``valid``: bool mask."""
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        if valid is not None:
            keep = valid.reshape(-1).bool()
            pred, target = pred[keep], target[keep]
        k = self.num_classes
        # One bincount over (pred, target) pairs gives the confusion matrix in a single pass.
        cm = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k).double().cpu()
        self.inter += cm.diagonal()
        self.pred += cm.sum(0)
        self.true += cm.sum(1)

    def compute(self) -> dict[str, float]:
        inter, pred, true = (t[self.first :] for t in (self.inter, self.pred, self.true))
        union = pred + true - inter
        empty = (pred + true) == 0
        dice = torch.where(empty, 1.0, 2 * inter / (pred + true).clamp_min(1))
        iou = torch.where(empty, 1.0, inter / union.clamp_min(1))
        return {"dice": dice.mean().item(), "iou": iou.mean().item()}


def dice_iou(
    pred: Tensor, target: Tensor, num_classes: int, valid: Tensor | None = None
) -> dict[str, float]:
    """Mean foreground Dice and IoU of two label maps (see :class:`OverlapCounter`)."""
    counter = OverlapCounter(num_classes)
    counter.update(pred, target, valid)
    return counter.compute()
