"""Augmentations that keep image, label, weight and ignore mask in register.

One random draw per sample is applied to every array of the sample dict, so the targets can
never drift from the image (the weak spot of pipelines that sync transforms by seed).

The geometric part follows Ronneberger et al. (2015), Sec. 3.1: "smooth deformations using
random displacement vectors on a coarse 3 by 3 grid. The displacements are sampled from a
Gaussian distribution with 10 pixels standard deviation. Per-pixel displacements are then
computed using bicubic interpolation." Flips, quarter turns, a small rotation and a zoom join
the elastic field in ONE sampling grid, so every array is resampled exactly once
(:func:`deform`). Everything is batched torch: the same code augments a whole batch on the GPU
after transfer, or a batch of one in a CPU DataLoader worker (:class:`Augmenter`).

Coordinates: a pixel ``p = (p_0, ..., p_{D-1})`` is indexed in array-axis order, pixel centres
at integers. The output pixel ``p`` reads the input at

    q(p) = c + A (p - c) + u(p),

``c = (n - 1) / 2`` the patch centre, ``A`` the (D, D) affine matrix (:func:`affine_matrix`)
and ``u`` the displacement field in pixels (:func:`elastic_displacement`). Beyond the patch the
input is mirrored about its edge pixels, like ``np.pad(mode="reflect")`` and the paper's
overlap-tile mirroring.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segunet.config.schema import NonNegative, Positive, Range, check_ranges

GRID_WORDS = "is not valid: at least 2 control points per axis"
Probability = Annotated[float, Range(ge=0, le=1, words="is not valid: a probability in [0, 1]")]

SPATIAL_KEYS = ("image", "label", "weight", "ignore")


def spline_matrix(
    n: int, grid: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(n, grid) matrix ``W`` with ``dense = W @ controls``: the natural cubic spline through
    ``grid`` control values at pixels ``k (n - 1) / (grid - 1)``, i.e. the first and last
    control points lie on the first and last pixel centres of the patch.

    The spline interpolates (``W`` holds unit rows at control pixels), reproduces constant and
    linear fields exactly, and is C2-smooth; its second derivatives ``M`` vanish at the ends
    and solve ``M[k-1] + 4 M[k] + M[k+1] = 6 (y[k-1] - 2 y[k] + y[k+1])`` (unit spacing)
    inside. Built once per size in float64; cached per device (treat as read-only).
    """
    if grid < 2:
        raise ValueError(f"an elastic grid needs at least 2 control points per axis, got {grid}")
    m = grid
    # Position in control spacings; multiply before dividing so control pixels land exactly.
    t = torch.arange(n, dtype=torch.float64) * (m - 1) / max(n - 1, 1)
    i = t.floor().clamp(max=m - 2).long()
    u = t - i
    second = torch.zeros(m, m, dtype=torch.float64)  # M = second @ y
    if m > 2:
        inner = m - 2
        tri = 4 * torch.eye(inner, dtype=torch.float64)
        tri += torch.diag(torch.ones(inner - 1, dtype=torch.float64), 1)
        tri += torch.diag(torch.ones(inner - 1, dtype=torch.float64), -1)
        diff2 = torch.zeros(inner, m, dtype=torch.float64)
        rows = torch.arange(inner)
        diff2[rows, rows], diff2[rows, rows + 1], diff2[rows, rows + 2] = 1.0, -2.0, 1.0
        second[1:-1] = torch.linalg.solve(tri, 6 * diff2)
    weights = torch.zeros(n, m, dtype=torch.float64)
    rows = torch.arange(n)
    weights[rows, i] = 1 - u
    weights[rows, i + 1] = u
    weights += (((1 - u) ** 3 - (1 - u)) / 6)[:, None] * second[i]
    weights += ((u**3 - u) / 6)[:, None] * second[i + 1]
    return weights.to(device=device, dtype=dtype)


def interpolate_controls(controls: Tensor, shape: Sequence[int]) -> Tensor:
    """Dense ``(..., *shape)`` values of control values ``(..., g_0, ..., g_{D-1})``, by the
    cubic spline of :func:`spline_matrix` applied separably, one matrix product per axis.

    One code path for 2D and 3D (torch has no tricubic ``interpolate``). Axes are done last to
    first, so every step is a single batched matmul on a contiguous tensor.
    """
    shape = tuple(int(n) for n in shape)
    lead = controls.ndim - len(shape)
    x = controls
    for axis in reversed(range(len(shape))):
        g = x.shape[lead + axis]
        w = spline_matrix(shape[axis], g, x.device, x.dtype)
        rest = x.shape[lead + axis + 1 :]
        x = (w @ x.reshape(-1, g, math.prod(rest))).reshape(*x.shape[: lead + axis], -1, *rest)
    return x


def elastic_displacement(
    batch_size: int,
    shape: Sequence[int],
    grid: int = 3,
    sigma: float = 10.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random smooth displacement fields ``(N, D, *shape)`` in pixels, ``D = len(shape)``.

    The paper's elastic deformation (Ronneberger et al. 2015, Sec. 3.1): i.i.d.
    ``Normal(0, sigma)`` displacement vectors on a coarse grid of ``grid`` control points per
    axis spanning the patch (the outer ones on its corner pixels), interpolated to every
    pixel by a separable cubic spline (:func:`interpolate_controls`). ``sigma=0`` gives an
    exactly zero field. Draws come from ``generator`` on its device unless ``device`` is set.
    """
    shape = tuple(int(n) for n in shape)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    size = (batch_size, len(shape)) + (grid,) * len(shape)
    controls = torch.randn(size, generator=generator, device=device) * sigma
    return interpolate_controls(controls, shape)


# ------------------------------------------------------------------------------ affine
def affine_matrix(
    angle: Tensor, zoom: Tensor, flips: Tensor, quarter_turns: Tensor, spatial_dims: int
) -> Tensor:
    """(N, D, D) matrices ``A = F T^k R(angle) / zoom`` mapping output to input coordinates
    about the patch centre (see the module docstring).

    ``angle`` (N,) degrees and ``quarter_turns`` (N,) integers rotate in the plane of the last
    two axes (the image plane, also for volumes); ``zoom`` (N,) > 1 magnifies; ``flips``
    (N, D) bool mirrors each axis. Quarter turns are built from integers, not from
    ``cos(pi / 2)``, so ``k`` turns equal ``torch.rot90(x, k, dims=(-2, -1))`` exactly.
    """
    n, d = angle.shape[0], spatial_dims
    kw = {"device": angle.device, "dtype": torch.float32}
    rad = torch.deg2rad(angle.to(**kw))
    cos, sin = rad.cos(), rad.sin()
    rot = torch.eye(d, **kw).repeat(n, 1, 1)
    rot[:, -2, -2], rot[:, -2, -1], rot[:, -1, -2], rot[:, -1, -1] = cos, -sin, sin, cos
    k = quarter_turns.long() % 4
    # cos and sin of k quarter turns; no host tensors (a copy to the GPU would sync it).
    c90 = (k == 0).to(**kw) - (k == 2).to(**kw)
    s90 = (k == 1).to(**kw) - (k == 3).to(**kw)
    turn = torch.eye(d, **kw).repeat(n, 1, 1)
    turn[:, -2, -2], turn[:, -2, -1], turn[:, -1, -2], turn[:, -1, -1] = c90, s90, -s90, c90
    sign = 1.0 - 2.0 * flips.to(**kw)  # F = diag(sign) scales the rows
    return sign[:, :, None] * (turn @ rot) / zoom.to(**kw)[:, None, None]


def random_affine(
    batch_size: int,
    shape: Sequence[int],
    generator: torch.Generator,
    rotate: float = 15.0,
    scale: Sequence[float] = (0.9, 1.1),
    flip: bool = True,
    rot90: bool = True,
) -> Tensor:
    """(N, D, D) random :func:`affine_matrix`: rotation uniform in ``+-rotate`` degrees,
    isotropic zoom uniform in ``scale``, each axis flipped with probability 1/2, and a uniform
    number of quarter turns when ``rot90`` and the last two sizes are equal (a quarter turn
    of a non-square plane would not fit the patch)."""
    d = len(shape)
    r = torch.rand(batch_size, 3 + d, generator=generator, device=generator.device)
    angle = (2 * r[:, 0] - 1) * rotate
    zoom = scale[0] + (scale[1] - scale[0]) * r[:, 1]
    turns = (4 * r[:, 2]).long().clamp(max=3)
    if not (rot90 and shape[-1] == shape[-2]):
        turns = torch.zeros_like(turns)
    flips = (r[:, 3:] < 0.5) & flip
    return affine_matrix(angle, zoom, flips, turns, d)


# -------------------------------------------------------------------------- resampling
def sampling_grid(
    shape: Sequence[int],
    displacement: Tensor | None = None,
    matrix: Tensor | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> Tensor:
    """The ``grid_sample`` grid ``(N, *shape, D)`` (``align_corners=True``) that reads the
    input at ``q(p) = c + A (p - c) + u(p)`` for every output pixel ``p``.

    With ``align_corners=True`` pixel ``i`` of an axis of ``n`` is at ``-1 + 2 i / (n - 1)``,
    so the centre ``c`` is at 0 and the grid is ``s (A (p - c) + u)``, ``s = 2 / (n - 1)`` per
    axis. Its last dimension is in grid_sample's order ``(x, y[, z])``: array axes reversed.
    """
    shape = tuple(int(n) for n in shape)
    d = len(shape)
    if displacement is not None:
        batch_size, device = displacement.shape[0], displacement.device
    elif matrix is not None:
        batch_size, device = matrix.shape[0], matrix.device
    kw = {"device": device, "dtype": torch.float32}
    s = [2.0 / max(n - 1, 1) for n in shape]
    a = torch.eye(d, **kw).expand(batch_size, d, d) if matrix is None else matrix.to(**kw)
    # Built channel-first, (N, D, *S), where every op runs on contiguous memory; the affine
    # part is a sum of per-axis outer terms. grid_sample reads the permuted view as it is.
    grid = torch.empty(batch_size, d, *shape, **kw)
    for j in range(d):
        i = d - 1 - j  # grid component j is array axis i
        if displacement is None:
            grid[:, j] = 0
        else:
            torch.mul(displacement[:, i], s[i], out=grid[:, j])
        for k, n in enumerate(shape):
            view = [batch_size] + [1] * d
            view[1 + k] = n
            centred = torch.arange(n, **kw) - (n - 1) / 2
            grid[:, j] += (a[:, i, k, None] * s[i] * centred).view(view)
    return grid.movedim(1, -1)


def deform(
    batch: dict[str, Tensor], displacement: Tensor | None = None, matrix: Tensor | None = None
) -> dict[str, Tensor]:
    """Resample every array of ``batch`` once at ``q(p) = c + A (p - c) + u(p)``.

    ``batch``: ``image`` (N, C, *S) float, ``label`` (N, *S) integer, ``weight`` (N, *S) float,
    ``ignore`` (N, *S) bool, any of them missing; other keys pass through. ``displacement``
    (N, D, *S) in pixels, ``matrix`` (N, D, D) (None: identity). Image and weight are
    interpolated (bi/trilinear, one ``grid_sample``), label and ignore take the nearest pixel
    (one ``grid_sample``), so no new label values appear; beyond the patch the input mirrors.
    Dtypes and devices are kept.
    """
    present = [k for k in SPATIAL_KEYS if k in batch]
    if not present:
        return dict(batch)
    ref = batch["image"][:, 0] if "image" in batch else batch[present[0]]
    n, shape = ref.shape[0], tuple(ref.shape[1:])
    for key in present:
        got = tuple(batch[key].shape[2:] if key == "image" else batch[key].shape[1:])
        if got != shape:
            raise ValueError(
                f"deform needs every array at the same size (the network input): "
                f"{key} is {list(got)}, expected {list(shape)}"
            )
    if displacement is not None and tuple(displacement.shape) != (n, len(shape), *shape):
        raise ValueError(
            f"displacement is {list(displacement.shape)}, expected {[n, len(shape), *shape]}"
        )
    grid = sampling_grid(shape, displacement, matrix, n, ref.device)
    out = dict(batch)

    def resample(keys: list[str], mode: str) -> None:
        parts = [batch[k].float() if k == "image" else batch[k][:, None].float() for k in keys]
        stacked = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        warped = F.grid_sample(
            stacked, grid, mode=mode, padding_mode="reflection", align_corners=True
        )
        start = 0
        for key, part in zip(keys, parts):
            piece = warped[:, start : start + part.shape[1]]
            start += part.shape[1]
            piece = piece if key == "image" else piece[:, 0]
            dtype = batch[key].dtype
            out[key] = piece > 0.5 if dtype == torch.bool else piece.to(dtype)

    # "bilinear" is trilinear on volumes.
    if smooth := [k for k in ("image", "weight") if k in batch]:
        resample(smooth, "bilinear")
    if discrete := [k for k in ("label", "ignore") if k in batch]:
        resample(discrete, "nearest")
    return out


# --------------------------------------------------------------------------- intensity
def adjust_gamma(image: Tensor, gamma: Tensor) -> Tensor:
    """``x -> lo + (hi - lo) ((x - lo) / (hi - lo)) ** gamma`` per sample, ``lo``/``hi`` the
    sample's min/max (gamma needs values in [0, 1]); samples with ``gamma == 1`` are kept
    bit-exact."""
    view = (-1,) + (1,) * (image.ndim - 1)
    flat = image.flatten(1)
    lo, hi = flat.amin(1).view(view), flat.amax(1).view(view)
    span = (hi - lo).clamp_min(1e-12)
    out = lo + span * ((image - lo) / span).clamp(0, 1) ** gamma.view(view)
    return torch.where(gamma.view(view) == 1, image, out)


def brightness_contrast(image: Tensor, brightness: Tensor, contrast: Tensor) -> Tensor:
    """``x -> mean + contrast (x - mean) + brightness`` per sample, ``mean`` per channel;
    written as ``x c + (b + mean (1 - c))``, exact for ``c = 1, b = 0``."""
    view = (-1,) + (1,) * (image.ndim - 1)
    mean = image.mean(tuple(range(2, image.ndim)), keepdim=True)
    c = contrast.view(view)
    return image * c + (brightness.view(view) + mean * (1 - c))


def gaussian_blur(image: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Per-sample Gaussian blur of ``image`` (N, C, *S) with ``sigma`` (N,) pixels, separable
    (one grouped conv per axis, 2D or 3D), kernels of ``2 radius + 1`` taps, mirrored edges.
    ``sigma = 0`` is the identity (a unit impulse kernel)."""
    n, c, *spatial = image.shape
    d = len(spatial)
    t = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma.to(image.dtype).clamp_min(1e-6)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, K)
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    x = image.reshape(1, n * c, *spatial)
    for axis in range(d):
        pad = [0] * (2 * d)
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = radius
        mode = "reflect" if spatial[axis] > radius else "replicate"
        view = [n * c, 1] + [1] * d
        view[2 + axis] = 2 * radius + 1
        x = conv(F.pad(x, pad, mode=mode), kernel.view(view), groups=n * c)
    return x.reshape(image.shape)


def random_intensity(
    image: Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    gamma: Sequence[float] = (0.7, 1.5),
    brightness: float = 0.1,
    contrast: Sequence[float] = (0.8, 1.2),
    noise_std: float = 0.05,
    blur_sigma: Sequence[float] = (0.0, 1.0),
) -> Tensor:
    """Gray-value augmentation of a batch of images (N, C, *S), each transform applied to each
    sample with probability ``p``: gamma in ``gamma`` (on the min-max rescaled image),
    brightness ``+-brightness`` with contrast in ``contrast``, Gaussian blur of sigma in
    ``blur_sigma`` pixels, then Gaussian noise of std up to ``noise_std`` (the camera adds
    noise after the optics blur). Parameters are uniform; a transform not applied gets its
    identity value, so every call draws the same random numbers."""
    n, dev = image.shape[0], generator.device

    def lerp(bounds: Sequence[float], r: Tensor) -> Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * r

    r = torch.rand(n, 9, generator=generator, device=dev).to(image.device)
    on = r[:, :4] < p
    one, zero = torch.ones_like(r[:, 0]), torch.zeros_like(r[:, 0])
    # Off transforms are exact identities, so skipping them changes nothing; only on the CPU,
    # where asking costs no device sync (and a batch of one in a worker skips half of them).
    cpu = image.device.type == "cpu"
    x = image.float()
    if not cpu or on[:, 0].any():
        x = adjust_gamma(x, torch.where(on[:, 0], lerp(gamma, r[:, 4]), one))
    if not cpu or on[:, 1].any():
        b = torch.where(on[:, 1], brightness * (2 * r[:, 5] - 1), zero)
        x = brightness_contrast(x, b, torch.where(on[:, 1], lerp(contrast, r[:, 6]), one))
    if blur_sigma[1] > 0 and (not cpu or on[:, 2].any()):
        sigma = torch.where(on[:, 2], lerp(blur_sigma, r[:, 7]), zero)
        x = gaussian_blur(x, sigma, max(1, math.ceil(3 * blur_sigma[1])))
    if noise_std > 0 and (not cpu or on[:, 3].any()):
        std = torch.where(on[:, 3], noise_std * r[:, 8], zero).view((-1,) + (1,) * (x.ndim - 1))
        x = x + std * torch.randn(x.shape, generator=generator, device=dev).to(x.device)
    return x.to(image.dtype)


@functools.lru_cache(maxsize=8)
def _albumentations_pipeline(
    gamma: tuple[float, float],
    brightness: float,
    contrast: tuple[float, float],
    noise_std: float,
    blur_sigma: tuple[float, float],
    p: float,
):
    # albumentations looks up its latest version online on import; on offline clusters that
    # only costs a timeout. The user can still opt in by setting the variable to 0.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A.Compose([
        A.RandomGamma(gamma_limit=(100 * gamma[0], 100 * gamma[1]), p=p),
        A.RandomBrightnessContrast(
            brightness_limit=brightness, contrast_limit=(contrast[0] - 1, contrast[1] - 1), p=p
        ),
        A.GaussNoise(std_range=(0.0, noise_std), p=p),
        A.GaussianBlur(sigma_limit=(max(blur_sigma[0], 1e-3), max(blur_sigma[1], 1e-3)), p=p),
    ])


def photometric_albumentations(
    image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig | None = None
) -> np.ndarray:
    """The gray-value augmentations with albumentations, for one 2D float32 image (C, H, W) on
    the CPU (the training path uses :func:`random_intensity`). The image is min-max rescaled
    to [0, 1] around the pipeline, as albumentations expects of float images."""
    cfg = cfg or AugmentConfig()
    pipeline = _albumentations_pipeline(
        tuple(cfg.gamma), cfg.brightness, tuple(cfg.contrast), cfg.noise_std,
        tuple(cfg.blur_sigma), cfg.p_intensity,
    )
    pipeline.set_random_seed(int(rng.integers(2**31)))
    lo, hi = float(image.min()), float(image.max())
    span = max(hi - lo, 1e-12)
    hwc = np.ascontiguousarray(((image - lo) / span).transpose(1, 2, 0), dtype=np.float32)
    out = pipeline(image=hwc)["image"].reshape(hwc.shape).transpose(2, 0, 1)
    return np.ascontiguousarray(out * span + lo, dtype=np.float32)


# ------------------------------------------------------------------------ config + app
@dataclass
class AugmentConfig:
    """The ``augment`` config group. ``device``: ``auto`` augments whole batches on the
    training device after transfer (``cuda`` insists that it is a GPU), ``cpu`` a batch of
    one in each DataLoader worker, where 2D gray-value changes use albumentations."""

    enabled: bool = True
    device: Literal["auto", "cuda", "cpu"] = "auto"
    elastic_sigma: NonNegative = 10.0  # px, std of the control displacements (paper: 10)
    # control points per axis (paper: 3 x 3)
    elastic_grid: Annotated[int, Range(ge=2, words=GRID_WORDS)] = 3
    p_elastic: Probability = 1.0
    rotate: NonNegative = 15.0  # degrees, in the image plane
    scale: list[Positive] = field(default_factory=lambda: [0.9, 1.1])
    flip: bool = True
    rot90: bool = True  # in the image plane, when it is square
    p_intensity: Probability = 0.5  # per intensity transform and sample
    gamma: list[Positive] = field(default_factory=lambda: [0.7, 1.5])
    brightness: NonNegative = 0.1
    contrast: list[NonNegative] = field(default_factory=lambda: [0.8, 1.2])
    noise_std: NonNegative = 0.05
    blur_sigma: list[NonNegative] = field(default_factory=lambda: [0.0, 1.0])
    # per sample: x -> 1 - x, bright objects on dark and dark on bright (mixed modalities)
    p_invert: Probability = 0.0

    def __post_init__(self) -> None:
        # Types and allowed values are the config layer's (segunet.config.schema), and so are the
        # ranges of each number; the order of a [low, high] pair is here.
        from segunet.errors import SegunetError

        check_ranges(self, "augment")
        for key in ("scale", "gamma", "contrast", "blur_sigma"):
            pair = getattr(self, key)
            if len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
                raise SegunetError(
                    f"augment.{key}={pair!r} is not valid: expected a list [low, high] with "
                    "0 <= low <= high"
                )


class Augmenter:
    """The training augmentation: ``Augmenter(cfg, spatial_dims)(batch, generator)``.

    One random draw per sample, shared by all its arrays: flips, quarter turns, rotation and
    zoom composed with the paper's elastic field into one resampling (:func:`deform`), then
    gray-value changes of the image (:func:`random_intensity`). ``batch`` holds arrays at the
    network's input size (targets are cropped to the output tile afterwards); all random
    numbers come from ``generator`` (on the batch's device), so the result is a function of
    the batch and the generator state. For volumes, rotations and quarter turns act in the
    plane of the last two axes only, and quarter turns only where that plane is square.
    """

    def __init__(self, cfg: AugmentConfig, spatial_dims: int) -> None:
        self.cfg, self.spatial_dims = cfg, spatial_dims

    def draw(
        self, batch_size: int, shape: Sequence[int], generator: torch.Generator
    ) -> tuple[Tensor | None, Tensor]:
        """The geometric draw of one call: (displacement (N, D, *S) px or None, matrix)."""
        cfg = self.cfg
        matrix = random_affine(
            batch_size, shape, generator, cfg.rotate, cfg.scale, cfg.flip, cfg.rot90
        )
        if cfg.elastic_sigma == 0 or cfg.p_elastic == 0:
            return None, matrix
        on = torch.rand(batch_size, generator=generator, device=generator.device) < cfg.p_elastic
        field = elastic_displacement(
            batch_size, shape, cfg.elastic_grid, cfg.elastic_sigma, generator
        )
        return field * on.view((-1,) + (1,) * (len(shape) + 1)), matrix

    def intensity(self, image: Tensor, generator: torch.Generator) -> Tensor:
        """The gray-value part of one call (:func:`random_intensity` with the config's ranges)."""
        cfg = self.cfg
        if cfg.p_invert > 0:  # drawn only when asked: other configs keep their random stream
            on = torch.rand(image.shape[0], generator=generator, device=generator.device)
            on = (on < cfg.p_invert).to(image.device).view((-1,) + (1,) * (image.ndim - 1))
            image = torch.where(on, 1 - image, image)
        if cfg.p_intensity == 0:
            return image
        if cfg.device == "cpu" and self.spatial_dims == 2 and image.device.type == "cpu":
            # In the CPU workers, albumentations' tuned kernels do the 2D gray-value part.
            seed = int(torch.randint(2**62, (1,), generator=generator))
            rng = np.random.default_rng(seed)
            return torch.stack([
                torch.from_numpy(photometric_albumentations(x.numpy(), rng, cfg)) for x in image
            ])
        return random_intensity(
            image, generator, cfg.p_intensity, cfg.gamma, cfg.brightness, cfg.contrast,
            cfg.noise_std, cfg.blur_sigma,
        )

    def __call__(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        if not self.cfg.enabled:
            return dict(batch)
        ref = batch["label"] if "label" in batch else batch["image"][:, 0]
        if ref.ndim != self.spatial_dims + 1:
            raise ValueError(
                f"Augmenter(spatial_dims={self.spatial_dims}) got a batch of "
                f"{ref.ndim - 1}D arrays {list(ref.shape)}"
            )
        shape = tuple(ref.shape[1:])
        displacement, matrix = self.draw(ref.shape[0], shape, generator)
        device = ref.device  # a no-op when the generator lives there, as it should
        displacement = None if displacement is None else displacement.to(device)
        out = deform(batch, displacement, matrix.to(device))
        if "image" in out:
            out["image"] = self.intensity(out["image"], generator)
        return out
