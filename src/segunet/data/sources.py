"""Where volumes come from: each function here is the target of one ``data`` config.

Every source returns a :class:`SegmentationData`; instance labels are turned into class
labels and border weight maps here, once per whole image, before any cropping.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segunet.data.datasets import SegmentationData, Volume
from segunet.data.synthetic import synthetic_cells
from segunet.data.weightmaps import border_weight_map, separate_touching


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
    """Foreground/background targets of an instance-labelled image, with the paper's weights.

    ``separate`` opens a one-pixel gap between touching instances (the authors' reference
    implementation), which the border term of the weight map then emphasises.
    """
    if separate:
        instances = separate_touching(instances)
    ignore = np.zeros(instances.shape, bool) if ignore is None else ignore.astype(bool)
    weight = border_weight_map(instances, w0, sigma, class_weights, valid=~ignore)
    image = image[None] if image.ndim == instances.ndim else image
    return Volume(
        name=name,
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=(instances > 0).astype(np.int64),
        weight=weight.astype(np.float32),
        ignore=ignore,
    )


def sparse_slices_ignore(shape: Sequence[int], every: int, offset: int = 0) -> np.ndarray:
    """Ignore mask keeping only every ``every``-th slice along the first axis annotated: the
    sparse annotation of Cicek et al. (2016), where a few labelled slices train a 3D net."""
    ignore = np.ones(shape, bool)
    ignore[offset::every] = False
    return ignore


def synthetic(
    n_train: int = 24,
    n_val: int = 4,
    shape: Sequence[int] = (256, 256),
    seed: int = 0,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | None = "balanced",
    separate_touching: bool = True,
    sparse_every: int | None = None,
    patch_size: Sequence[int] | None = None,
    augment: bool = True,
) -> SegmentationData:
    """The embedded default data: seeded microscopy-like cells (2D) or volumes (3D ``shape``).

    Train and validation images come from disjoint seeds. ``sparse_every`` (3D) leaves all
    but every n-th slice of the training volumes unlabelled.
    """
    shape = tuple(int(s) for s in shape)

    def make(i: int, sparse: bool) -> Volume:
        image, instances = synthetic_cells(shape, seed=seed * 100_003 + i)
        ignore = None
        if sparse and sparse_every and len(shape) == 3:
            ignore = sparse_slices_ignore(shape, sparse_every, offset=i % sparse_every)
        return volume_from_instances(
            f"synthetic_{i:04d}", image, instances, w0, sigma, class_weights,
            separate_touching, ignore,
        )

    train = [make(i, sparse=True) for i in range(n_train)]
    val = [make(n_train + i, sparse=False) for i in range(n_val)]
    return SegmentationData(
        train=train,
        val=val,
        num_classes=2,
        patch_size=tuple(patch_size) if patch_size is not None else None,
        augment=augment,
        name="synthetic",
        class_names=["background", "cell"],
    )
