"""The fingerprint of a labelled dataset: what ``segunet plan`` measures before it chooses
anything (nnU-Net's dataset fingerprint, extended to the objects an instance recipe needs).

It is read once, from a seeded sample of at most ``limit`` images (of a stack: slices), so
that time and memory stay bounded however large the dataset is. Per image it measures the
intensities, the colour, and every object: its size, the background gap to its nearest
neighbour (0 where two touch) and whether the image border cuts it. Sizes are in pixels of
the finest axis; the touching and the gaps are what the border weights and the target are
chosen by (:mod:`segunet.plan.rules`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segunet.data.io import read_array, read_pixel_size
from segunet.data.labels import instances_from_labels, label_image
from segunet.data.normalize import (
    LUMA,
    appearance,
    bright_background,
    has_colour,
    image_channels_first,
    normalize_percentile,
)
from segunet.data.objectsize import diameters_of_sizes
from segunet.errors import SegunetError

#: Intensity percentiles recorded per channel (the normalisation's and the median).
INTENSITY_PERCENTILES = (1.0, 50.0, 99.8)
#: Quantiles of the object size distributions.
QUANTILES = (1, 5, 50, 95)
#: Pixels per image and class drawn for the colour and polarity measurements.
PIXELS = 4000


@dataclass(frozen=True)
class Sample:
    """One image of the dataset as stored: ``image`` (C, *spatial), ``labels`` (*spatial)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    source: str


@dataclass(frozen=True)
class Fingerprint:
    """What the dataset is. Object sizes are in pixels of the finest axis; ``gap``:
    quantiles of the background width between an object and its nearest neighbour, over
    the objects that have one (0: they touch)."""

    source: str
    images: int  # in the dataset
    sampled: int  # measured
    spatial_dims: int
    shape_min: list[int]
    shape_median: list[int]
    channels: list[int]  # the channel counts found (grey 1, RGB 3)
    colour_images: float  # share of the sampled images whose RGB channels differ
    colour_gain: float | None  # colour's separability of objects over grey's (median)
    dark_objects: float  # share of images whose objects are darker than their background
    polarity_rule: float  # share of images where a bright background means dark objects
    dtype: str
    intensity: list[list[float]]  # per channel of the most common count: INTENSITY_PERCENTILES
    pixel_size: list[float] | None
    anisotropy: float  # coarsest over finest axis
    label_kind: str  # instances | binary | classes, as found in the files
    foreground_value: int | None  # binary labels' object value
    label_values: int  # distinct values found (with 0)
    ignored: float  # share of the pixels the ignore value marks
    foreground: float  # share of the labelled pixels inside objects
    objects: int  # counted in the sample
    objects_per_image: float  # median
    area: dict[str, float] = field(default_factory=dict)  # px, QUANTILES
    diameter: dict[str, float] = field(default_factory=dict)  # equivalent diameter, px
    touching: float = 0.0  # share of objects touching another
    gap: dict[str, float] = field(default_factory=dict)  # px, QUANTILES
    border_cut: float = 0.0  # share of objects the image border cuts
    appearances: dict[str, int] = field(default_factory=dict)  # images per kind (appearance)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- reading a sample of the dataset -------------------------------------------------------


def sample_indices(n: int, limit: int, seed: int = 0) -> list[int]:
    """Which of ``n`` items are measured: all up to ``limit``, else a seeded choice."""
    if n <= limit:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, limit, replace=False).tolist())


def samples_of(data: Mapping[str, Any], limit: int = 100, seed: int = 0
               ) -> tuple[int, int, Iterator[Sample], list[float] | None]:
    """``(images in the dataset, spatial dims, the sampled images, pixel size)`` of a
    ``data`` config (its ``_target_`` names the source), read as that source reads them."""
    target = str(data.get("_target_", "")).rpartition(".")[2]
    dims = 3 if data.get("slices_as") == "3d" else int(data.get("spatial_dims", 2))
    given = data.get("pixel_size")
    if target == "folder":
        return _folder_samples(data, dims, limit, seed, given)
    if target in ("tiff_stack", "volume_file"):
        return _stack_samples(data, target, dims, limit, seed, given)
    if target == "synthetic":
        return _synthetic_samples(data, limit)
    raise SegunetError(f"segunet plan reads data=folder, tiff_stack, volume or synthetic; "
                       f"data._target_ is {data.get('_target_')!r}")


def _sizes(given: Any, dims: int) -> list[float] | None:
    if given is None:
        return None
    values = [float(v) for v in (given if isinstance(given, Sequence) else [given])]
    return values * dims if len(values) == 1 else values


def _folder_samples(data: Mapping[str, Any], dims: int, limit: int, seed: int, given: Any):
    from segunet.data.sources import pair_files

    root = Path(str(data["path"]))
    image_dir, label_dir = root / data.get("images", "images"), root / data.get("labels", "masks")
    for d, key in ((image_dir, "images"), (label_dir, "labels")):
        if not d.is_dir():
            raise SegunetError(f"data folder {d} not found: set data.path (now {root}) or "
                               f"data.{key}")
    pairs = pair_files(image_dir, label_dir, data.get("image_glob", "*"),
                       data.get("label_suffix", ""))
    if data.get("max_images"):
        pairs = pairs[: int(data["max_images"])]
    chosen = [pairs[i] for i in sample_indices(len(pairs), limit, seed)]
    sizes = _sizes(given, dims) or (list(read_pixel_size(chosen[0][0]) or []) or None)

    def read() -> Iterator[Sample]:
        for image_file, label_file in chosen:
            labels = label_image(read_array(label_file), dims, str(label_file))
            image = image_channels_first(read_array(image_file), labels.shape, str(image_file),
                                         str(label_file))
            yield Sample(image_file.stem, image, labels, str(label_file))

    return len(pairs), dims, read(), sizes


def _stack_samples(data: Mapping[str, Any], target: str, dims: int, limit: int, seed: int,
                   given: Any):
    from segunet.data.io import split_key

    if target == "tiff_stack":
        root = Path(str(data["path"]))
        image_file, label_file = root / data.get("volume", "train-volume.tif"), \
            root / data.get("labels", "train-labels.tif")
        image, labels = read_array(image_file), read_array(label_file)
        key = None
    else:
        image_file, _ = split_key(str(data["path"]))
        label_file = image_file
        key = data.get("image_key", "raw")
        image, labels = read_array(image_file, key), read_array(image_file,
                                                                data.get("label_key", "labels"))
    labels = label_image(labels, 3, str(label_file), "a stack needs several slices")
    image = image_channels_first(np.asarray(image), labels.shape, str(image_file),
                                 str(label_file))
    if data.get("max_images"):
        image, labels = image[:, : int(data["max_images"])], labels[: int(data["max_images"])]
    recorded = read_pixel_size(image_file, key)
    sizes = _sizes(given, dims) or (list(recorded)[-dims:] if recorded else None)
    if dims == 3:
        samples = [Sample(Path(image_file).stem, image, labels, str(label_file))]
        return 1, 3, iter(samples), sizes
    chosen = sample_indices(labels.shape[0], limit, seed)
    samples = (Sample(f"z{z:03d}", image[:, z], labels[z], f"{label_file} (slice {z})")
               for z in chosen)
    return labels.shape[0], 2, samples, sizes


def _synthetic_samples(data: Mapping[str, Any], limit: int):
    from segunet.data.synthetic import synthetic_cells

    shape = tuple(int(s) for s in data.get("shape", (256, 256)))
    n = int(data.get("n_train", 24)) + int(data.get("n_val", 4))
    seed = int(data.get("seed", 0))

    def read() -> Iterator[Sample]:
        for i in sample_indices(n, limit):
            image, instances = synthetic_cells(shape, seed=seed * 100_003 + i)
            yield Sample(f"synthetic_{i:04d}", image.reshape(-1, *shape), instances, "synthetic")

    return n, len(shape), read(), _sizes(data.get("pixel_size"), len(shape))


# --- measuring ------------------------------------------------------------------------------


def label_kind_found(values: Sequence[np.ndarray], several_parts: float) -> tuple[str, int | None]:
    """What label files hold, from each sampled image's distinct values and the share of
    (image, value) pairs whose pixels form several separate regions: one object value
    throughout is ``binary``; few values that each cover several regions are ``classes``;
    otherwise every value is an object (``instances``)."""
    nonzero = set().union(*(set(v.tolist()) for v in values)) - {0}
    if len(nonzero) == 1:
        return "binary", int(next(iter(nonzero)))
    if len(nonzero) <= 8 and max(nonzero, default=0) < 16 and several_parts > 0.5:
        return "classes", None
    return "instances", None


def objects_of(labels: np.ndarray, kind: str, foreground_value: int | None,
               ignore_value: int | None, connectivity: int | None, source: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(objects, ignored)``: instance ids as training would see them (a binary or class
    image's connected components of the non-zero values)."""
    if kind == "instances":
        return instances_from_labels(labels, "instances", ignore_value=ignore_value,
                                     source=source)
    ignore = labels == ignore_value if ignore_value is not None else np.zeros(labels.shape, bool)
    foreground = (labels == foreground_value) if kind == "binary" else (labels > 0)
    structure = ndi.generate_binary_structure(labels.ndim, connectivity or labels.ndim)
    objects, _ = ndi.label(foreground & ~ignore, structure=structure)
    return objects, ignore


def nearest_gaps(objects: np.ndarray, sampling: Sequence[float]) -> np.ndarray:
    """Per object id (the index), the width of background between it and its nearest
    neighbour along the axes (0 where they touch), ``inf`` for an object alone.

    One distance transform of the background gives each background pixel its nearest
    object and the distance to it; where neighbouring pixels belong to different objects,
    the two distances add up to the gap there."""
    n = int(objects.max(initial=0))
    gaps = np.full(n + 1, np.inf)
    if n < 2:
        return gaps
    background = objects == 0
    if background.any():
        dist, index = ndi.distance_transform_edt(background, sampling=sampling,
                                                 return_indices=True)
        owner = objects[tuple(index)]
    else:
        dist, owner = np.zeros(objects.shape), objects
    for axis in range(objects.ndim):
        a = [slice(None)] * objects.ndim
        b = list(a)
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        oa, ob = owner[tuple(a)], owner[tuple(b)]
        differ = (oa != ob) & (oa > 0) & (ob > 0)
        width = dist[tuple(a)][differ] + dist[tuple(b)][differ]
        np.minimum.at(gaps, oa[differ], width)
        np.minimum.at(gaps, ob[differ], width)
    return gaps


def border_ids(objects: np.ndarray) -> np.ndarray:
    """The ids of the objects the array's border cuts."""
    faces = [np.take(objects, i, axis=a) for a in range(objects.ndim) for i in (0, -1)]
    return np.unique(np.concatenate([f.ravel() for f in faces]))


def separability(inside: np.ndarray, outside: np.ndarray) -> float:
    """Fisher's criterion of two pixel sets (N, C): ``d^T S^-1 d`` with ``d`` the difference
    of their means and ``S`` the sum of their covariances; for one channel
    ``(m1 - m0)^2 / (v1 + v0)``. The best linear projection's separation."""
    d = inside.mean(0) - outside.mean(0)
    cov = np.atleast_2d(np.cov(inside, rowvar=False)) + np.atleast_2d(np.cov(outside,
                                                                           rowvar=False))
    cov += 1e-6 * np.eye(len(d))
    return float(d @ np.linalg.solve(cov, d))


@dataclass
class _Tally:
    """What the sampled images add up to."""

    shapes: list[tuple[int, ...]] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    dtypes: set[str] = field(default_factory=set)
    values: dict[int, list[np.ndarray]] = field(default_factory=dict)
    colour: list[bool] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    dark: list[bool] = field(default_factory=list)
    rule: list[bool] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)
    gaps: list[np.ndarray] = field(default_factory=list)
    cut: int = 0
    counts: list[int] = field(default_factory=list)
    pixels: int = 0
    ignored: int = 0
    inside: int = 0


def fingerprint(data: Mapping[str, Any], limit: int = 100, seed: int = 0,
                progress: Any = None) -> Fingerprint:
    """Measure the dataset a ``data`` config reads (at most ``limit`` images of it).
    ``progress``: a callable wrapping the iterator of samples (a progress bar)."""
    count, dims, samples, sizes = samples_of(data, limit, seed)
    stack_3d = dims == 3 and count == 1 and "slices_as" in data  # split along Z
    if count < 2 and not stack_3d:
        raise SegunetError(
            f"{data.get('path', 'the data')}: {count} image found; a plan needs at least two "
            "(one to train on, one to validate the decoding on)"
        )
    sampling = sizes or [1.0] * dims
    finest = min(sampling)
    targets = data.get("targets") or {}
    ignore_value = targets.get("ignore_value")
    # Two passes, one image in memory at a time: the label kind needs every sampled image's
    # values before any object can be measured.
    label_values, several = [], []
    for s in samples:
        values = np.unique(s.labels)
        values = values[values != ignore_value] if ignore_value is not None else values
        label_values.append(values)
        several += _several_parts(s.labels, values)
    kind, fg_value = label_kind_found(label_values, float(np.mean(several)) if several else 0.0)
    tally = _Tally()
    rng = np.random.default_rng(seed)
    _, _, samples, _ = samples_of(data, limit, seed)
    for s in samples if progress is None else progress(samples, total=min(count, limit)):
        _measure(s, kind, fg_value, ignore_value, targets.get("connectivity"), sampling, finest,
                 tally, rng)
    return _summary(data, count, dims, sizes, kind, fg_value, label_values, tally)


def _several_parts(labels: np.ndarray, values: np.ndarray) -> list[bool]:
    """For at most 8 of an image's non-zero values: whether its pixels form more than one
    connected region."""
    return [ndi.label(labels == v)[1] > 1 for v in values[values != 0][:8]]


def _measure(s: Sample, kind: str, fg_value: int | None, ignore_value: int | None,
             connectivity: int | None, sampling: Sequence[float], finest: float, tally: _Tally,
             rng: np.random.Generator) -> None:
    objects, ignore = objects_of(s.labels, kind, fg_value, ignore_value, connectivity, s.source)
    image = s.image
    tally.shapes.append(tuple(s.labels.shape))
    tally.channels.append(image.shape[0])
    tally.dtypes.add(str(image.dtype))
    flat = image.reshape(image.shape[0], -1)
    picks = rng.choice(flat.shape[1], min(flat.shape[1], 5 * PIXELS), replace=False)
    tally.values.setdefault(image.shape[0], []).append(flat[:, picks].astype(np.float64))
    tally.pixels += objects.size
    tally.ignored += int(ignore.sum())
    inside = objects > 0
    tally.inside += int(inside.sum())

    ids, counts = np.unique(objects[inside], return_counts=True)
    voxel = float(np.prod(sampling)) / finest ** len(sampling)  # in finest-axis pixels
    tally.areas.append(counts * voxel)
    tally.counts.append(len(ids))
    gaps = nearest_gaps(objects, [v / finest for v in sampling])
    tally.gaps.append(gaps[ids])
    tally.cut += int(np.isin(ids, border_ids(objects)).sum())

    outside = ~inside & ~ignore
    if not inside.any() or not outside.any():
        return
    norm = normalize_percentile(image.astype(np.float32), channel_axis=0).reshape(
        image.shape[0], -1)
    fg = norm[:, _pick(inside.ravel(), rng)].T
    bg = norm[:, _pick(outside.ravel(), rng)].T
    colour = has_colour(norm)
    tally.colour.append(colour)
    tally.kinds.append(appearance(norm))
    grey_fg, grey_bg = _grey(fg), _grey(bg)
    dark = float(grey_fg.mean()) < float(grey_bg.mean())
    tally.dark.append(dark)
    tally.rule.append(bright_background(norm) == dark)
    if colour:
        grey = separability(grey_fg[:, None], grey_bg[:, None])
        tally.gains.append(separability(fg, bg) / max(grey, 1e-6))


def _pick(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    where = np.flatnonzero(mask)
    return where if len(where) <= PIXELS else rng.choice(where, PIXELS, replace=False)


def _grey(pixels: np.ndarray) -> np.ndarray:
    return pixels @ np.asarray(LUMA) if pixels.shape[1] == 3 else pixels.mean(1)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in QUANTILES}


def _summary(data: Mapping[str, Any], count: int, dims: int, sizes: list[float] | None,
             kind: str, fg_value: int | None, label_values: Sequence[np.ndarray],
             tally: _Tally) -> Fingerprint:
    areas = np.concatenate(tally.areas) if tally.areas else np.zeros(0)
    if not len(areas):
        raise SegunetError(f"{data.get('path', 'the data')}: the labels of the "
                           f"{len(tally.shapes)} images measured hold no objects; check "
                           "data.labels and data.targets.foreground_value")
    diameters = diameters_of_sizes(areas, dims)
    gaps = np.concatenate(tally.gaps)
    shapes = np.array(tally.shapes)
    common = max(set(tally.channels), key=tally.channels.count)
    values = np.concatenate(tally.values[common], axis=1)
    labelled = max(tally.pixels - tally.ignored, 1)
    return Fingerprint(
        source=str(data.get("path", data.get("name", ""))),
        images=count,
        sampled=len(tally.shapes),
        spatial_dims=dims,
        shape_min=[int(v) for v in shapes.min(0)],
        shape_median=[int(v) for v in np.median(shapes, 0)],
        channels=sorted(set(tally.channels)),
        colour_images=round(float(np.mean(tally.colour)) if tally.colour else 0.0, 3),
        colour_gain=round(float(np.median(tally.gains)), 3) if tally.gains else None,
        dark_objects=round(float(np.mean(tally.dark)) if tally.dark else 0.0, 3),
        polarity_rule=round(float(np.mean(tally.rule)) if tally.rule else 0.0, 3),
        dtype=" ".join(sorted(tally.dtypes)),
        intensity=[[round(float(v), 3) + 0.0 for v in np.percentile(c, INTENSITY_PERCENTILES)]
                   for c in values],
        pixel_size=sizes,
        anisotropy=round(max(sizes) / min(sizes), 3) if sizes else 1.0,
        label_kind=kind,
        foreground_value=fg_value,
        label_values=len(set().union(*(set(v.tolist()) for v in label_values))),
        ignored=round(tally.ignored / max(tally.pixels, 1), 4),
        foreground=round(tally.inside / labelled, 4),
        objects=len(areas),
        objects_per_image=float(np.median(tally.counts)),
        area=_quantiles(areas),
        diameter=_quantiles(diameters),
        touching=round(float(np.mean(gaps == 0)), 4),
        gap=_quantiles(gaps[np.isfinite(gaps)]),
        border_cut=round(tally.cut / len(areas), 4),
        appearances={k: tally.kinds.count(k) for k in sorted(set(tally.kinds))},
    )


def describe(fp: Fingerprint) -> str:
    """The fingerprint as a two-column table for the terminal."""
    def q(d: Mapping[str, float]) -> str:
        return " / ".join(f"{v:g}" for v in d.values()) if d else "-"

    rows = [
        ("images", f"{fp.images} ({fp.sampled} measured), {fp.spatial_dims}D, "
                   f"shapes from {'x'.join(map(str, fp.shape_min))}, median "
                   f"{'x'.join(map(str, fp.shape_median))}"),
        ("channels", f"{' and '.join(map(str, fp.channels))}; colour in "
                     f"{fp.colour_images:.0%} of the images"
                     + (f", colour separates objects {fp.colour_gain:g}x better than grey"
                        if fp.colour_gain is not None else "")),
        ("intensity", f"{fp.dtype}; p1 / p50 / p99.8 per channel: "
                      + "; ".join(" / ".join(f"{v:g}" for v in c) for c in fp.intensity)),
        ("polarity", f"objects darker than the background in {fp.dark_objects:.0%} of the "
                     f"images; a bright background tells which in {fp.polarity_rule:.0%}"),
        ("appearance", "; ".join(f"{k}: {n}" for k, n in fp.appearances.items()) or "-"),
        ("pixel size", "not recorded" if fp.pixel_size is None else
         f"{' x '.join(f'{v:g}' for v in fp.pixel_size)} um, anisotropy {fp.anisotropy:g}"),
        ("labels", f"{fp.label_kind}" + (f" (objects = {fp.foreground_value})"
                                         if fp.foreground_value is not None else "")
         + f", {fp.label_values} values; ignored {fp.ignored:.1%}; foreground "
           f"{fp.foreground:.1%}"),
        ("objects", f"{fp.objects} measured, median {fp.objects_per_image:g} per image"),
        ("area px", f"p1 / p5 / p50 / p95: {q(fp.area)}"),
        ("diameter px", f"p1 / p5 / p50 / p95: {q(fp.diameter)}"),
        ("neighbours", f"touching {fp.touching:.1%}; gap to the nearest px p1 / p5 / p50 / "
                       f"p95: {q(fp.gap)}; cut by the border {fp.border_cut:.1%}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
