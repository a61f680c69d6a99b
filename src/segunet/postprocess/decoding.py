"""Post-processing: how class probabilities become objects, and the search that chooses its
settings on the validation images (kept in the checkpoint, used by ``segunet predict``).

Each training target has its decoding (:mod:`segunet.data.targets`): connected components of
the thresholded foreground, optionally grown back into the gaps between touching objects
(``foreground``), or a seeded watershed on the boundary probability (``boundary``). Both drop
objects below a minimum size. The search scores every combination of a small grid by the
task's metric (``data.metric``) and keeps the best; decoding once per combination of the
settings that shape objects and only re-filtering sizes keeps it cheap.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from segunet.config.args import check_range, option
from segunet.data.tiling import blocks
from segunet.errors import SegunetError
from segunet.eval.metrics import TaskScorer
from segunet.postprocess.instances import (
    WatershedOn,
    foreground_probability,
    grow_into_gaps,
    instances_from_boundary,
    instances_from_foreground,
    relabel_sequential,
    remove_small,
)


@dataclasses.dataclass(frozen=True)
class PostProcess:
    """Decoding settings. ``threshold``: foreground probability; ``min_size``: smallest
    object kept, in pixels; ``grow``: (foreground target) gaps up to ``2 * grow`` pixels wide
    between touching objects are closed
    (:func:`~segunet.postprocess.instances.grow_into_gaps`), 0 for none; ``seed_threshold``:
    (boundary target) interior probability of a watershed seed; ``tta``: predict under the 8
    flips/rotations."""

    threshold: float = 0.5
    min_size: int = 0
    grow: int = 0
    seed_threshold: float = 0.5
    tta: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PostProcess:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise SegunetError(
                f"unknown post-processing settings {sorted(unknown)}: use {sorted(known)}"
            )
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The grid searched per target (``tta`` is added when the caller has both predictions).
GRIDS: dict[str, dict[str, Sequence[Any]]] = {
    "foreground": {
        "threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
        "grow": (0, 1, 2),
        "min_size": (0, 8, 16, 32, 64, 128),
    },
    "boundary": {
        "threshold": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
        "seed_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        "min_size": (0, 8, 16, 32, 64, 128),
    },
}
#: Settings applied after an object map exists: varied without decoding again.
_AFTER = ("min_size",)


def decode(probs: np.ndarray, target: str, post: PostProcess = PostProcess()) -> np.ndarray:
    """Objects (int32 labels, 0 background) of ``(C, *spatial)`` probabilities of a net
    trained on ``target``."""
    return _filtered(_objects(probs, target, post), post.min_size)


def decode_foreground(foreground: np.ndarray, post: PostProcess = PostProcess()) -> np.ndarray:
    """Objects of the ``foreground`` target from the foreground probability ``(*spatial)``
    alone (what a large image's prediction reduces to, block by block)."""
    labels = instances_from_foreground(foreground, post.threshold, "components")
    return _filtered(grow_into_gaps(labels, post.grow), post.min_size)


def decode_boundary(
    interior: np.ndarray, boundary: np.ndarray, post: PostProcess = PostProcess()
) -> np.ndarray:
    """Objects of the ``boundary`` target from its interior and boundary probabilities."""
    return instances_from_boundary(interior, boundary, post.threshold, post.seed_threshold,
                                   post.min_size)


def _objects(probs: np.ndarray, target: str, post: PostProcess) -> np.ndarray:
    if target == "boundary":
        if probs.shape[0] != 3:
            raise ValueError(f"boundary-target probabilities are (3, *spatial), not {probs.shape}")
        return instances_from_boundary(probs[1], probs[2], post.threshold, post.seed_threshold)
    foreground = foreground_probability(probs, range(1, probs.shape[0]))
    labels = instances_from_foreground(foreground, post.threshold, "components")
    return grow_into_gaps(labels, post.grow)


def _filtered(labels: np.ndarray, min_size: int) -> np.ndarray:
    return relabel_sequential(remove_small(labels, min_size)) if min_size > 0 else labels


def search(
    probs: Mapping[bool, Sequence[np.ndarray]],
    truths: Sequence[np.ndarray],
    target: str,
    metric: str,
    grid: Mapping[str, Sequence[Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[PostProcess, list[dict[str, Any]]]:
    """The settings of ``grid`` (default :data:`GRIDS` of ``target``) with the best mean
    ``metric`` over the images, and the table of every combination tried (best first).

    ``probs[tta]``: each image's probabilities, without (``False``) and, if searched, with
    (``True``) test-time augmentation; ``truths``: each image's ground-truth objects (with
    ignored pixels 0 in both). Scores as :class:`~segunet.eval.metrics.TaskScorer` pools them.
    Ties go to the earlier combination of the grid (``tta`` off first).
    """
    grid = dict(GRIDS[target] if grid is None else grid)
    shaping = {k: v for k, v in grid.items() if k not in _AFTER}
    after = {k: v for k, v in grid.items() if k in _AFTER}
    rows = []
    combos = [dict(zip(shaping, c)) for c in itertools.product(*shaping.values())]
    total, done = len(probs) * len(combos), 0
    for tta, images in sorted(probs.items()):
        for combo in combos:
            post = PostProcess(tta=tta, **combo)
            objects = [_objects(p, target, post) for p in images]
            for rest in itertools.product(*after.values()):
                final = dataclasses.replace(post, **dict(zip(after, rest)))
                scorer = TaskScorer(metric)
                for o, t in zip(objects, truths):
                    scorer.update(_filtered(o, final.min_size), t)
                rows.append({**final.as_dict(), metric: scorer.compute()})
            done += 1
            if progress is not None:
                progress(done, total)
    order = sorted(range(len(rows)), key=lambda i: (-rows[i][metric], i))
    rows = [rows[i] for i in order]
    best = {k: v for k, v in rows[0].items() if k != metric}
    return PostProcess.from_dict(best), rows


def format_table(rows: Sequence[Mapping[str, Any]], metric: str, limit: int = 10) -> str:
    """The best ``limit`` rows of a search as a Markdown table (log and TensorBoard)."""
    if not rows:
        return ""
    keys = [k for k in rows[0] if k != metric and len({r[k] for r in rows}) > 1] + [metric]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows[:limit]:
        cells = [f"{row[k]:g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        cells[-1] = f"{row[metric]:.4f}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- decoding the probabilities of segunet predict ----------------------------------------


def class_dtype(classes: int) -> np.dtype:
    """Of a label map of ``classes`` classes: uint8, or uint16 beyond 256."""
    return np.dtype(np.uint8 if classes <= 256 else np.uint16)


def foreground_of(probs: Any, classes: Sequence[int], rows: int) -> np.ndarray:
    """Summed foreground probability ``(*spatial)`` float32, read ``rows`` at a time along the
    first spatial axis (so class probabilities on disk never come into memory whole)."""
    out = np.empty(probs.shape[1:], np.float32)
    for s in blocks(probs.shape[1], rows):
        out[s] = np.asarray(probs[list(classes), s], np.float32).sum(0)
    return out


def argmax_of(probs: Any, rows: int, out: Any = None) -> Any:
    """The most probable class ``(*spatial)`` (uint8, or uint16 beyond 256 classes), read and
    written ``rows`` at a time along the first spatial axis: into ``out`` (a zarr array, so
    the label map never comes into memory whole) or a new numpy array."""
    dtype = class_dtype(probs.shape[0])
    out = np.empty(probs.shape[1:], dtype) if out is None else out
    for s in blocks(probs.shape[1], rows):
        out[s] = np.asarray(probs[:, s]).argmax(0).astype(dtype)
    return out


@dataclasses.dataclass
class InstancesConfig:
    """``instances.*``: how the objects of the ``instances`` output are made."""

    method: Literal["auto", "components", "watershed"] = option(
        "auto", "auto: the decoding of the checkpoint's training target with the settings "
        "`segunet tune` or training chose on its validation images (else the defaults); "
        "components or watershed: connected components or a watershed of the foreground")
    threshold: float | None = option(None, "foreground probability (null: as tuned, else 0.5)")
    min_size: int | None = option(
        None, "objects of fewer pixels are removed (null: as tuned, else 0)")
    seed_threshold: float | None = option(
        None, "boundary target: interior probability of a seed (null: as tuned, else 0.5)")
    grow: int | None = option(
        None, "foreground target: close gaps up to 2*grow px between touching objects "
        "(null: as tuned, else 0)")
    watershed_on: WatershedOn = option("distance", "what the watershed method floods")
    min_distance: int = option(3, "the watershed method: least distance between seeds, px")
    h: float | None = option(
        None, "the watershed method: seeds are h-maxima of this height; null: peaks "
        "(peak_local_max)")
    foreground_classes: list[int] | None = option(
        None, "the classes that are foreground, e.g. 1,2 (null: all but 0)")
    halo: int | None = option(
        None, "zarr and OME-Zarr outputs, decoded block by block: the context around each "
        "block, px, wider than the largest object (null: twice the training objects' upper "
        "quartile width, at least 64)")

    def __post_init__(self) -> None:
        # Checked before predicting: a bad value would otherwise stop the run with the
        # probabilities and labels already written.
        for key in ("threshold", "seed_threshold"):
            value = getattr(self, key)
            check_range(f"instances.{key}", value, value is None or 0 <= value < 1,
                        "a probability, 0 <= p < 1")
        for key, low in (("min_size", 0), ("grow", 0), ("min_distance", 1)):
            value = getattr(self, key)
            check_range(f"instances.{key}", value, value is None or value >= low,
                        f"a whole number >= {low}")
        check_range("instances.h", self.h, self.h is None or self.h > 0,
                    "h > 0 (or null for peak_local_max seeds)")
        check_range("instances.halo", self.halo, self.halo is None or self.halo >= 1,
                    "a whole number of pixels >= 1")

    def given(self) -> dict[str, Any]:
        """The decoding settings given (None: as tuned, or the default)."""
        return {"threshold": self.threshold, "seed_threshold": self.seed_threshold,
                "min_size": self.min_size, "grow": self.grow}

    def of_foreground(self) -> dict[str, Any]:
        """The keyword arguments of
        :func:`~segunet.postprocess.instances.instances_from_foreground`."""
        return {
            "method": "components" if self.method == "auto" else self.method,
            "min_size": self.min_size or 0,
            "threshold": 0.5 if self.threshold is None else self.threshold,
            "watershed_on": self.watershed_on, "min_distance": self.min_distance, "h": self.h,
        }


@dataclasses.dataclass(frozen=True)
class Decoder:
    """How the instances are made: with ``instances.method=auto`` the decoding of the
    checkpoint's training target (:mod:`segunet.postprocess.decoding`) with its tuned settings, each
    overridden by an ``instances.*`` key given; else the components or watershed of the
    foreground (:func:`segunet.postprocess.instances.instances_from_foreground`)."""

    target: str
    post: PostProcess | None  # None: the components/watershed method of ``instances``
    instances: dict[str, Any]
    tuned: bool = False
    halo: int | None = None  # instances.halo: of the blocks of a streamed decoding

    @classmethod
    def of(cls, instances: InstancesConfig, config: dict, tuned: dict | None) -> Decoder:
        target = (config.get("data") or {}).get("target", "foreground")
        if instances.method != "auto":
            return cls(target, None, instances.of_foreground(), halo=instances.halo)
        base = PostProcess.from_dict(tuned["settings"]) if tuned else PostProcess()
        given = {k: v for k, v in instances.given().items() if v is not None}
        return cls(target, dataclasses.replace(base, **given), {}, tuned is not None,
                   instances.halo)

    @property
    def min_size(self) -> int:
        return int((self.post.min_size if self.post else self.instances["min_size"]) or 0)

    @property
    def grow(self) -> int:
        return int(self.post.grow) if self.post else 0

    def without_min_size(self) -> Decoder:
        """This decoding keeping every object: a block's, whose small pieces may belong to
        objects that go on in the next block (see :mod:`segunet.postprocess.streamed`)."""
        if self.post is None:
            return dataclasses.replace(self, instances={**self.instances, "min_size": 0})
        return dataclasses.replace(self, post=dataclasses.replace(self.post, min_size=0))

    def __call__(self, probs: Any, foreground: Sequence[int], rows: int) -> np.ndarray:
        """Objects of ``probs`` ``(C, *spatial)`` (an array or a zarr store on disk, read
        ``rows`` at a time: only the maps a decoding needs come into memory)."""
        if self.post is None:
            return instances_from_foreground(foreground_of(probs, foreground, rows),
                                             **self.instances)
        if self.target == "boundary":
            interior, boundary = (foreground_of(probs, [k], rows) for k in (1, 2))
            return decode_boundary(interior, boundary, self.post)
        return decode_foreground(foreground_of(probs, foreground, rows), self.post)

    def describe(self) -> str:
        if self.post is None:
            return f"instances by {self.instances['method']}"
        settings = ", ".join(f"{k}={v}" for k, v in self.post.as_dict().items())
        how = "tuned on its validation images" if self.tuned else "defaults (never tuned)"
        return f"instances of the {self.target} target, {how}: {settings}"
