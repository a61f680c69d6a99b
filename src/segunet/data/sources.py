"""Where volumes come from: each public function here is the target of one ``data`` config.

- :func:`synthetic`: the embedded default, seeded microscopy-like cells (no files).
- :func:`folder`: ``images/<stem>.<ext>`` paired with ``masks/<stem>.<ext>`` (DSB 2018).
- :func:`tiff_stack`: a multi-page image stack and its label stack (ISBI 2012, Lucchi).
- :func:`volume_file`: raw and label arrays of one HDF5 file or zarr store.

Every source returns a :class:`SegmentationData`. Labels become class labels, ignore masks
and the paper's border weight maps here, once per whole image, before any cropping; images
are percentile-normalised per image and channel. How labels become targets is the
``data.targets`` node (:class:`Targets`), the same for every source. Label files come in
three kinds (``data.targets.label_kind``):

- ``instances``: 0 is background, ``k > 0`` object ``k`` (weights from the instances,
  optionally after :func:`~segunet.data.weightmaps.separate_touching`);
- ``binary``: ``foreground_value`` (e.g. 255) is foreground, 0 background; the weight map's
  instances are the connected components of the foreground (for ISBI 2012, the cell
  interiors, which the membranes separate);
- ``classes``: class ids ``0 .. num_classes - 1``, weighted by class balancing only.

``ignore_value`` marks unlabelled pixels in any kind (sparse 3D annotation, for instance).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from scipy import ndimage as ndi

from segunet.config.schema import (
    Count,
    Fraction,
    Positive,
    Range,
    SpatialDims,
    check_ranges,
)
from segunet.data.datasets import SegmentationData, Volume
from segunet.data.io import SUPPORTED, read_array, read_pixel_size, split_key
from segunet.data.pixelsize import PixelSize, check_pixel_size, describe, spatial
from segunet.data.synthetic import synthetic_cells
from segunet.data.targets import (
    OBJECT_METRICS,
    TARGETS,
    Metric,
    Target,
    boundary_classes,
    check_metric,
    check_target,
    interiors,
)
from segunet.data.weightmaps import border_weight_map
from segunet.data.weightmaps import separate_touching as separate_touching_instances
from segunet.data.weightmaps_cache import cache_root
from segunet.errors import SegunetError

Seed = Annotated[int, Range(ge=0)]  # numpy's generators take no negative seed
Percentile = Annotated[float, Range(ge=0, le=100)]
ValFraction = Annotated[float, Range(gt=0, lt=1)]

LabelKind = Literal["instances", "binary", "classes"]
LABEL_KINDS = ("instances", "binary", "classes")

#: The largest float32: weight maps are float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: ITU-R BT.709 luma weights (as skimage's rgb2gray) for turning RGB into grey.
LUMA = (0.2125, 0.7154, 0.0721)


# --- image and label preparation (pure functions) ------------------------------------------


def percentile_range(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, channel_axis: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(p_low, p_high - p_low)`` per channel as float32, shaped to broadcast against
    ``image``. Where the percentiles coincide (a mostly constant channel) the channel's min
    and max are used instead; a constant channel gets scale 0."""
    x = np.asarray(image)
    axes = None if channel_axis is None else tuple(
        a for a in range(x.ndim) if a != channel_axis % x.ndim
    )
    lo, hi = np.percentile(x, [low, high], axis=axes, keepdims=True)
    flat = hi <= lo
    if np.any(flat):  # mostly constant channel: fall back to the full range
        lo = np.where(flat, np.min(x, axis=axes, keepdims=True), lo)
        hi = np.where(flat, np.max(x, axis=axes, keepdims=True), hi)
    return lo.astype(np.float32), (hi - lo).astype(np.float32)


def apply_range(x: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(x - lo) / scale`` as float32, 0 where the scale is 0."""
    out = np.zeros(x.shape, np.float32)
    np.divide(x.astype(np.float32) - lo, scale, out=out, where=scale > 0)
    return out


def normalize_percentile(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, channel_axis: int | None = 0
) -> np.ndarray:
    """``(x - p_low) / (p_high - p_low)`` per channel, as float32: robust to a few hot pixels.

    ``p_low``, ``p_high`` are the ``low``-th and ``high``-th percentiles of each channel
    (of the whole image when ``channel_axis`` is None); see :func:`percentile_range`.
    """
    return apply_range(np.asarray(image), *percentile_range(image, low, high, channel_axis))


def check_finite(image: np.ndarray, source: str) -> None:
    """SegunetError naming ``source`` if the image holds NaN or infinite values."""
    if np.issubdtype(image.dtype, np.inexact) and not np.isfinite(image).all():
        raise SegunetError(
            f"{source} holds NaN or infinite values: fix the file or leave it out of the data"
        )


def label_image(
    labels: np.ndarray, spatial_dims: int, source: str, fix: str | None = None
) -> np.ndarray:
    """The label image as ``spatial_dims`` integer axes (``fix``: what to tell the user if
    it has other axes).

    Masks saved as grey-in-RGB(A) are accepted (their colour channels are equal); bool
    becomes 0/1; floats must hold whole numbers.
    """
    labels = np.asarray(labels)
    if labels.ndim == spatial_dims + 1 and labels.shape[-1] in (3, 4):
        rgb = labels[..., :3]
        if (rgb == rgb[..., :1]).all():
            labels = rgb[..., 0]
    if labels.ndim != spatial_dims:
        if fix is None and labels.ndim in (2, 3):
            fix = f"set data.spatial_dims={labels.ndim}"
        raise SegunetError(
            f"labels in {source} have shape {labels.shape}; expected a single-channel "
            f"{spatial_dims}D label image" + (f": {fix}" if fix else "")
        )
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise SegunetError(
                f"labels in {source} are not whole numbers (dtype {labels.dtype}): save "
                "integer label images"
            )
        labels = labels.astype(np.int64)
    return labels


def image_channels_first(
    image: np.ndarray, spatial_shape: Sequence[int], image_source: str, label_source: str
) -> np.ndarray:
    """``(C, *spatial)`` from an image read as grey ``(*spatial)``, channels-last
    ``(*spatial, C)`` or channels-first ``(C, *spatial)``, telling them apart by the label
    image's shape. An RGBA image loses its alpha channel, which holds no image content."""
    spatial_shape = tuple(spatial_shape)
    if image.shape == spatial_shape:
        return image[None]
    if image.shape[:-1] == spatial_shape:
        image = np.moveaxis(image, -1, 0)
        return image[:3] if image.shape[0] == 4 else image
    if image.shape[1:] == spatial_shape:
        return image
    raise SegunetError(
        f"image {image_source} has shape {image.shape} but its labels {label_source} have "
        f"{spatial_shape}: each label image must cover its image pixel for pixel"
    )


def convert_channels(image: np.ndarray, channels: int | None, source: str) -> np.ndarray:
    """``(C, ...)`` to ``channels`` channels: None keeps them, RGB -> grey by luma, grey ->
    RGB by replication; anything else is an error."""
    c = image.shape[0]
    if channels is None or channels == c:
        return image
    if channels == 1 and c == 3:
        return np.tensordot(np.asarray(LUMA, np.float32), image.astype(np.float32), axes=1)[None]
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=0)
    raise SegunetError(
        f"{source} has {c} channels and data.channels={channels}: only RGB -> grey (1) and "
        f"grey -> RGB (3) are converted; set data.channels=null or {c}"
    )


def prepare_image(
    image: np.ndarray, channels: int | None, percentiles: Sequence[float] | None, source: str
) -> np.ndarray:
    """``(C, *spatial)`` image -> normalised float32: NaN/inf rejected, channels converted,
    percentile-normalised (``percentiles=None``: as is)."""
    check_finite(image, source)
    image = convert_channels(image, channels, source)
    if percentiles is None:
        return np.ascontiguousarray(image, dtype=np.float32)
    low, high = (float(p) for p in percentiles)
    return normalize_percentile(image, low, high, channel_axis=0)


def check_percentiles(percentiles: Sequence[float] | None) -> None:
    """``data.percentiles`` is null or ``[low, high]`` with low < high: reversed, they would
    turn every image into its negative and train on it without a word."""
    if percentiles is not None and (len(percentiles) != 2 or percentiles[0] >= percentiles[1]):
        raise SegunetError(
            f"data.percentiles={list(percentiles)} is not valid: expected [low, high] with "
            "low < high (e.g. [1, 99.8]), or null to keep the values as they are"
        )


def _show(values: np.ndarray, limit: int = 8) -> str:
    """``{0, 1, 7, ...}``: the first ``limit`` values, for error messages."""
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return "{" + shown + (", ..." if len(values) > limit else "") + "}"


def instances_from_labels(
    labels: np.ndarray,
    kind: LabelKind = "instances",
    foreground_value: int = 255,
    ignore_value: int | None = None,
    source: str = "labels",
    connectivity: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(instances, ignore)`` of an ``instances`` or ``binary`` label image.

    Binary foreground is split into its connected components, so the border term sees every
    separate object; ``connectivity`` is scipy's: 1 joins pixels sharing a face (4 in 2D),
    None (= ndim) also diagonal ones (8 in 2D, 26 in 3D). Ignored pixels are 0.
    """
    ignore = labels == ignore_value if ignore_value is not None else np.zeros(labels.shape, bool)
    if kind == "binary":
        foreground = labels == foreground_value
        bad = ~(foreground | ignore | (labels == 0))
        if bad.any():
            expected = f"{{0, {foreground_value}}}"
            if ignore_value is not None:
                expected += f" and ignore_value {ignore_value}"
            raise SegunetError(
                f"labels in {source} hold values {_show(np.unique(labels[~ignore]))}; expected "
                f"{expected}: set data.targets.foreground_value or data.targets.label_kind"
            )
        structure = ndi.generate_binary_structure(labels.ndim, connectivity or labels.ndim)
        instances, _ = ndi.label(foreground & ~ignore, structure=structure)
        return instances, ignore
    if kind != "instances":
        raise SegunetError(
            f"data.targets.label_kind={kind!r} is not one of {', '.join(LABEL_KINDS)}"
        )
    bad = (labels < 0) & ~ignore
    if bad.any():
        raise SegunetError(
            f"labels in {source} hold negative values {_show(np.unique(labels[bad]))}; instance "
            "labels are 0 (background) or object ids: set data.targets.ignore_value if they mark "
            "unlabelled pixels"
        )
    return np.where(ignore, 0, labels), ignore


def classes_from_labels(
    labels: np.ndarray, num_classes: int, ignore_value: int | None = None, source: str = "labels"
) -> tuple[np.ndarray, np.ndarray]:
    """``(class ids, ignore)`` of a semantic label image; ignored pixels get class 0."""
    ignore = labels == ignore_value if ignore_value is not None else np.zeros(labels.shape, bool)
    bad = ((labels < 0) | (labels >= num_classes)) & ~ignore
    if bad.any():
        raise SegunetError(
            f"labels in {source} hold values {_show(np.unique(labels[~ignore]))}; expected "
            f"class ids 0..{num_classes - 1}: set data.targets.num_classes or "
            "data.targets.ignore_value"
        )
    return np.where(ignore, 0, labels).astype(np.int64), ignore


def class_balance_weights(
    classes: np.ndarray, valid: np.ndarray, num_classes: int, class_weights: str | None
) -> np.ndarray:
    """``w_c = N / (C * N_c)`` per pixel of class ``c`` (``N`` valid pixels, ``N_c`` of class
    ``c``, ``C`` classes present), 0 where not valid; ``class_weights=None`` gives 1."""
    if class_weights is None:
        return valid.astype(np.float32)
    if class_weights != "balanced":
        raise SegunetError(f"data.targets.class_weights={class_weights!r}: use balanced or null")
    counts = np.bincount(classes[valid].ravel(), minlength=num_classes).astype(float)
    present = np.count_nonzero(counts)
    per_class = np.divide(counts.sum(), present * counts, out=np.zeros_like(counts),
                          where=counts > 0)
    return np.where(valid, per_class[classes], 0).astype(np.float32)


# --- weight maps and volumes ---------------------------------------------------------------


def border_weight_maps(
    instances: Sequence[np.ndarray],
    valid: Sequence[np.ndarray] | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | None = "balanced",
    spacing: Sequence[float] | None = None,
    cache_dir: str | None = None,
    workers: int = 0,
) -> list[np.ndarray]:
    """The paper's weight maps of several instance images in one call, so they can be
    computed in parallel and cached (:mod:`segunet.data.weightmaps_cache`, where present;
    else one :func:`~segunet.data.weightmaps.border_weight_map` after another)."""
    instances = list(instances)
    valid = [None] * len(instances) if valid is None else list(valid)
    spacing = None if spacing is None else [float(s) for s in spacing]
    try:
        import segunet.data.weightmaps_cache as weightmaps_cache
    except ModuleNotFoundError as e:
        if e.name != "segunet.data.weightmaps_cache":
            raise
        return [
            border_weight_map(i, w0, sigma, class_weights, spacing, v).astype(np.float32)
            for i, v in zip(instances, valid)
        ]
    return weightmaps_cache.border_weight_maps(
        instances, w0=w0, sigma=sigma, class_weights=class_weights, spacing=spacing,
        valid_list=valid, cache_dir=cache_dir, workers=workers,
    )


def volumes_from_instances(
    names: Sequence[str],
    images: Sequence[np.ndarray],
    instances: Sequence[np.ndarray],
    ignores: Sequence[np.ndarray | None] | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | None = "balanced",
    separate: bool = True,
    spacing: Sequence[float] | None = None,
    cache_dir: str | None = None,
    workers: int = 0,
    target: Target = "foreground",
) -> list[Volume]:
    """Training volumes of instance-labelled images for a ``target`` (see
    :mod:`segunet.data.targets`), with the paper's weights (all computed in one
    :func:`border_weight_maps` call); each keeps its instances for object metrics.

    ``foreground``: ``separate`` opens a one-pixel gap between touching instances (the
    authors' reference implementation), which the border term of the weight map then
    emphasises; the gap is background in the class labels too. ``boundary``: three classes;
    the border term is measured from the objects' interiors, so it rises on the boundary
    pixels where objects touch, and is added to class weights balanced over the three.
    """
    check_target(target)
    wrong = [i.ndim for i in instances if spacing is not None and len(spacing) != i.ndim]
    if wrong:
        raise SegunetError(
            f"data.targets.spacing={list(spacing)} has {len(spacing)} sizes for {wrong[0]}D "
            f"label images: give {wrong[0]} (slowest axis first), or null"
        )
    ignores = [None] * len(names) if ignores is None else list(ignores)
    ignores = [np.zeros(i.shape, bool) if g is None else g.astype(bool)
               for i, g in zip(instances, ignores)]
    if target == "boundary":
        classes = [boundary_classes(i) for i in instances]
        measured = [interiors(i, c) for i, c in zip(instances, classes)]
        borders = border_weight_maps(
            measured, [~g for g in ignores], w0, sigma, None, spacing, cache_dir, workers
        )
        weights = [
            class_balance_weights(c, ~g, 3, class_weights) + (b - (~g))
            for c, g, b in zip(classes, ignores, borders)
        ]
    else:
        separated = [separate_touching_instances(i) if separate else i for i in instances]
        classes = [(i > 0).astype(np.int64) for i in separated]
        weights = border_weight_maps(
            separated, [~g for g in ignores], w0, sigma, class_weights, spacing, cache_dir,
            workers,
        )
    return [
        Volume(
            name=name,
            image=np.ascontiguousarray(image[None] if image.ndim == inst.ndim else image,
                                       dtype=np.float32),
            label=label,
            weight=np.asarray(weight, np.float32),
            ignore=ignore,
            instances=inst,
        )
        for name, image, inst, label, weight, ignore in zip(
            names, images, instances, classes, weights, ignores
        )
    ]


def volume_from_instances(
    name: str,
    image: np.ndarray,
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | None = "balanced",
    separate: bool = True,
    ignore: np.ndarray | None = None,
) -> Volume:
    """One image's :func:`volumes_from_instances` (no weight cache)."""
    return volumes_from_instances(
        [name], [image], [instances], [ignore], w0, sigma, class_weights, separate
    )[0]


@dataclasses.dataclass(frozen=True)
class Targets:
    """How label files become training targets and weight maps: the ``data.targets`` node,
    the same for every source."""

    label_kind: LabelKind = "instances"
    foreground_value: int = 255
    num_classes: Annotated[int, Range(ge=2)] = 2  # with the background
    ignore_value: int | None = None
    separate_touching: bool = False
    connectivity: Count | None = None
    # w0 at most half of float32's largest: a border weight plus a class weight stays finite.
    w0: Annotated[float, Range(ge=0, le=FLOAT32_MAX / 2,
                               words="must be a finite number >= 0 (0: no border term)")] = 10.0
    # sigma divides: 0 gives NaN weights
    sigma: Annotated[float, Range(gt=0, lt=math.inf, words="must be a finite number > 0 "
                                  "(pixels, or the units of spacing)")] = 5.0
    class_weights: Literal["balanced"] | None = "balanced"
    spacing: Sequence[Positive] | None = None
    cache_dir: str | None = "data/cache"
    workers: Annotated[int, Range(ge=-1, words="must be 0 (this process), -1 (one per CPU) "
                                              "or a number of processes")] = 0

    def __post_init__(self) -> None:
        check_ranges(self, "data.targets")

    @classmethod
    def of(cls, value: Targets | Mapping[str, object] | None) -> Targets:
        """``value`` as Targets: a config gives a mapping of its keys; None: the defaults."""
        if value is None or isinstance(value, cls):
            return value or cls()
        return cls(**value)

    def volumes(
        self,
        names: Sequence[str],
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        sources: Sequence[str],
        target: Target = "foreground",
    ) -> list[Volume]:
        """Volumes of prepared images and integer label images (``sources``: the label
        files, for error messages); the weight maps of all in one call."""
        if self.label_kind == "classes":
            volumes = []
            for name, image, lab, src in zip(names, images, labels, sources):
                classes, ignore = classes_from_labels(lab, self.num_classes, self.ignore_value,
                                                      src)
                weight = class_balance_weights(classes, ~ignore, self.num_classes,
                                               self.class_weights)
                volumes.append(
                    Volume(name=name, image=image, label=classes, weight=weight, ignore=ignore)
                )
            return volumes
        pairs = [
            instances_from_labels(lab, self.label_kind, self.foreground_value,
                                  self.ignore_value, src, self.connectivity)
            for lab, src in zip(labels, sources)
        ]
        return self.of_instances(names, images, [p[0] for p in pairs], [p[1] for p in pairs],
                                 target)

    def of_instances(
        self,
        names: Sequence[str],
        images: Sequence[np.ndarray],
        instances: Sequence[np.ndarray],
        ignores: Sequence[np.ndarray | None],
        target: Target = "foreground",
    ) -> list[Volume]:
        """:func:`volumes_from_instances` with these weight-map settings."""
        return volumes_from_instances(
            names, images, instances, ignores, self.w0, self.sigma, self.class_weights,
            self.separate_touching, self.spacing, self.cache_dir, self.workers, target,
        )

    def check(self, target: Target, metric: Metric) -> None:
        """Refuse a target or metric the labels cannot give, and weight-map settings out of
        range, before anything is read."""
        check_target(target)
        check_metric(metric)
        self.check_ranges()
        objects = self.label_kind != "classes"
        if target != "foreground" and not objects:
            raise SegunetError(
                f"data.target={target} needs objects, but data.targets.label_kind=classes "
                "labels hold classes only: use data.target=foreground, or instance/binary labels"
            )
        if metric in OBJECT_METRICS and not objects:
            raise SegunetError(
                f"data.metric={metric} scores objects, but data.targets.label_kind=classes "
                "labels hold classes only: use data.metric=dice or iou"
            )

    def check_ranges(self) -> None:
        """The declared ranges again (a caller may have replaced a field since), and a cache
        folder that can be one."""
        check_ranges(self, "data.targets")
        if self.cache_dir is not None:
            cache_root(self.cache_dir)

    def num_classes_out(self, target: Target) -> int:
        """Classes the network predicts."""
        return self.num_classes if self.label_kind == "classes" else len(TARGETS[target])


# --- splits and the returned data ----------------------------------------------------------


def val_count(n: int, val_fraction: float, what: str = "images") -> int:
    """How many of ``n`` items validate: ``round(val_fraction * n)``, at least 1; one-line
    errors when the train or validation share would be empty."""
    if not 0 < val_fraction < 1:
        raise SegunetError(
            f"data.val_fraction={val_fraction} must lie strictly between 0 and 1 (a share of "
            f"the {n} {what} for validation)"
        )
    n_val = max(1, round(val_fraction * n))
    if n - n_val < 1:
        raise SegunetError(
            f"data.val_fraction={val_fraction} leaves no training {what} out of {n}: lower "
            f"data.val_fraction" + (" or add data" if n < 2 else "")
        )
    return n_val


def split_names(names: Sequence[str], val_fraction: float, seed: int = 0) -> list[str]:
    """Validation names: the first ``val_count`` of a ``seed``-permutation of the sorted
    names, so the split depends only on the config and the set of names."""
    ordered = sorted(names)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return sorted(ordered[i] for i in order[: val_count(len(ordered), val_fraction)])


def class_names_for(
    class_names: Sequence[str] | None, label_kind: str, num_classes: int,
    target: Target = "foreground",
) -> list[str]:
    """The configured class names, checked against the class count, or generic ones; for
    objects (``background``, ``cell``) with the boundary target, ``cell interior`` and
    ``cell boundary``."""
    if label_kind != "classes":
        num_classes = 2
    if class_names is None:
        names = ["background", "foreground"] if num_classes == 2 else [
            "background", *(f"class{i}" for i in range(1, num_classes))
        ]
    elif len(class_names) != num_classes:
        raise SegunetError(
            f"data.class_names has {len(class_names)} names for {num_classes} classes: "
            f"give {num_classes}"
        )
    else:
        names = [str(c) for c in class_names]
    if label_kind != "classes" and target == "boundary":
        names = [names[0], f"{names[1]} interior", f"{names[1]} boundary"]
    return names


def make_data(
    train: list[Volume],
    val: list[Volume],
    num_classes: int,
    class_names: list[str],
    name: str,
    patch_size: Sequence[int] | None,
    foreground_oversample: float = 0.0,
    target: Target = "foreground",
    metric: str = "dice",
    pixel_size: PixelSize | None = None,
) -> SegmentationData:
    """The :class:`SegmentationData` of a source, with how its patches are drawn."""
    return SegmentationData(
        train=train,
        val=val,
        num_classes=num_classes,
        patch_size=tuple(int(p) for p in patch_size) if patch_size is not None else None,
        name=name,
        class_names=class_names,
        foreground_oversample=foreground_oversample,
        target=target,
        metric=metric,
        pixel_size=pixel_size,
    )


def common_pixel_size(recorded: Mapping[str, PixelSize | None], dims: int) -> PixelSize | None:
    """The pixel size the image files record, if they all record one and agree; else None,
    with a warning where some disagree or lack one (the images are used as they are: the
    model then records no pixel size, unless ``data.pixel_size`` gives it)."""
    sizes = {name: spatial(size, dims) for name, size in recorded.items()}
    known = {name: size for name, size in sizes.items() if size is not None}
    if not known:
        return None
    first, size = next(iter(known.items()))
    other = next((n for n, s in sizes.items()
                  if s is None or not np.allclose(s, size, rtol=1e-3)), None)
    if other is None:
        return size
    warnings.warn(
        f"{first} records pixel size {describe(size)} but {other} "
        f"{describe(sizes[other]) if sizes[other] else 'none'}: the model records no pixel "
        "size; set data.pixel_size=[...] (um per axis) if the images share one",
        UserWarning, stacklevel=3,
    )
    return None


def recorded_pixel_size(kwargs: dict, file: Path, key: str | None, dims: int) -> dict:
    """``kwargs`` of :func:`stack`, their ``pixel_size`` the one ``file`` records if none
    is given (``data.pixel_size`` sets or overrides it)."""
    if kwargs.get("pixel_size") is not None:
        return kwargs
    return {**kwargs, "pixel_size": spatial(read_pixel_size(file, key), dims)}


# --- sources -------------------------------------------------------------------------------


def sparse_slices_ignore(shape: Sequence[int], every: int, offset: int = 0) -> np.ndarray:
    """Ignore mask keeping only every ``every``-th slice along the first axis annotated: the
    sparse annotation of Cicek et al. (2016), where a few labelled slices train a 3D net."""
    ignore = np.ones(shape, bool)
    ignore[offset::every] = False
    return ignore


def synthetic(
    n_train: Count = 24,
    n_val: Count = 4,
    shape: Sequence[Count] = (256, 256),
    seed: Seed = 0,
    targets: Targets = Targets(separate_touching=True),
    sparse_every: Count | None = None,
    patch_size: Sequence[Count] | None = None,
    foreground_oversample: Fraction = 0.0,
    target: Target = "foreground",
    metric: Metric = "dice",
    pixel_size: Sequence[Positive] | None = None,
) -> SegmentationData:
    """The embedded default data: seeded microscopy-like cells (2D) or volumes (3D ``shape``).

    Train and validation images come from disjoint seeds. ``sparse_every`` (3D) leaves all
    but every n-th slice of the training volumes unlabelled. ``targets``: the weight-map
    settings (the cells are instance labels). ``pixel_size``: what the model records as its
    training pixel size (um per axis; the cells have none of their own).
    """
    targets = Targets.of(targets)
    targets.check(target, metric)
    if targets.label_kind != "instances":
        raise SegunetError(
            f"data.targets.label_kind={targets.label_kind}: synthetic cells are instance "
            "labels; set data.targets.label_kind=instances"
        )
    # Training draws patches from the train images and validation scores the val ones: an
    # empty share would only fail later, deep inside the trainer.
    for key, n in (("n_train", n_train), ("n_val", n_val)):
        if n < 1:
            role = "training" if key == "n_train" else "validation"
            raise SegunetError(
                f"data.{key}={n}: need at least 1 {role} image: set data.{key}=1 or more"
            )
    shape = tuple(int(s) for s in shape)
    sizes = check_pixel_size(pixel_size, len(shape), "data.pixel_size")
    names, images, instances, ignores = [], [], [], []
    for i in range(n_train + n_val):
        image, inst = synthetic_cells(shape, seed=seed * 100_003 + i)
        sparse = i < n_train and sparse_every and len(shape) == 3
        names.append(f"synthetic_{i:04d}")
        images.append(image)
        instances.append(inst)
        ignores.append(sparse_slices_ignore(shape, sparse_every, offset=i % sparse_every)
                       if sparse else None)
    volumes = targets.of_instances(names, images, instances, ignores, target)
    return make_data(
        volumes[:n_train], volumes[n_train:], len(TARGETS[target]),
        class_names_for(["background", "cell"], "instances", 2, target), "synthetic",
        patch_size, foreground_oversample=foreground_oversample, target=target, metric=metric,
        pixel_size=sizes,
    )


def folder(
    path: str,
    images: str = "images",
    labels: str = "masks",
    image_glob: str = "*",
    label_suffix: str = "",
    targets: Targets = Targets(),
    class_names: Sequence[str] | None = None,
    channels: Count | None = None,
    spatial_dims: SpatialDims = 2,
    percentiles: Sequence[Percentile] | None = (1.0, 99.8),
    val_fraction: ValFraction = 0.1,
    split_seed: Seed = 0,
    max_images: Count | None = None,
    patch_size: Sequence[Count] | None = None,
    foreground_oversample: Fraction = 0.0,
    name: str = "folder",
    target: Target = "foreground",
    metric: Metric = "dice",
    pixel_size: Sequence[Positive] | None = None,
) -> SegmentationData:
    """Image files in ``path/images`` paired by stem with label files in ``path/labels``.

    ``images/<stem>.<ext>`` (matching ``image_glob``) goes with ``labels/<stem><label_suffix>
    .<any supported ext>``. Images are 2D grey or RGB (``spatial_dims=2``) or 3D stacks
    ``(Z, Y, X)`` (``spatial_dims=3``), any integer or float type; ``channels`` converts RGB
    to grey (1) or grey to RGB (3). ``max_images`` keeps the first images by name (quick
    runs). The validation images are a ``split_seed`` permutation's first ``val_fraction``.
    ``targets``: how the labels become targets and weight maps (:class:`Targets`). ``target``
    and ``metric``: what the network learns and what validation scores
    (:mod:`segunet.data.targets`, :data:`segunet.data.targets.TASK_METRICS`). ``pixel_size``
    (um per axis) sets the one the model records; by default the one the image files
    share (:func:`common_pixel_size`).
    """
    targets = Targets.of(targets)
    targets.check(target, metric)
    check_percentiles(percentiles)
    sizes = check_pixel_size(pixel_size, spatial_dims, "data.pixel_size")
    root = Path(path)
    image_dir, label_dir = root / images, root / labels
    for d, key in ((image_dir, "images"), (label_dir, "labels")):
        if not d.is_dir():
            raise SegunetError(
                f"data folder {d} not found: set data.path (now {path}) or data.{key}"
            )
    pairs = pair_files(image_dir, label_dir, image_glob, label_suffix)
    if max_images is not None:
        pairs = pairs[: int(max_images)]
    val_names = set(split_names([p[0].stem for p in pairs], val_fraction, split_seed))

    names, prepared, label_images, sources = [], [], [], []
    for image_file, label_file in pairs:
        lab = label_image(read_array(label_file), spatial_dims, str(label_file))
        img = image_channels_first(read_array(image_file), lab.shape, str(image_file),
                                   str(label_file))
        img = prepare_image(img, channels, percentiles, str(image_file))
        names.append(image_file.stem)
        prepared.append(img)
        label_images.append(lab)
        sources.append(str(label_file))
    counts = sorted({img.shape[0] for img in prepared})
    if len(counts) > 1:
        raise SegunetError(
            f"images in {image_dir} have {' and '.join(map(str, counts))} channels: set "
            "data.channels=1 (grey) or 3 (RGB)"
        )
    volumes = targets.volumes(names, prepared, label_images, sources, target)
    if sizes is None:
        sizes = common_pixel_size(
            {str(image): read_pixel_size(image) for image, _ in pairs}, spatial_dims
        )
    return make_data(
        [v for v in volumes if v.name not in val_names],
        [v for v in volumes if v.name in val_names],
        targets.num_classes_out(target),
        class_names_for(class_names, targets.label_kind, targets.num_classes, target),
        name, patch_size, foreground_oversample=foreground_oversample,
        target=target, metric=metric, pixel_size=sizes,
    )


def pair_files(
    image_dir: Path, label_dir: Path, image_glob: str = "*", label_suffix: str = ""
) -> list[tuple[Path, Path]]:
    """``(image, label)`` files paired by stem, sorted by name; one-line errors for images
    without labels and for stems that are ambiguous."""
    def supported(p: Path) -> bool:
        return not p.name.startswith(".") and p.suffix.lower() in SUPPORTED

    image_files = sorted(p for p in image_dir.glob(image_glob) if supported(p))
    if not image_files:
        raise SegunetError(
            f"no images matching {image_dir / image_glob} with a supported extension "
            f"({', '.join(SUPPORTED)}): check data.path and data.image_glob"
        )
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(label_dir.iterdir()):
        if supported(p):
            by_stem.setdefault(p.stem, []).append(p)
    seen: dict[str, Path] = {}
    pairs, missing = [], []
    for image_file in image_files:
        stem = image_file.stem
        if stem in seen:
            raise SegunetError(
                f"{seen[stem].name} and {image_file.name} in {image_dir} share the name "
                f"'{stem}': keep one, or narrow data.image_glob"
            )
        seen[stem] = image_file
        found = by_stem.get(stem + label_suffix, [])
        if len(found) > 1:
            raise SegunetError(
                f"{image_file.name} matches several label files in {label_dir} "
                f"({', '.join(p.name for p in found)}): keep one"
            )
        if found:
            pairs.append((image_file, found[0]))
        else:
            missing.append(image_file.name)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise SegunetError(
            f"no label in {label_dir} for {len(missing)} of {len(image_files)} images "
            f"({shown}): name each label <image stem>{label_suffix}.<ext> "
            f"(data.label_suffix='{label_suffix}')"
        )
    return pairs


def tiff_stack(
    path: str,
    volume: str = "train-volume.tif",
    labels: str = "train-labels.tif",
    **kwargs: object,
) -> SegmentationData:
    """A multi-page image stack ``path/volume`` and its label stack ``path/labels``: the
    ISBI 2012 and Lucchi layout. See :func:`stack` for the other settings."""
    root = Path(path)
    image_file, label_file = root / volume, root / labels
    dims = 3 if kwargs.get("slices_as") == "3d" else 2
    return stack(
        read_array(image_file), read_array(label_file), str(image_file), str(label_file),
        **{"name": root.name or "stack", **recorded_pixel_size(kwargs, image_file, None, dims)},
    )


def volume_file(
    path: str,
    image_key: str = "raw",
    label_key: str = "labels",
    targets: Targets = Targets(),
    slices_as: Literal["2d", "3d"] = "3d",
    **kwargs: object,
) -> SegmentationData:
    """Raw and label volumes stored as ``image_key`` and ``label_key`` of one HDF5 file or
    zarr store ``path`` (instance labels by default). See :func:`stack` for the other
    settings."""
    file, _ = split_key(path)
    dims = 3 if slices_as == "3d" else 2
    return stack(
        read_array(file, image_key), read_array(file, label_key), f"{file}:{image_key}",
        f"{file}:{label_key}", targets=targets, slices_as=slices_as,
        **{"name": file.stem or "volume", **recorded_pixel_size(kwargs, file, image_key, dims)},
    )


def stack(
    image: np.ndarray,
    labels: np.ndarray,
    image_source: str,
    label_source: str,
    targets: Targets = Targets(label_kind="binary"),
    class_names: Sequence[str] | None = None,
    channels: Count | None = None,
    slices_as: Literal["2d", "3d"] = "2d",
    percentiles: Sequence[Percentile] | None = (1.0, 99.8),
    val_fraction: ValFraction = 0.1,
    max_images: Count | None = None,
    patch_size: Sequence[Count] | None = None,
    foreground_oversample: Fraction = 0.0,
    name: str = "stack",
    target: Target = "foreground",
    metric: Metric = "dice",
    pixel_size: Sequence[Positive] | None = None,
) -> SegmentationData:
    """A ``(Z, Y, X)`` image stack (or with channels) and its label stack, as 2D slices or
    one 3D volume (``slices_as``).

    The stack is normalised as a whole (one acquisition, one intensity scale). The last
    ``val_fraction`` of the slices validate: whole slices in 2D, the end of the Z slab in
    3D; neighbouring slices are alike, so a contiguous split keeps validation honest.
    ``max_images`` keeps the first Z slices (quick runs and tests). ``targets``: how the
    labels become targets and weight maps (binary labels by default). ``pixel_size``: um
    per axis of a slice (2d) or the volume (3d); by default the one the file records.
    """
    if slices_as not in ("2d", "3d"):
        raise SegunetError(f"data.slices_as={slices_as!r}: use 2d or 3d")
    targets = Targets.of(targets)
    targets.check(target, metric)
    check_percentiles(percentiles)
    sizes = check_pixel_size(pixel_size, 3 if slices_as == "3d" else 2, "data.pixel_size")
    labels = label_image(labels, 3, label_source, "a stack needs several slices; use "
                         "data=folder for single images")
    image = image_channels_first(np.asarray(image), labels.shape, image_source, label_source)
    if max_images is not None:  # before normalising: use nothing of the slices left out
        image, labels = image[:, : int(max_images)], labels[: int(max_images)]
    image = prepare_image(image, channels, percentiles, image_source)
    depth = labels.shape[0]
    n_val = val_count(depth, val_fraction, "slices")
    if slices_as == "2d":
        names = [f"{name}_z{z:03d}" for z in range(depth)]
        parts = [(image[:, z], labels[z], f"{label_source} (slice {z})") for z in range(depth)]
    else:
        names = [f"{name}_train", f"{name}_val"]
        cut = depth - n_val
        parts = [(image[:, :cut], labels[:cut], label_source),
                 (image[:, cut:], labels[cut:], label_source)]
    volumes = targets.volumes(
        names, [np.ascontiguousarray(p[0]) for p in parts],
        [np.ascontiguousarray(p[1]) for p in parts], [p[2] for p in parts], target,
    )
    n_train = len(volumes) - (n_val if slices_as == "2d" else 1)
    return make_data(
        volumes[:n_train], volumes[n_train:],
        targets.num_classes_out(target),
        class_names_for(class_names, targets.label_kind, targets.num_classes, target),
        name, patch_size, foreground_oversample=foreground_oversample,
        target=target, metric=metric, pixel_size=sizes,
    )
