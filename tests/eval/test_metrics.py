import pytest
import torch

from segunet.eval.metrics import OverlapCounter, dice_iou


def test_dice_and_iou_by_hand():
    target = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 0]])
    # |P & G| = 2, |P| = 4, |G| = 3 -> Dice 4/7, IoU 2/5
    m = dice_iou(pred, target, num_classes=2)
    assert m["dice"] == pytest.approx(4 / 7)
    assert m["iou"] == pytest.approx(2 / 5)


def test_perfect_empty_and_all_wrong():
    empty = torch.zeros(4, 4, dtype=torch.long)
    assert dice_iou(empty, empty, 2) == {"dice": 1.0, "iou": 1.0}
    ones = torch.ones(4, 4, dtype=torch.long)
    assert dice_iou(ones, ones, 2) == {"dice": 1.0, "iou": 1.0}
    assert dice_iou(ones, empty, 2) == {"dice": 0.0, "iou": 0.0}


def test_valid_mask_and_multiclass_mean():
    target = torch.tensor([1, 2, 2, 0, 1])
    pred = torch.tensor([1, 2, 1, 0, 2])
    valid = torch.tensor([True, True, True, True, False])
    # class 1: P={0,2}, G={0} -> Dice 2/3; class 2: P={1}, G={1,2} -> Dice 2/3
    m = dice_iou(pred, target, 3, valid)
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["iou"] == pytest.approx(1 / 2)


def test_counter_accumulates_like_one_big_image():
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 2, (5, 7), generator=g) for _ in range(3)]
    targets = [torch.randint(0, 2, (5, 7), generator=g) for _ in range(3)]
    counter = OverlapCounter(2)
    for p, t in zip(preds, targets):
        counter.update(p, t)
    whole = dice_iou(torch.cat(preds), torch.cat(targets), 2)
    assert counter.compute() == pytest.approx(whole)
