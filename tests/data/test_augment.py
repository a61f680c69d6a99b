"""Batched torch augmentation: the paper's elastic field (Ronneberger et al. 2015, Sec. 3.1),
one composed resampling for image, label, weight and ignore, and gray-value changes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import config_error

from segunet.config.compose import instantiate_group
from segunet.data.augment import (
    AugmentConfig,
    Augmenter,
    affine_matrix,
    deform,
    elastic_displacement,
    gaussian_blur,
    interpolate_controls,
    photometric_albumentations,
    random_affine,
    random_intensity,
    spline_matrix,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = {"2d": (33, 41), "3d": (9, 17, 21)}
STILL = dict(elastic_sigma=0.0, rotate=0.0, scale=[1.0, 1.0], flip=False, rot90=False)


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def make_batch(shape, n=2, channels=2, seed=0, device="cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.rand(n, channels, *shape, generator=g),
        "label": torch.tensor([0, 3, 7, 12])[torch.randint(0, 4, (n, *shape), generator=g)],
        "weight": 1 + 9 * torch.rand(n, *shape, generator=g),
        "ignore": torch.rand(n, *shape, generator=g) < 0.2,
    }
    return {k: v.to(device) for k, v in batch.items()}


def coordinates(shape) -> torch.Tensor:
    """(D, *shape): channel i holds each pixel's index along axis i."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


# ---------------------------------------------------------------------- the resampling
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_identity(dims):
    shape = SHAPES[dims]
    batch = make_batch(shape)
    batch["name"] = ["a", "b"]
    out = Augmenter(AugmentConfig(**STILL, p_intensity=0.0), len(shape))(batch, gen(0))
    torch.testing.assert_close(out["image"], batch["image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["weight"], batch["weight"], atol=1e-5, rtol=0)
    assert torch.equal(out["label"], batch["label"]) and torch.equal(out["ignore"], batch["ignore"])
    assert out["name"] is batch["name"]
    same = deform(batch, torch.zeros(2, len(shape), *shape))
    assert torch.equal(same["label"], batch["label"])


@pytest.mark.parametrize("dims", ["2d", "3d"])
@pytest.mark.parametrize("with_matrix", [False, True])
def test_coordinate_image_pins_the_convention(dims, with_matrix):
    """The output pixel p reads the input at c + A (p - c) + u(p): bilinear interpolation of
    the coordinate maps is exact, so axis order, normalisation and align_corners are pinned."""
    shape = SHAPES[dims]
    d, n = len(shape), 2
    coords = coordinates(shape)
    u = elastic_displacement(n, shape, grid=3, sigma=2.0, generator=gen(1))
    matrix = None
    if with_matrix:
        angle, zoom = torch.tensor([12.0, -7.0]), torch.tensor([1.08, 0.93])
        flips = torch.tensor([[True] + [False] * (d - 1), [False] * (d - 1) + [True]])
        matrix = affine_matrix(angle, zoom, flips, torch.tensor([0, 2]), d)
    out = deform({"image": coords.expand(n, -1, *shape).clone()}, u, matrix)["image"]

    c = torch.tensor([(s - 1) / 2 for s in shape]).view(1, d, *[1] * d)
    a = torch.eye(d).expand(n, d, d) if matrix is None else matrix
    expected = c + torch.einsum("nij,j...->ni...", a, coords - c[0]) + u
    upper = torch.tensor(shape).view(1, d, *[1] * d) - 1
    inside = ((expected >= 0) & (expected <= upper)).all(1, keepdim=True).expand_as(out)
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(out[inside], expected[inside], atol=1e-4, rtol=0)


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_integer_translation_moves_labels_exactly(dims):
    shape = SHAPES[dims]
    d = len(shape)
    batch = make_batch(shape, n=1)
    shift = [3, -2, 5][:d]
    u = torch.tensor(shift, dtype=torch.float32).view(1, d, *[1] * d).expand(1, d, *shape)
    out = deform(batch, u.contiguous())
    # Output p reads input p + shift: compare where p + shift stays inside.
    dst = tuple(slice(max(-t, 0), n - max(t, 0)) for t, n in zip(shift, shape))
    src = tuple(slice(max(t, 0), n + min(t, 0)) for t, n in zip(shift, shape))
    for key in ("label", "ignore"):
        assert torch.equal(out[key][(0, *dst)], batch[key][(0, *src)]), key
    torch.testing.assert_close(out["weight"][(0, *dst)], batch["weight"][(0, *src)])
    torch.testing.assert_close(
        out["image"][(0, slice(None), *dst)], batch["image"][(0, slice(None), *src)]
    )


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_flips_and_quarter_turns_match_torch(dims):
    shape = {"2d": (24, 24), "3d": (6, 16, 16)}[dims]
    d = len(shape)
    batch = make_batch(shape, n=1)
    for flips in itertools.product([False, True], repeat=d):
        for k in range(4):
            matrix = affine_matrix(
                torch.zeros(1), torch.ones(1), torch.tensor([flips]), torch.tensor([k]), d
            )
            out = deform(batch, None, matrix)
            axes = [1 + ax for ax, f in enumerate(flips) if f]
            # Reading at c + F T^k (p - c) flips the patch, then turns it.
            want = torch.flip(batch["label"], axes) if axes else batch["label"]
            want = torch.rot90(want, k, dims=(-2, -1))
            assert torch.equal(out["label"], want), (flips, k)
            img = torch.flip(batch["image"], [a + 1 for a in axes]) if axes else batch["image"]
            img = torch.rot90(img, k, dims=(-2, -1))
            torch.testing.assert_close(out["image"], img, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_random_augmentation_keeps_targets_valid(dims):
    shape = SHAPES[dims]
    batch = make_batch(shape, n=4)
    cfg = AugmentConfig(elastic_sigma=4.0, p_elastic=1.0, p_intensity=1.0, rotate=30.0)
    out = Augmenter(cfg, len(shape))(batch, gen(3))
    for key, value in batch.items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype, key
    assert set(out["label"].unique().tolist()) <= {0, 3, 7, 12}
    assert out["weight"].min() >= 0
    assert not torch.equal(out["label"], batch["label"])


def test_missing_targets_and_shape_errors():
    shape = SHAPES["2d"]
    batch = make_batch(shape)
    aug = Augmenter(AugmentConfig(), 2)
    only = aug({"image": batch["image"], "label": batch["label"]}, gen(0))
    assert set(only) == {"image", "label"}
    assert set(aug({"image": batch["image"]}, gen(0))) == {"image"}
    with pytest.raises(ValueError, match="same size"):
        deform({"image": batch["image"], "label": batch["label"][:, 1:]})
    with pytest.raises(ValueError, match="spatial_dims=3"):
        Augmenter(AugmentConfig(), 3)(batch, gen(0))


# ------------------------------------------------------------------------ the field
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_displacement_shape_and_zero_sigma(dims):
    shape = SHAPES[dims]
    u = elastic_displacement(3, shape, grid=4, sigma=5.0, generator=gen(0))
    assert u.shape == (3, len(shape), *shape) and u.dtype == torch.float32
    zero = elastic_displacement(3, shape, sigma=0.0, generator=gen(0))
    assert torch.equal(zero, torch.zeros_like(zero))


def test_displacement_statistics():
    """Control points (pixels 0, 4, 8 of 9) carry i.i.d. Normal(0, sigma) vectors."""
    sigma = 10.0
    u = elastic_displacement(2000, (9, 9), grid=3, sigma=sigma, generator=gen(5))
    controls = u[..., ::4, ::4]
    assert abs(controls.mean().item()) < 0.05 * sigma
    assert controls.std().item() == pytest.approx(sigma, rel=0.03)
    cov = torch.corrcoef(controls.reshape(2000, -1).T)
    assert (cov - torch.eye(cov.shape[0])).abs().max() < 0.1  # independent


def test_displacement_is_smooth():
    sigma = 10.0
    u = elastic_displacement(16, (129, 129), grid=3, sigma=sigma, generator=gen(6))
    assert u.std() > 0.5 * sigma  # not trivially small
    for axis in (-1, -2):
        d2 = u.diff(n=2, dim=axis).abs().max()
        assert d2 < 0.01 * sigma  # a natural spline over 64-px spacings bends gently


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_interpolation_reproduces_controls_and_constants(dims):
    shape = {"2d": (17, 25), "3d": (9, 13, 17)}[dims]
    d = len(shape)
    controls = torch.randn(2, d, *[5] * d, generator=gen(7))
    dense = interpolate_controls(controls, shape)
    at_controls = dense[(..., *[slice(None, None, (n - 1) // 4) for n in shape])]
    torch.testing.assert_close(at_controls, controls, atol=1e-5, rtol=0)
    const = interpolate_controls(torch.full((1, d, *[3] * d), 2.5), shape)
    torch.testing.assert_close(const, torch.full((1, d, *shape), 2.5), atol=1e-5, rtol=0)
    ramp = spline_matrix(21, 3, dtype=torch.float64) @ torch.tensor([0.0, 10.0, 20.0]).double()
    torch.testing.assert_close(ramp, torch.arange(21).double())  # linear fields stay linear


# ------------------------------------------------------------------- randomness, device
def test_deterministic_given_generator():
    shape = SHAPES["2d"]
    batch = make_batch(shape, n=3)
    aug = Augmenter(AugmentConfig(p_intensity=1.0), 2)
    a, b, c = aug(batch, gen(11)), aug(batch, gen(11)), aug(batch, gen(12))
    for key in batch:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["image"], c["image"])
    assert not torch.equal(random_affine(3, shape, gen(1)), random_affine(3, shape, gen(2)))


def test_quarter_turns_only_in_square_planes():
    turns = [random_affine(64, (20, 30), gen(0), rotate=0, scale=(1, 1), flip=False)]
    turns.append(random_affine(64, (8, 20, 30), gen(0), rotate=0, scale=(1, 1), flip=False))
    for matrix in turns:
        assert torch.equal(matrix, torch.eye(matrix.shape[-1]).expand_as(matrix))
    square = random_affine(64, (8, 20, 20), gen(0), rotate=0, scale=(1, 1), flip=False)
    assert square[:, 0, 0].eq(1).all() and square[:, -1, -2].ne(0).any()


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_the_batch_device(device):
    shape = SHAPES["3d"]
    batch = make_batch(shape, device=device)
    out = Augmenter(AugmentConfig(p_intensity=1.0), 3)(batch, gen(0, device))
    assert all(v.device.type == device for v in out.values())


# ------------------------------------------------------------------------- intensity
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_intensity_touches_only_the_image(dims):
    shape = SHAPES[dims]
    batch = make_batch(shape)
    still = Augmenter(AugmentConfig(p_intensity=0.0), len(shape))(batch, gen(4))
    moved = Augmenter(AugmentConfig(p_intensity=1.0), len(shape))(batch, gen(4))
    for key in ("label", "weight", "ignore"):
        assert torch.equal(still[key], moved[key]), key
    assert moved["image"].shape == batch["image"].shape
    assert moved["image"].dtype == torch.float32
    assert not torch.allclose(moved["image"], still["image"])
    off = random_intensity(batch["image"], gen(0), p=0.0)
    assert torch.equal(off, batch["image"])  # transforms not applied are exact identities


def test_inversion_flips_whole_samples_exactly():
    """``p_invert``: each sample is x or 1 - x, nothing in between; at 0 (the default) no
    number is drawn for it, so every other config keeps its random stream."""
    batch = make_batch(SHAPES["2d"], n=64)
    out = Augmenter(AugmentConfig(**STILL, p_intensity=0.0, p_invert=0.5), 2)(batch, gen(5))
    same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out["image"], batch["image"])]
    flipped = [torch.allclose(o, 1 - i, atol=1e-5) for o, i in zip(out["image"], batch["image"])]
    assert all(a != b for a, b in zip(same, flipped))
    assert 16 < sum(flipped) < 48
    plain = Augmenter(AugmentConfig(p_intensity=1.0), 2)(batch, gen(6))
    off = Augmenter(AugmentConfig(p_intensity=1.0, p_invert=0.0), 2)(batch, gen(6))
    assert torch.equal(plain["image"], off["image"])
    on = Augmenter(AugmentConfig(p_intensity=1.0, p_invert=1e-9), 2)(batch, gen(6))
    assert not torch.equal(plain["image"], on["image"])  # the draw moves the stream on


def test_gaussian_blur():
    image = torch.zeros(2, 1, 15, 15)
    image[:, :, 7, 7] = 1
    out = gaussian_blur(image, torch.tensor([0.0, 1.0]), radius=3)
    assert torch.equal(out[0], image[0])
    torch.testing.assert_close(out[1].sum(), torch.tensor(1.0))
    x = torch.arange(-3, 4.0)
    g1 = torch.exp(-(x**2) / 2)
    torch.testing.assert_close(out[1, 0, 4:11, 4:11], torch.outer(g1, g1) / g1.sum() ** 2)


def test_photometric_albumentations():
    image = np.random.default_rng(0).random((2, 32, 40), dtype=np.float32)
    out = photometric_albumentations(image, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.float32
    again = photometric_albumentations(image, np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)


def test_config_yamls_survive_hydra(make_cfg):
    cfg = instantiate_group(make_cfg("augment=default"), "augment")
    assert isinstance(cfg, AugmentConfig) and cfg.enabled
    assert cfg == AugmentConfig()
    for key in ("scale", "gamma", "contrast", "blur_sigma"):
        assert type(getattr(cfg, key)) is list
    none = instantiate_group(make_cfg("augment=none"), "augment")
    assert not none.enabled
    batch = make_batch(SHAPES["2d"])
    out = Augmenter(none, 2)(batch, gen(0))
    assert all(out[k] is batch[k] for k in batch)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("device=gpu0", "device='gpu0' is not valid: expected one of auto, cuda, cpu"),
        ("p_elastic=1.5", "p_elastic=1.5 is not valid: a probability in [0, 1]"),
        ("scale=[1.1,0.9]", "scale=[1.1, 0.9] is not valid: expected a list [low, high]"),
        ("gamma=0.7", "gamma=0.7 is not valid: expected a list of float"),
        ("elastic_grid=1", "elastic_grid=1 is not valid: at least 2 control points"),
        ("rotate=lots", "rotate='lots' is not valid: expected float"),
        ("flip=maybe", "flip='maybe' is not valid: expected true or false"),
    ],
)
def test_config_errors_name_the_key(make_cfg, override, expected):
    assert config_error(make_cfg, "augment", f"augment.{override}").startswith(
        f"augment.{expected}")


def test_cpu_worker_path_uses_albumentations_for_2d_gray_values(monkeypatch):
    from segunet.data import augment as aug

    calls = []
    real = aug.photometric_albumentations

    def spy(image, rng, cfg=None):
        calls.append(image.shape)
        return real(image, rng, cfg)

    monkeypatch.setattr(aug, "photometric_albumentations", spy)
    cfg = aug.AugmentConfig(device="cpu", p_intensity=1.0)
    image = torch.rand(2, 1, 32, 32)
    out = aug.Augmenter(cfg, 2).intensity(image, torch.Generator().manual_seed(0))
    assert calls == [(1, 32, 32), (1, 32, 32)]
    assert out.shape == image.shape and out.dtype == image.dtype
    assert not torch.equal(out, image)
