"""Label files into training targets: the ``data.targets`` node (:class:`Targets`), the
label kinds (instances, binary, classes), class-balance and border weight maps, and the
volumes a source trains on."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import numpy as np
from scipy import ndimage as ndi

from segunet.config.schema import Count, Positive, Range, check_ranges
from segunet.data.datasets import Volume
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
from segunet.data.weightmaps import MAX_W0, border_weight_map
from segunet.data.weightmaps import separate_touching as separate_touching_instances
from segunet.data.weightmaps_cache import AUTO, cache_root
from segunet.errors import SegunetError

LabelKind = Literal["instances", "binary", "classes"]


LABEL_KINDS = ("instances", "binary", "classes")


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
    w0: Annotated[float, Range(ge=0, le=MAX_W0,
                               words="must be a finite number >= 0 (0: no border term)")] = 10.0
    # sigma divides: 0 gives NaN weights (inf is out of every Range)
    sigma: Annotated[float, Range(gt=0, words="must be a finite number > 0 "
                                  "(pixels, or the units of spacing)")] = 5.0
    class_weights: Literal["balanced"] | None = "balanced"
    spacing: Sequence[Positive] | None = None
    cache_dir: str | None = AUTO  # the per-user cache folder; None: no cache
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
