"""U-Net, 3D U-Net and Attention U-Net: shapes, parameter counts, errors and the gate maths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import n_params
from torch import nn

from segunet.errors import SegunetError
from segunet.models import AttentionGate, AttentionUNet, UNet
from segunet.models.blocks import DoubleConv, center_crop, he_init
from segunet.models.shapes import nearest_valid_sizes, output_size, valid_input_size

TINY = (4, 8, 16, 32, 64)  # shapes do not depend on widths, so tests use narrow nets


def convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]


@pytest.fixture(scope="module")
def paper_unet() -> UNet:
    return UNet()


# ---------------------------------------------------------------------------- the paper's net
def test_default_unet_has_the_papers_parameter_count(paper_unet):
    assert n_params(paper_unet) == 31_030_658


def test_paper_tile_572_gives_388(paper_unet):
    assert paper_unet.output_shape((572, 572)) == (388, 388)
    model = UNet(channels=TINY)
    with torch.no_grad():
        y = model(torch.randn(1, 1, 572, 572))
    assert y.shape == (1, 2, 388, 388)


def test_four_levels_valid_forward():
    model = UNet(channels=TINY[:4])
    assert model(torch.randn(2, 1, 188, 188)).shape == (2, 2, 100, 100)


def test_same_padding_keeps_size():
    model = UNet(in_channels=2, out_channels=3, channels=(4, 8, 16), padding="same")
    assert model(torch.randn(1, 2, 64, 48)).shape == (1, 3, 64, 48)
    assert model.output_shape((64, 48)) == (64, 48)
    with pytest.raises(ValueError, match="60 or 64"):
        model.output_shape((62, 64))


def test_dropout_closes_the_contracting_path():
    model = UNet(channels=TINY, dropout=0.5)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    assert isinstance(UNet(channels=TINY).dropout, nn.Identity)


def test_biases_only_without_norm():
    assert all(c.bias is not None for c in convs(UNet(channels=TINY)))
    normed = UNet(channels=TINY, norm="batch")
    assert all(c.bias is None for c in convs(normed.encoders) + convs(normed.decoders))


def test_he_init_std():
    conv = nn.Conv2d(64, 256, 3)
    he_init(conv)
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    up = nn.ConvTranspose2d(512, 256, 2, stride=2)  # each output sees 512 inputs
    he_init(up)
    assert up.weight.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.05)
    assert torch.all(up.bias == 0)


# ----------------------------------------------------------------------------- shape arithmetic
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("levels", [2, 3, 4, 5])
def test_nearest_valid_sizes_match_brute_force(levels, padding):
    sizes = range(1, 700)
    valid = [s for s in sizes if output_size(s, levels, padding) is not None]
    assert valid, "some size must fit"
    for s in range(1, 600):
        lower, upper = nearest_valid_sizes(s, levels, padding)
        assert upper == min(v for v in valid if v >= s)
        assert lower == max((v for v in valid if v <= s), default=None)
        assert valid_input_size(s, levels, padding) == upper


def test_valid_sizes_are_the_papers():
    assert nearest_valid_sizes(570, 5, "valid") == (556, 572)
    assert nearest_valid_sizes(572, 5, "valid") == (572, 572)
    assert nearest_valid_sizes(1, 5, "valid") == (None, 188)  # smallest: a 4x4 output
    assert output_size(188, 5, "valid") == 4
    assert nearest_valid_sizes(100, 4, "same") == (96, 104)


def test_valid_input_shape_is_valid_and_minimal(paper_unet):
    assert paper_unet.valid_input_shape((570, 572)) == (572, 572)
    for s in range(150, 400):
        v, _ = paper_unet.valid_input_shape((s, s))
        assert paper_unet.output_shape((v, v))  # valid: does not raise
        for smaller in range(s, v):
            with pytest.raises(ValueError):
                paper_unet.output_shape((smaller, v))


def test_center_crop_is_a_centred_view():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    y = center_crop(x, (2, 4))
    assert y.shape == (1, 1, 2, 4)
    assert torch.equal(y, x[..., 2:4, 1:5])
    assert y.data_ptr() == x[..., 2:, 1:].data_ptr()  # slicing, no copy
    with pytest.raises(ValueError, match="larger"):
        center_crop(x, (8, 4))


# ------------------------------------------------------------------------------------- errors
def test_wrong_size_names_both_nearest_sizes():
    model = UNet(channels=TINY)
    with pytest.raises(ValueError) as info:
        model(torch.randn(1, 1, 570, 570))
    assert str(info.value) == (
        "UNet (valid padding, 5 levels) cannot take spatial size (570, 570): "
        "nearest valid sizes per axis are 556 or 572"
    )
    assert isinstance(info.value, SegunetError)  # the CLI prints it without a traceback
    with pytest.raises(ValueError, match="556 or 572 on axis 0, 588 or 604 on axis 1"):
        model.output_shape((570, 600))
    with pytest.raises(ValueError, match=r"188 \(smallest\)"):
        model.output_shape((100, 572))


def test_wrong_channels_and_dims():
    model = UNet(channels=TINY)
    fix = "expects 1 input channels, got 3: set model.in_channels=3 or fix the data"
    with pytest.raises(ValueError, match=fix):
        model(torch.randn(1, 3, 572, 572))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, C, H, W\), got \(1, 572"):
        model(torch.randn(1, 572, 572))
    with pytest.raises(ValueError, match="takes 2 spatial sizes"):
        model.output_shape((572, 572, 572))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"padding": "full"}, "model.padding"),
        ({"norm": "layer"}, "model.norm"),
        ({"spatial_dims": 1}, "model.spatial_dims"),
        ({"channels": (64,)}, "two levels"),
        ({"dropout": 1.0}, "model.dropout"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


# ------------------------------------------------------------------------------------------ 3D
def test_3d_unet_shapes():
    kwargs = dict(in_channels=3, out_channels=3, spatial_dims=3, double_before_pool=True)
    paper = UNet(channels=(64, 128, 256, 512), norm="batch", **kwargs)
    assert paper.output_shape((116, 132, 132)) == (28, 44, 44)
    model = UNet(channels=(2, 4, 8, 16), norm="batch", **kwargs).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 116, 132, 132))
    assert y.shape == (1, 3, 28, 44, 44)


def test_double_before_pool_channel_layout():
    model = UNet(3, 3, 3, (64, 128, 256, 512), double_before_pool=True)

    def widths(block: DoubleConv) -> list[tuple[int, int]]:
        return [(c.in_channels, c.out_channels) for c in convs(block)]

    assert [widths(e) for e in model.encoders] == [
        [(3, 32), (32, 64)],
        [(64, 64), (64, 128)],
        [(128, 128), (128, 256)],
    ]
    assert widths(model.bottom) == [(256, 256), (256, 512)]
    assert [(u.in_channels, u.out_channels) for u in model.ups] == [
        (128, 128),
        (256, 256),
        (512, 512),
    ]
    assert [widths(d) for d in model.decoders] == [
        [(64 + 128, 64), (64, 64)],
        [(128 + 256, 128), (128, 128)],
        [(256 + 512, 256), (256, 256)],
    ]
    # Cicek et al. (2016) state 19,069,955 parameters; ours differs by the up-conv biases only.
    up_biases = sum(u.bias.numel() for u in model.ups)
    assert (up_biases, n_params(model) - up_biases) == (512 + 256 + 128, 19_069_955)


def test_plain_unet_channel_layout(paper_unet):
    model = paper_unet
    assert [(u.in_channels, u.out_channels) for u in model.ups][::-1] == [
        (1024, 512),
        (512, 256),
        (256, 128),
        (128, 64),
    ]
    assert convs(model.decoders[-1])[0].in_channels == 1024


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_norm_variants_build_and_run(norm, spatial_dims):
    model = UNet(1, 2, spatial_dims, (8, 12, 16), padding="same", norm=norm)
    y = model(torch.randn(2, 1, *(8,) * spatial_dims))
    assert y.shape == (2, 2, *(8,) * spatial_dims)
    kinds = {
        "batch": (nn.BatchNorm2d, nn.BatchNorm3d),
        "group": nn.GroupNorm,
        "instance": (nn.InstanceNorm2d, nn.InstanceNorm3d),
    }
    norms = [m for m in model.modules() if isinstance(m, kinds[norm])]
    assert len(norms) == 2 * (2 * 3 - 1)  # two per double conv, five double convs
    assert all(m.affine for m in norms)
    if norm == "group":
        groups = [m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)]
        assert groups[:4] == [8, 8, 1, 1]  # 8 | 8 channels, but not 8 | 12


# ---------------------------------------------------------------------------- Attention U-Net
def decoder_inputs(model: UNet) -> dict[int, torch.Size]:
    """Records the spatial shape each decoder receives, which is that of its (cropped) skip."""
    shapes = {}
    for i, decoder in enumerate(model.decoders):
        decoder.register_forward_pre_hook(lambda m, a, i=i: shapes.__setitem__(i, a[0].shape[2:]))
    return shapes


@pytest.mark.parametrize("spatial_dims, size", [(2, 188), (3, 44)])
def test_attention_maps_cover_each_skip(spatial_dims, size):
    channels = (2, 4, 8, 16)[: 6 - spatial_dims]
    model = AttentionUNet(1, 2, spatial_dims, channels)
    skips = decoder_inputs(model)
    x = torch.randn(2, 1, *(size,) * spatial_dims)
    logits, maps = model.forward_with_attention(x)
    assert logits.shape == UNet(1, 2, spatial_dims, channels)(x).shape
    assert [m.shape for m in maps] == [(2, 1, *skips[i]) for i in range(len(skips))]
    for m in maps:
        assert not m.requires_grad
        assert m.min() >= 0 and m.max() <= 1


def test_gates_see_the_coarser_level_before_upsampling():
    model = AttentionUNet(channels=TINY[:4])
    seen = {}
    for i, gate in enumerate(model.gates):
        gate.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a))
    bottom_out = {}
    model.bottom.register_forward_hook(lambda m, a, out: bottom_out.setdefault("y", out))
    with torch.no_grad():
        model(torch.randn(1, 1, 188, 188))
    assert torch.equal(seen[2][1], bottom_out["y"])  # deepest gate: the bottom's output
    for i in range(3):
        x, g = seen[i]
        assert g.shape[1] == TINY[i + 1]
        assert [2 * s for s in g.shape[2:]] == list(x.shape[2:])


def test_forward_stores_no_tensors():
    model = AttentionUNet(channels=(2, 4, 8), padding="same")
    before = set(vars(model))
    model(torch.randn(1, 1, 16, 16))
    assert set(vars(model)) == before
    assert not any(isinstance(v, torch.Tensor) for v in vars(model).values())


@pytest.mark.parametrize("g_size", [4, 3])  # 3: phi(g) is resampled to theta(x)'s grid
def test_attention_gate_against_hand_computation(g_size):
    torch.manual_seed(0)
    gate = AttentionGate(skip_channels=6, gate_channels=5, spatial_dims=2)
    x, g = torch.randn(2, 6, 8, 8), torch.randn(2, 5, g_size, g_size)
    wt, wp, ws = torch.randn(3, 6), torch.randn(3, 5), torch.randn(1, 3)  # 1x1 conv weights
    bp, bs = torch.randn(3), 0.3  # biases of phi and psi
    with torch.no_grad():
        gate.theta.weight.copy_(wt[..., None, None])
        gate.phi.weight.copy_(wp[..., None, None])
        gate.phi.bias.copy_(bp)
        gate.psi.weight.copy_(ws[..., None, None])
        gate.psi.bias.fill_(bs)

    theta_x = torch.einsum("oc,nchw->nohw", wt, x[..., ::2, ::2])  # 1x1 conv, stride 2
    phi_g = torch.einsum("oc,nchw->nohw", wp, g) + bp[:, None, None]
    if g_size != 4:
        phi_g = F.interpolate(phi_g, size=(4, 4), mode="bilinear", align_corners=False)
    q = torch.relu(theta_x + phi_g)
    alpha = torch.sigmoid(torch.einsum("oc,nchw->nohw", ws, q) + bs)
    alpha = F.interpolate(alpha, size=(8, 8), mode="bilinear", align_corners=False)

    out, got_alpha = gate(x, g)
    assert gate.theta.bias is None and gate.theta.out_channels == 3
    torch.testing.assert_close(got_alpha, alpha)
    torch.testing.assert_close(out, x * alpha)


def test_attention_unet_backward_and_size():
    model = AttentionUNet(channels=(4, 8, 16))
    logits = model(torch.randn(2, 1, 60, 60))
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(g.phi.weight.grad.abs().sum() > 0 for g in model.gates)
    assert n_params(model) > n_params(UNet(channels=(4, 8, 16)))
