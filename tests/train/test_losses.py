import math

import pytest
import torch
from monai.losses import DiceLoss

from segunet.train.losses import DiceCrossEntropy, WeightedCrossEntropy


def two_pixels():
    # pixel a: logits (0, ln 3) -> p = (1/4, 3/4), target 1
    # pixel b: logits (0, 0) -> p = (1/2, 1/2), target 0
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]).reshape(1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    weight = torch.tensor([[[2.0, 1.0]]])
    return logits, target, weight


def test_weighted_ce_matches_hand_computation():
    logits, target, weight = two_pixels()
    expected = (2 * -math.log(3 / 4) + 1 * math.log(2)) / 3
    assert WeightedCrossEntropy()(logits, target, weight).item() == pytest.approx(expected, 1e-6)


def test_unweighted_is_plain_mean_cross_entropy():
    logits, target, _ = two_pixels()
    expected = (-math.log(3 / 4) + math.log(2)) / 2
    assert WeightedCrossEntropy()(logits, target).item() == pytest.approx(expected, 1e-6)


def test_ignore_mask_and_ignore_index_remove_pixels():
    logits, target, weight = two_pixels()
    ignore = torch.tensor([[[False, True]]])
    assert WeightedCrossEntropy()(logits, target, weight, ignore).item() == pytest.approx(
        -math.log(3 / 4), 1e-6
    )
    target_255 = torch.tensor([[[1, 255]]])
    loss = WeightedCrossEntropy(ignore_index=255)(logits, target_255, weight)
    assert loss.item() == pytest.approx(-math.log(3 / 4), 1e-6)


def test_all_ignored_gives_zero_not_nan_and_gradients_flow():
    logits, target, weight = two_pixels()
    logits.requires_grad_(True)
    loss = WeightedCrossEntropy()(logits, target, weight, torch.ones(1, 1, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_weighted_ce_3d_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 4, 5, 6), generator=g)
    weight = torch.rand(2, 4, 5, 6, generator=g)
    p = torch.softmax(logits, 1).gather(1, target[:, None])[:, 0]
    expected = (weight * -torch.log(p)).sum() / weight.sum()
    assert WeightedCrossEntropy()(logits, target, weight).item() == pytest.approx(
        expected.item(), 1e-5
    )


def test_dice_ce_equals_monai_dice_plus_ce():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    target = torch.randint(0, 2, (2, 8, 8), generator=g)
    weight = torch.rand(2, 8, 8, generator=g) + 0.5
    ours = DiceCrossEntropy()(logits, target, weight)
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True)
    expected = dice(logits, target[:, None]) + WeightedCrossEntropy()(logits, target, weight)
    assert ours.item() == pytest.approx(expected.item(), 1e-5)


def test_dice_ce_ignores_unlabelled_half():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 2, 8, 8, generator=g)
    target = torch.randint(0, 2, (1, 8, 8), generator=g)
    ignore = torch.zeros(1, 8, 8, dtype=torch.bool)
    ignore[..., 4:] = True
    ours = DiceCrossEntropy(lambda_ce=0.0)(logits, target, None, ignore)
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True)
    expected = dice(logits[..., :4], target[:, None, :, :4])
    assert ours.item() == pytest.approx(expected.item(), 1e-5)
