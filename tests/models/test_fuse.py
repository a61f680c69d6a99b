"""BatchNorm folding for inference: the folded copy computes what the eval-mode original
computes, leaves the original alone, and predict_tiled's results do not change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import segunet.infer.predict
from segunet.infer.predict import predict_tiled
from segunet.models import AttentionUNet, UNet, UNet3Plus, UNetPlusPlus
from segunet.models.fuse import fold_batchnorm

WIDTHS = (4, 8, 16)


def with_statistics(model: nn.Module) -> nn.Module:
    """Random affine parameters and running statistics, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator))
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=generator))
            m.bias.data.copy_(torch.randn(n, generator=generator))
    return model


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: UNet(1, 3, 2, WIDTHS, padding="same", norm="batch"), (2, 1, 24, 20)),
        (lambda: UNet(2, 3, 3, WIDTHS, padding="valid", norm="batch"), (1, 2, 44, 44, 44)),
        (lambda: AttentionUNet(1, 2, 2, WIDTHS, padding="same", norm="batch"), (2, 1, 16, 16)),
        (lambda: UNetPlusPlus(1, 2, 2, WIDTHS, norm="batch"), (2, 1, 16, 16)),
        (lambda: UNet3Plus(1, 2, 2, WIDTHS, norm="batch"), (2, 1, 16, 16)),
    ],
    ids=["unet2d", "unet3d-valid", "attention", "unetpp", "unet3plus"],
)
def test_folded_copy_equals_the_eval_original(build, shape):
    torch.manual_seed(0)
    model = with_statistics(build())
    assert batchnorms(model) > 0
    x = torch.randn(shape)
    with torch.no_grad():
        folded = fold_batchnorm(model)
        expected = model.eval()(x)
        got = folded(x)
    assert batchnorms(folded) == 0
    # The reference is the unfolded network itself, in float32.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_original_is_left_alone():
    model = with_statistics(UNet(1, 2, 2, WIDTHS, padding="same", norm="batch")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert batchnorms(model) == 10  # two in each of the 3 + 2 double convs
    fold_batchnorm(model)
    assert model.training and batchnorms(model) == 10
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_what_cannot_fold_stays():
    """A BatchNorm without running statistics computes from its batch: it must stay."""
    model = UNet(1, 2, 2, WIDTHS, padding="same", norm="batch")
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    assert batchnorms(fold_batchnorm(model)) == batchnorms(model)
    plain = UNet(1, 2, 2, WIDTHS, padding="same")  # no norm: nothing to fold
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(plain)(x), plain.eval()(x))


def test_predict_tiled_runs_a_folded_copy_and_keeps_the_model(monkeypatch):
    """predict_tiled folds internally: same probabilities as the unfolded net run by hand
    on one tile, and the caller's model keeps its norms and its training mode."""
    # The results alone would not show a predict_tiled that stopped folding: count the folds.
    calls: list[nn.Module] = []

    def spy(model: nn.Module) -> nn.Module:
        calls.append(model)
        return fold_batchnorm(model)

    monkeypatch.setattr(segunet.infer.predict, "fold_batchnorm", spy)
    torch.manual_seed(0)
    model = with_statistics(UNet(1, 2, 2, WIDTHS, padding="same", norm="batch")).train()
    image = np.random.default_rng(0).standard_normal((1, 32, 32)).astype(np.float32)
    probs = predict_tiled(model, image, 32)  # one tile: no blending
    assert len(calls) == 1 and calls[0] is model  # folded once, the caller's model
    assert model.training and batchnorms(model) > 0
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(image[None])), 1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
