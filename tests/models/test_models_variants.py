"""UNet++, UNet 3+ and ResUNet: shapes, errors, parameter counts by hand, deep supervision,
pruning, the attention maths, training and export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, n_params
from torch import nn

from segunet.checkpoint import save_atomic
from segunet.export.run import export_model
from segunet.models import ModelInputError, ResUNet, UNet3Plus, UNetPlusPlus
from segunet.models.resunet import SelfAttention
from segunet.train.losses import DeepSupervisionLoss, WeightedCrossEntropy
from segunet.train.trainer import build_trainer

WIDTHS = (4, 8, 16)  # three levels: inputs divisible by 4
VARIANTS = {
    "unetpp": (UNetPlusPlus, {}),
    "unet3plus": (UNet3Plus, {"deep_supervision": True}),
    "resunet": (ResUNet, {"num_heads": 2, "image_size": 16, "attention_resolution": 8}),
}


def build(name: str, spatial_dims: int = 2, **kwargs) -> nn.Module:
    cls, defaults = VARIANTS[name]
    torch.manual_seed(0)
    return cls(1, 3, spatial_dims, WIDTHS, **(defaults | kwargs))


def conv_params(k: int, cin: int, cout: int, dims: int = 2, bias: bool = True) -> int:
    return k**dims * cin * cout + (cout if bias else 0)


# ------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("spatial_dims, shape", [(2, (16, 24)), (3, (8, 12, 4))])
def test_output_shape_is_input_shape(name, spatial_dims, shape):
    model = build(name, spatial_dims)
    x = torch.randn(2, 1, *shape)
    outputs = model(x)  # training mode: a list for the deep-supervised nets
    outputs = outputs if isinstance(outputs, list) else [outputs]
    assert all(o.shape == (2, 3, *shape) for o in outputs)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, *shape)  # eval: one tensor, for predictor and export
    assert model.output_shape(shape) == shape
    assert model.valid_input_shape([s - 1 for s in shape]) == shape
    assert (model.padding, model.levels, model.channels) == ("same", 3, WIDTHS)
    assert (model.in_channels, model.out_channels, model.spatial_dims) == (1, 3, spatial_dims)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bad_size_names_the_nearest_sizes(name):
    model = build(name)
    with pytest.raises(ModelInputError) as info:
        model(torch.randn(1, 1, 14, 14))
    cls = type(model).__name__
    assert str(info.value) == (
        f"{cls} (same padding, 3 levels) cannot take spatial size (14, 14): "
        f"nearest valid sizes per axis are 12 or 16"
    )
    assert model.nearest_valid_sizes((14, 16)) == [(12, 16), (16, 16)]
    with pytest.raises(ModelInputError, match="expects 1 input channels, got 2"):
        model(torch.randn(1, 2, 16, 16))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_valid_padding_is_refused_in_one_line(name):
    cls, defaults = VARIANTS[name]
    with pytest.raises(ModelInputError) as info:
        cls(channels=WIDTHS, padding="valid", **defaults)
    assert str(info.value) == (
        f"{cls.__name__} supports padding=same only (output size == input size), got "
        f"padding='valid': use model=unet for valid padding"
    )


@pytest.mark.parametrize("value", [0, 1.5, True, "2"])
@pytest.mark.parametrize(
    "cls, name",
    [
        (ResUNet, "num_res_blocks"),
        (ResUNet, "num_heads"),
        (ResUNet, "attention_resolution"),
        (ResUNet, "image_size"),
        (UNet3Plus, "cat_channels"),
    ],
)
def test_counts_must_be_whole_numbers_in_one_line(cls, name, value):
    # 1.5 used to fail deep inside torch (or be truncated), 0 to move the attention silently.
    with pytest.raises(ModelInputError) as info:
        cls(channels=WIDTHS, **{name: value})
    tail = ", or null for channels[0]" if name == "cat_channels" else ""
    assert str(info.value) == f"model.{name}={value!r} must be a whole number >= 1{tail}"


def test_whole_floats_are_taken_as_ints():
    model = ResUNet(channels=WIDTHS, num_res_blocks=1.0, image_size=16.0, num_heads=2.0)
    assert model.attention_levels == (0, 1, 2) and len(model.encoder[0]) == 1  # 16, 8, 4 px
    assert UNet3Plus(channels=WIDTHS, cat_channels=4.0).cat_channels == 4


# ---------------------------------------------------------------------------- parameter counts
def test_unetpp_parameters_by_hand():
    model = UNetPlusPlus(1, 2, 2, (4, 8, 16), norm=None, deep_supervision=True)
    c = (4, 8, 16)

    def double(cin, cout):
        return conv_params(3, cin, cout) + conv_params(3, cout, cout)

    encoders = double(1, 4) + double(4, 8) + double(8, 16)
    # X(i, j) takes j same-level nodes plus the upsampled X(i + 1, j - 1): (j + 1) * c_i.
    nodes = double(2 * c[0], c[0]) + double(3 * c[0], c[0]) + double(2 * c[1], c[1])
    ups = 2 * conv_params(2, c[1], c[0]) + conv_params(2, c[2], c[1])  # X(0,1), X(0,2), X(1,1)
    heads = 2 * conv_params(1, c[0], 2)
    assert n_params(model) == encoders + nodes + ups + heads
    # The paper's Table 1 (3 input channels, 1 class, no norm): 9.04M.
    paper = UNetPlusPlus(3, 1, 2, norm=None, deep_supervision=False)
    assert round(n_params(paper) / 1e6, 2) == 9.04


def test_unet3plus_parameters_by_hand():
    model = UNet3Plus(1, 2, 2, (4, 8, 16), norm="batch", cat_channels=4, deep_supervision=True)

    def cbr(cin, cout):  # conv without bias, then BatchNorm's weight and bias
        return conv_params(3, cin, cout, bias=False) + 2 * cout

    encoders = cbr(1, 4) + cbr(4, 4) + cbr(4, 8) + cbr(8, 8) + cbr(8, 16) + cbr(16, 16)
    fused = 3 * 4
    # Decoder 1 sees E0 (pooled), E1, E2 (the bottom, upsampled); decoder 0 sees E0, D1, E2.
    branches = cbr(4, 4) + cbr(8, 4) + cbr(16, 4) + cbr(4, 4) + cbr(fused, 4) + cbr(16, 4)
    fusions = 2 * cbr(fused, fused)
    heads = 2 * conv_params(3, fused, 2) + conv_params(3, 16, 2)  # D0, D1, bottom
    assert n_params(model) == encoders + branches + fusions + heads
    assert n_params(UNet3Plus(1, 2, 2, (4, 8, 16), cat_channels=4)) == n_params(model) - (
        conv_params(3, fused, 2) + conv_params(3, 16, 2)
    )
    # The paper's Table 1 (3 input channels, 1 class): 26.97M.
    assert round(n_params(UNet3Plus(3, 1)) / 1e6, 2) == 26.97


def test_resunet_parameters_by_hand():
    model = ResUNet(1, 2, 2, (4, 8), num_res_blocks=1, num_heads=1, image_size=64)
    assert model.attention_levels == ()  # 64 and 32 px > 16: attention in the middle only

    def gn(c):
        return 2 * c

    def res(cin, cout):
        skip = conv_params(1, cin, cout) if cin != cout else 0
        return gn(cin) + conv_params(3, cin, cout) + gn(cout) + conv_params(3, cout, cout) + skip

    attention = gn(8) + conv_params(1, 8, 24) + conv_params(1, 8, 8)
    encoder = conv_params(3, 1, 4) + res(4, 4) + conv_params(3, 4, 4) + res(4, 8)
    middle = res(8, 8) + attention + res(8, 8)
    # Skips, pushed: stem 4, res 4, down 4, res 8; popped in reverse by the decoder.
    decoder = res(8 + 8, 8) + res(8 + 4, 8) + conv_params(3, 8, 8) + res(8 + 4, 4) + res(4 + 4, 4)
    out = gn(4) + conv_params(3, 4, 2)
    assert n_params(model) == encoder + middle + decoder + out


def test_resunet_attention_levels_and_group_norm():
    model = ResUNet(channels=(16, 48, 64, 96), image_size=64, attention_resolution=16)
    assert model.attention_levels == (2, 3)  # 16 and 8 px wide for a 64 px patch
    groups = {m.num_channels: m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
    assert groups[16] == 16 and groups[48] == 16 and groups[64] == 32 and groups[96] == 32
    with pytest.raises(ModelInputError, match="num_heads=3 must divide"):
        ResUNet(channels=(16, 32), num_heads=3, image_size=16)


# ------------------------------------------------------------------------- deep supervision
def test_deep_supervision_loss_is_the_weighted_mean():
    torch.manual_seed(0)
    heads = [torch.randn(2, 3, 6, 6) for _ in range(3)]
    target = torch.randint(0, 3, (2, 6, 6))
    weight = torch.rand(2, 6, 6) + 0.5

    def by_hand(logits):
        ce = -torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]
        return (weight * ce).sum() / weight.sum()

    w = (0.5, 0.3, 0.2)
    expected = sum(wk * by_hand(h) for wk, h in zip(w, heads, strict=True)) / sum(w)
    loss = DeepSupervisionLoss(WeightedCrossEntropy(), w)
    torch.testing.assert_close(loss(heads, target, weight), expected)
    equal = sum(by_hand(h) for h in heads) / 3
    torch.testing.assert_close(DeepSupervisionLoss(WeightedCrossEntropy())(heads, target, weight),
                               equal)
    torch.testing.assert_close(loss(heads[0], target, weight), by_hand(heads[0]))  # one tensor
    with pytest.raises(ValueError, match="3 deep-supervision weights for 2 heads"):
        loss(heads[:2], target, weight)


def test_ds_weights_are_checked_against_the_heads():
    with pytest.raises(ModelInputError, match="2 non-negative weights"):
        UNetPlusPlus(channels=WIDTHS, ds_weights=[1, 1, 1])
    with pytest.raises(ModelInputError, match="needs model.deep_supervision=true"):
        UNet3Plus(channels=WIDTHS, ds_weights=[1, 1, 1])
    assert UNet3Plus(channels=WIDTHS, deep_supervision=True, ds_weights=[2, 1, 1]).ds_weights == (
        2.0, 1.0, 1.0,
    )


def test_unetpp_heads_come_main_first():
    model = build("unetpp", norm=None)  # no norm: training and eval mode compute the same
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        train_outputs = model(x)
        top = model.top_nodes(x, 2)
    assert len(train_outputs) == 2
    torch.testing.assert_close(train_outputs[0], model.heads["2"](top[1]))
    torch.testing.assert_close(train_outputs[1], model.heads["1"](top[0]))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unetpp_pruned_inference_is_the_head_of_that_depth(depth):
    torch.manual_seed(0)
    model = UNetPlusPlus(1, 2, 2, (4, 8, 16, 32), norm="batch").eval()
    ran = set()
    for key, node in model.nodes.items():
        node.register_forward_hook(lambda m, a, out, key=key: ran.add(key))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        full = model.top_nodes(x, model.depth)  # the unpruned network
        ran.clear()
        model.prune_depth = depth
        pruned = model(x)
    torch.testing.assert_close(pruned, model.heads[str(depth)](full[depth - 1]))
    # L^d evaluates only the nodes X(i, j) with i + j <= d.
    assert ran == {f"x{i}_{j}" for i in range(depth) for j in range(1, depth - i + 1)}


def test_unetpp_pruning_needs_a_trained_head():
    with pytest.raises(ModelInputError, match="prune_depth=1 has no trained head"):
        UNetPlusPlus(channels=WIDTHS, deep_supervision=False, prune_depth=1)
    model = UNetPlusPlus(channels=WIDTHS, deep_supervision=False)
    assert list(model.heads) == ["2"]  # no unused parameters without deep supervision
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 2, 8, 8)


# --------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("num_heads", [1, 2])
def test_self_attention_against_softmax_qk_v(num_heads):
    torch.manual_seed(0)
    block = SelfAttention(8, spatial_dims=2, num_heads=num_heads)
    with torch.no_grad():  # proj starts at zero, which would hide the attention
        block.proj.weight.normal_()
        block.proj.bias.normal_()
        block.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 3, 5)

    gn = block.norm
    h = F.group_norm(x, gn.num_groups, gn.weight, gn.bias, gn.eps).flatten(2)  # (N, C, T)
    qkv = torch.einsum("oc,nct->not", block.qkv.weight[..., 0, 0], h)
    qkv = qkv + block.qkv.bias[:, None]
    q, k, v = qkv.chunk(3, dim=1)
    d = 8 // num_heads
    heads = []
    for i in range(num_heads):
        qi, ki, vi = (t[:, i * d : (i + 1) * d] for t in (q, k, v))  # (N, d, T)
        a = torch.softmax(qi.transpose(1, 2) @ ki / math.sqrt(d), dim=-1)  # (N, T, T)
        heads.append(vi @ a.transpose(1, 2))  # (N, d, T): sum_s a[t, s] v[:, s]
    attn = torch.cat(heads, dim=1)
    out = torch.einsum("oc,nct->not", block.proj.weight[..., 0, 0], attn)
    expected = x + (out + block.proj.bias[:, None]).reshape(x.shape)

    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)
        spelled, weights = block.attend(x, with_weights=True)
    torch.testing.assert_close(spelled, expected)
    assert weights.shape == (2, num_heads, 15, 15)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, num_heads, 15))


@pytest.mark.parametrize("spatial_dims, shape", [(2, (16, 16)), (3, (8, 8, 4))])
def test_resunet_attention_maps(spatial_dims, shape):
    model = build("resunet", spatial_dims).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        logits, maps = model.forward_with_attention(x)
        torch.testing.assert_close(logits, model(x))
    # Levels 1 and 2 (8 and 4 px for a 16 px patch): 2 encoder blocks each, the middle, then
    # 3 decoder blocks each, in network order.
    half = tuple(s // 2 for s in shape)
    quarter = tuple(s // 4 for s in shape)
    assert model.attention_levels == (1, 2)
    assert [m.shape[2:] for m in maps] == [half] * 2 + [quarter] * 6 + [half] * 3
    for m in maps:
        assert m.shape[:2] == (2, 1) and not m.requires_grad
        assert m.min() >= 0 and torch.allclose(m.flatten(1).amax(1), torch.ones(2))


# ---------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_few_steps_lower_the_loss(make_cfg, tmp_path, name):
    cfg = make_cfg(
        *TINY, f"model={name}", "data.patch_size=[48,48]", "optim.lr=3e-3", "scheduler=constant",
        "logging.tensorboard=false", "augment=none",
    )
    trainer = build_trainer(cfg, tmp_path)
    expects_ds = name in ("unetpp",)  # unet3plus's config has deep supervision off
    assert isinstance(trainer.criterion, DeepSupervisionLoss) == expects_ds
    batch = trainer.prepare(next(iter(trainer.loader())))
    losses = []
    for _ in range(12):
        loss, logits = trainer.train_step(batch)
        losses.append(loss.item())
        assert logits.shape == (2, 2, 48, 48)  # the main prediction, even with several heads
    assert losses[-1] < 0.8 * losses[0], losses


def test_trainer_passes_ds_weights(make_cfg, tmp_path):
    cfg = make_cfg(
        *TINY, "model=unet3plus", "model.deep_supervision=true", "model.ds_weights=[3,2,1]",
        "data.patch_size=[48,48]", "logging.tensorboard=false",
    )
    trainer = build_trainer(cfg, tmp_path)
    assert isinstance(trainer.criterion, DeepSupervisionLoss)
    assert trainer.criterion.weights == (3.0, 2.0, 1.0)


def test_resunet_attention_reaches_the_tensorboard_picture(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from segunet.train.trainer import run

    cfg = make_cfg(
        *TINY, "model=resunet", "data.patch_size=[48,48]", "trainer.max_steps=2",
        "trainer.val_every=2", "logging.image_every=2",
    )
    run(cfg, tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    # input, label, prediction, weight + the middle block's attention map = 5 panels
    image = acc.Images("train/sample")[0]
    assert 5 * image.height < image.width < 6 * image.height


# ------------------------------------------------------------------------------------ export
def save_checkpoint(folder, name: str):
    cls, defaults = VARIANTS[name]
    model_cfg = {"_target_": f"segunet.models.{cls.__name__}", "in_channels": 1, "out_channels": 3}
    model_cfg |= {"channels": list(WIDTHS)} | defaults
    torch.manual_seed(0)
    model = cls(**{k: v for k, v in model_cfg.items() if k != "_target_"})
    with torch.no_grad():  # the zero-initialised convs would make ResUNet's branches trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = folder / "checkpoints" / "last.pt"
    save_atomic({"model": model.state_dict(), "config": {"model": model_cfg}, "step": 1}, path)
    return path, model.eval()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_export_round_trip(tmp_path, name, fmt):
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    ckpt, model = save_checkpoint(tmp_path, name)
    # export_model itself checks the file against PyTorch at two sizes; check once more here.
    path = export_model(ckpt, fmt, input_shape=(16, 16))
    x = np.random.default_rng(0).normal(size=(2, 1, 24, 32)).astype(np.float32)
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": x})[0]
    else:
        with torch.no_grad(), torch.jit.optimized_execution(False):
            got = torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 3, 24, 32)
    np.testing.assert_allclose(got, expected, atol=1e-4)
