"""Where volumes come from: each public function here is the target of one ``data`` config.

- :func:`synthetic`: the embedded default, seeded microscopy-like cells (no files).
- :func:`folder`: ``images/<stem>.<ext>`` paired with ``masks/<stem>.<ext>`` (DSB 2018).
- :func:`tiff_stack`: a multi-page image stack and its label stack (ISBI 2012, Lucchi).
- :func:`volume_file`: raw and label arrays of one HDF5 file or zarr store.

Every source returns a :class:`SegmentationData`. Labels become class labels, ignore masks
and the paper's border weight maps here, once per whole image, before any cropping; images
are percentile-normalised per image and channel (:mod:`segunet.data.normalize`). How labels
become targets is the ``data.targets`` node (:class:`~segunet.data.labels.Targets`), the same
for every source. Label files come in three kinds (``data.targets.label_kind``):

- ``instances``: 0 is background, ``k > 0`` object ``k`` (weights from the instances,
  optionally after :func:`~segunet.data.weightmaps.separate_touching`);
- ``binary``: ``foreground_value`` (e.g. 255) is foreground, 0 background; the weight map's
  instances are the connected components of the foreground (for ISBI 2012, the cell
  interiors, which the membranes separate);
- ``classes``: class ids ``0 .. num_classes - 1``, weighted by class balancing only.

``ignore_value`` marks unlabelled pixels in any kind (sparse 3D annotation, for instance).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from segunet.config.schema import Count, Fraction, Positive, Range, SpatialDims
from segunet.data.datasets import SegmentationData, Volume
from segunet.data.io import SUPPORTED, read_array, read_pixel_size, split_key
from segunet.data.labels import Targets, label_image
from segunet.data.normalize import (
    DEFAULT_PERCENTILES,
    Percentile,
    Polarity,
    appearance,
    check_percentiles,
    check_polarity,
    image_channels_first,
    normalize_percentile,
    prepare_image,
)
from segunet.data.pixelsize import PixelSize, check_pixel_size, describe_pixel_size, spatial
from segunet.data.synthetic import synthetic_cells
from segunet.data.targets import TARGETS, Metric, Target
from segunet.errors import SegunetError

Seed = Annotated[int, Range(ge=0)]  # numpy's generators take no negative seed
ValFraction = Annotated[float, Range(gt=0, lt=1)]
#: ``data.balance``: draw images in proportion to their size (``none``), or temper that
#: across kinds of :func:`~segunet.data.normalize.appearance` (colour or grey, bright or dark
#: background): each kind in proportion to the square root of its image count
#: (``appearance``: a dataset of several modalities; :func:`~segunet.data.datasets.draw_shares`).
Balance = Literal["none", "appearance"]


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


def class_names_of(data: Mapping[str, Any], classes: int) -> list[str]:
    """The names of a trained net's ``classes`` output channels, from the ``data`` config
    stored with it: those training gave them (:func:`class_names_for`), or ``class0``,
    ``class1``, ... where that config names no such count. Predict's outputs and the
    bioimage.io package name the classes by this."""
    targets = data.get("targets") or {}
    try:
        names = class_names_for(data.get("class_names"), targets.get("label_kind", "instances"),
                                targets.get("num_classes", 2), data.get("target", "foreground"))
    except SegunetError:
        names = []
    return names if len(names) == classes else [f"class{i}" for i in range(classes)]


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
    balance: bool = False,
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
        balance=balance,
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
        f"{first} records pixel size {describe_pixel_size(size)} but {other} "
        f"{describe_pixel_size(sizes[other]) if sizes[other] else 'none'}: the model records "
        "no pixel size; set data.pixel_size=[...] (um per axis) if the images share one",
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
    percentiles: Sequence[Percentile] | None = DEFAULT_PERCENTILES,
    polarity: Polarity = "as_is",
    balance: Balance = "none",
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
    ``balance``: how training images are drawn (:data:`Balance`).
    ``targets``: how the labels become targets and weight maps (:class:`Targets`). ``target``
    and ``metric``: what the network learns and what validation scores
    (:mod:`segunet.data.targets`, :data:`segunet.data.targets.TASK_METRICS`). ``pixel_size``
    (um per axis) sets the one the model records; by default the one the image files
    share (:func:`common_pixel_size`).
    """
    targets = Targets.of(targets)
    targets.check(target, metric)
    check_percentiles(percentiles)
    check_polarity(polarity, percentiles)
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

    names, prepared, label_images, sources, groups = [], [], [], [], []
    for image_file, label_file in pairs:
        lab = label_image(read_array(label_file), spatial_dims, str(label_file))
        img = image_channels_first(read_array(image_file), lab.shape, str(image_file),
                                   str(label_file))
        if balance == "appearance":  # before channels and polarity change how it looks
            groups.append(appearance(normalize_percentile(
                img.astype(np.float32), *(percentiles or DEFAULT_PERCENTILES), channel_axis=0)))
        else:
            groups.append("")
        img = prepare_image(img, channels, percentiles, str(image_file), polarity)
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
    for volume, group in zip(volumes, groups):
        volume.group = group
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
        target=target, metric=metric, pixel_size=sizes, balance=balance == "appearance",
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
    percentiles: Sequence[Percentile] | None = DEFAULT_PERCENTILES,
    polarity: Polarity = "as_is",
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
    check_polarity(polarity, percentiles)
    sizes = check_pixel_size(pixel_size, 3 if slices_as == "3d" else 2, "data.pixel_size")
    labels = label_image(labels, 3, label_source, "a stack needs several slices; use "
                         "data=folder for single images")
    image = image_channels_first(np.asarray(image), labels.shape, image_source, label_source)
    if max_images is not None:  # before normalising: use nothing of the slices left out
        image, labels = image[:, : int(max_images)], labels[: int(max_images)]
    image = prepare_image(image, channels, percentiles, image_source, polarity)
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
