"""Embedded default data: seeded, microscopy-like images of clustered, touching nuclei.

No files and no downloads: :func:`synthetic_cells` draws a label image of cells and renders it
the way a widefield fluorescence microscope would (blur, uneven illumination, shot and read
noise). The same code makes 2D images and 3D volumes. Clusters of touching cells are the
point: separating them is what the U-Net paper's border weights are for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from segunet.data.weightmaps import separate_touching

# Boundary wobble, in units of the normalised ellipse distance (1 is the outline). It is
# clipped at WOBBLE_CLIP standard deviations so a cell's bounding box can be known in advance.
WOBBLE = 0.12
WOBBLE_CLIP = 2.5


def synthetic_cells(
    shape: Sequence[int],
    seed: int,
    n_clusters: int | None = None,
    cell_radius: tuple[float, float] = (6.0, 14.0),
    density: float = 0.3,
    noise: float = 1.0,
    scattered: float = 0.25,
    blur: float = 1.2,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like image of nuclei and its instance labels, 2D or 3D by ``shape``.

    Cells are ellipses (ellipsoids) with random semi-axes in ``cell_radius`` (times 0.75 to
    1.25 per axis) and random orientation, their outlines wobbled by a smooth noise field.
    Most gather around ``n_clusters`` centres (default: one per ~10 cells), a fraction
    ``scattered`` lie anywhere. Overlapping cells split the overlap by the smallest
    normalised ellipse distance ``|diag(1/r) Q^T (x - c)|``, so neighbours meet along a
    shared boundary instead of covering each other. ``density`` sets the number of cells:
    about ``density * volume / mean cell volume`` (overlaps make the covered fraction lower).

    Rendering: per-cell brightness with smooth texture, dimmer rims and a faint dark line
    where cells touch, a background level, Gaussian blur of ``blur`` pixels (the PSF), a
    linear illumination ramp (x0.7 to x1.3 at most), Poisson shot noise at a random photon
    level plus Gaussian read noise, both scaled by ``noise`` (0: noiseless).

    Returns ``(image, instances)``: ``image`` float32 normalised so its (1, 99.8) percentiles
    map to (0, 1), ``instances`` int32 with 0 background and cells labelled ``1..K``, each
    one face-connected component. Everything is drawn from ``np.random.default_rng(seed)``.
    """
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng(seed)
    mean_radius = float(np.mean(cell_radius))
    cells = _place_cells(rng, shape, n_clusters, cell_radius, density, scattered)
    wobble = WOBBLE * np.clip(
        _smooth_noise(rng, shape, 0.4 * mean_radius), -WOBBLE_CLIP, WOBBLE_CLIP
    )
    instances, distance = _rasterise(shape, cells, wobble)
    image = _render(rng, instances, distance, noise, blur)
    return image, instances


def _place_cells(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    n_clusters: int | None,
    cell_radius: tuple[float, float],
    density: float,
    scattered: float,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(centre, semi-axes, rotation)`` of each cell, in clusters."""
    ndim = len(shape)
    mean_radius = float(np.mean(cell_radius))
    unit_ball = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)
    n_cells = max(1, round(density * math.prod(shape) / (unit_ball * mean_radius**ndim)))
    n_clusters = max(1, round(n_cells / 10)) if n_clusters is None else n_clusters
    hubs = rng.uniform(0, shape, size=(n_clusters, ndim))
    # About the radius of a ball packed with one cluster's cells: a tight cluster, so the
    # rejection below pushes cells against each other rather than far apart.
    per_cluster = max(n_cells * (1 - scattered) / n_clusters, 1)
    spread = 0.6 * mean_radius * per_cluster ** (1 / ndim)

    cells, centres, sizes = [], np.empty((0, ndim)), np.empty(0)
    for _ in range(n_cells):
        radii = rng.uniform(*cell_radius) * rng.uniform(0.75, 1.25, ndim)
        q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
        rotation = q * np.sign(np.diag(r))  # uniformly random orthogonal matrix
        for _attempt in range(20):
            if rng.random() < scattered:
                centre = rng.uniform(0, shape)
            else:
                centre = hubs[rng.integers(n_clusters)] + rng.normal(0, spread, ndim)
            # Neighbours may overlap a little (they then share a flat boundary), but no cell
            # may swallow another's core.
            gaps = np.linalg.norm(centres - centre, axis=1) - 0.8 * (sizes + radii.mean())
            if np.all(gaps > 0):
                cells.append((centre, radii, rotation))
                centres = np.vstack([centres, centre])
                sizes = np.append(sizes, radii.mean())
                break
    return cells


def _rasterise(
    shape: tuple[int, ...],
    cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    wobble: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels and each pixel's (wobbled) normalised distance to its cell's centre.

    Each cell is evaluated on its bounding box only; a pixel goes to the cell it is
    normalised-closest to, and is inside it iff that distance is below 1.
    """
    distance = np.full(shape, np.inf, dtype=np.float32)
    owner = np.zeros(shape, dtype=np.int32)
    for label, (centre, radii, rotation) in enumerate(cells, start=1):
        half = radii.max() * (1 + WOBBLE * WOBBLE_CLIP) + 1
        box = tuple(
            slice(max(math.floor(c - half), 0), min(math.ceil(c + half) + 1, n))
            for c, n in zip(centre, shape)
        )
        if any(sl.start >= sl.stop for sl in box):
            continue
        offsets = [x - c for x, c in zip(np.ogrid[box], centre)]
        # Coordinates along the cell's own axes, in units of its semi-axes.
        axes = [
            sum(rotation[j, k] * offsets[j] for j in range(len(shape))) / radii[k]
            for k in range(len(shape))
        ]
        d = np.sqrt(sum(a**2 for a in axes)) + wobble[box]
        closer = d < distance[box]
        distance[box][closer] = d[closer]
        owner[box][closer] = label
    instances = np.where(distance < 1, owner, 0)
    return _keep_largest_parts(instances), distance


def _keep_largest_parts(instances: np.ndarray) -> np.ndarray:
    """Keep each instance's largest connected piece (a neighbour can cut off a sliver), drop
    the rest, and relabel ``1..K``."""
    instances = instances.copy()
    for label, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        parts, n = ndi.label(instances[box] == label)
        if n > 1:
            largest = np.argmax(np.bincount(parts.ravel())[1:]) + 1
            instances[box][(parts > 0) & (parts != largest)] = 0
    present = np.unique(instances)
    present = present[present > 0]
    relabel = np.zeros(instances.max() + 1, dtype=np.int32)
    relabel[present] = np.arange(1, len(present) + 1)
    return relabel[instances]


def _render(
    rng: np.random.Generator,
    instances: np.ndarray,
    distance: np.ndarray,
    noise: float,
    blur: float,
) -> np.ndarray:
    """Microscope image of the labelled cells (see :func:`synthetic_cells`)."""
    shape = instances.shape
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, instances.max())])
    texture = np.exp(0.15 * _smooth_noise(rng, shape, 1.5))  # log-normal: stays positive
    # Dimmer towards the outline (distance 1), and darker still where two cells touch.
    rim = 1 - 0.35 * np.clip((distance - 0.6) / 0.4, 0, 1)
    touching = (instances > 0) & (separate_touching(instances) == 0)
    cells = brightness[instances] * texture * rim * np.where(touching, 0.6, 1.0)
    background = rng.uniform(0.05, 0.15) * np.exp(0.3 * _smooth_noise(rng, shape, 8.0))
    signal = ndi.gaussian_filter(cells + background, blur)

    # Illumination falls off linearly along a random direction, by up to +-strength.
    direction = rng.standard_normal(len(shape))
    ramp = sum(
        d * (x / max(n - 1, 1) - 0.5)
        for d, x, n in zip(direction, np.ogrid[tuple(slice(0, n) for n in shape)], shape)
    )
    signal = signal * (1 + rng.uniform(0.1, 0.3) * ramp / (0.5 * np.abs(direction).sum()))

    if noise > 0:
        photons = rng.uniform(30, 300) / noise**2  # at unit signal
        signal = rng.poisson(signal * photons) / photons
        signal = signal + rng.normal(0, 0.02 * noise, shape)
    lo, hi = np.percentile(signal, (1, 99.8))
    return ((signal - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    # Centre first: on an image not much larger than sigma the field is nearly constant, and
    # dividing its offset by a tiny std would blow it up (Poisson then refuses the rate).
    field -= field.mean()
    return field / max(field.std(), 1e-6)
