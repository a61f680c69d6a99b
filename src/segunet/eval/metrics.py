"""Segmentation metrics of the field, on label maps.

Two halves:

- Training-time overlap (torch): :class:`OverlapCounter` / :func:`dice_iou`. Dice =
  2|P & G| / (|P| + |G|), IoU = |P & G| / |P | G|, per foreground class, averaged over classes.
  A class absent from both prediction and ground truth scores 1 (nothing to find, nothing
  falsely found), as in the Cell Tracking Challenge convention.
- Evaluation (numpy in, floats out): semantic Dice/IoU/pixel error, the ISBI 2012
  foreground-restricted Rand error and variation of information, DSB 2018 instance AP, the
  Cell Tracking Challenge SEG measure, split/merge counts, and :func:`evaluate_pair`, which
  computes all that apply to one prediction/ground-truth pair.

All evaluation functions take ``(pred, gt)`` in that order (skimage's take ``(true, test)``).
Instance maps: 0 is background, every other value one object. Every pairwise score comes
from one sparse contingency table (:func:`segunet.eval.matching.contingency`), so each image
is sorted once per table, never compared object by object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from segunet.data.targets import check_metric
from segunet.eval.matching import (
    Contingency,
    ObjectPairs,
    check_same_shape,
    contingency,
    object_pairs,
    true_positives,
)


class OverlapCounter:
    """Accumulates per-class intersection and sizes so metrics cover a whole dataset.

    Counting first and dividing last gives the dataset-level Dice, not the mean of per-tile
    Dice values, which small, nearly empty tiles would distort.
    """

    def __init__(self, num_classes: int, ignore_background: bool = True) -> None:
        self.num_classes = num_classes
        self.first = 1 if ignore_background and num_classes > 1 else 0
        self.inter = torch.zeros(num_classes, dtype=torch.float64)
        self.pred = torch.zeros(num_classes, dtype=torch.float64)
        self.true = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """``pred``, ``target``: integer label maps of equal shape; ``valid``: bool mask."""
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        if valid is not None:
            keep = valid.reshape(-1).bool()
            pred, target = pred[keep], target[keep]
        k = self.num_classes
        # One bincount over (pred, target) pairs gives the confusion matrix in a single pass.
        cm = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k).double().cpu()
        self.inter += cm.diagonal()
        self.pred += cm.sum(0)
        self.true += cm.sum(1)

    def compute(self) -> dict[str, float]:
        inter, pred, true = (t[self.first :] for t in (self.inter, self.pred, self.true))
        union = pred + true - inter
        empty = (pred + true) == 0
        dice = torch.where(empty, 1.0, 2 * inter / (pred + true).clamp_min(1))
        iou = torch.where(empty, 1.0, inter / union.clamp_min(1))
        return {"dice": dice.mean().item(), "iou": iou.mean().item()}


def dice_iou(
    pred: Tensor, target: Tensor, num_classes: int, valid: Tensor | None = None
) -> dict[str, float]:
    """Mean foreground Dice and IoU of two label maps (see :class:`OverlapCounter`)."""
    counter = OverlapCounter(num_classes)
    counter.update(pred, target, valid)
    return counter.compute()


# --- evaluation: numpy label maps in, floats out ------------------------------------------

#: The DSB 2018 IoU thresholds 0.5, 0.55, ..., 0.95 (rounded so 0.55 is 0.55, not 0.5500001).
DSB_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())


# --- semantic: Dice, IoU, pixel error -------------------------------------------------------


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """``(num_classes, num_classes)`` counts, rows the ground-truth class, columns the
    predicted one, over the pixels where ``valid`` is true (all when None). Dense: its size
    is ``num_classes**2`` whatever the maps hold (:func:`semantic_scores` needs none)."""
    pred, gt = _labelled(pred, gt, valid)
    _check_classes(pred, gt, num_classes)
    k = num_classes
    pred, gt = pred.reshape(-1).astype(np.int64), gt.reshape(-1).astype(np.int64)
    return np.bincount(gt * k + pred, minlength=k * k).reshape(k, k)


def _labelled(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The two maps (checked to match) over the pixels where ``valid`` is true."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    check_same_shape(pred, gt)
    if valid is not None:
        keep = np.asarray(valid, dtype=bool)
        pred, gt = pred[keep], gt[keep]
    return pred, gt


def _check_classes(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> None:
    for name, a in (("prediction", pred), ("ground truth", gt)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(
                f"{name} holds class {a.min() if a.min() < 0 else a.max()}, "
                f"outside 0..{num_classes - 1} (num_classes={num_classes})"
            )


def _class_counts(
    pred: np.ndarray, gt: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, inter, size_pred, size_gt)`` of the classes present in either map: their
    pixels in both, in the prediction, in the ground truth. Through the dense confusion
    matrix when it is small next to the image (one bincount), else the sparse contingency
    table, so memory never grows with ``num_classes**2``."""
    if num_classes**2 <= 4 * pred.size + 2**16:
        cm = confusion_matrix(pred, gt, num_classes)  # checks the classes
        inter, size_pred, size_gt = cm.diagonal(), cm.sum(0), cm.sum(1)
        classes = np.flatnonzero(size_pred + size_gt)
        return classes, inter[classes], size_pred[classes], size_gt[classes]
    _check_classes(pred, gt, num_classes)
    table = contingency(pred, gt)
    classes = np.union1d(table.gt_labels, table.pred_labels)
    size_gt, size_pred, inter = (np.zeros(len(classes), np.int64) for _ in range(3))
    size_gt[np.searchsorted(classes, table.gt_labels)] = table.gt_sizes
    size_pred[np.searchsorted(classes, table.pred_labels)] = table.pred_sizes
    gt_of, pred_of = table.gt_labels[table.gt_index], table.pred_labels[table.pred_index]
    same = gt_of == pred_of
    inter[np.searchsorted(classes, gt_of[same])] = table.counts[same]
    return classes, inter, size_pred, size_gt


def semantic_scores(
    pred: np.ndarray, gt: np.ndarray, num_classes: int = 2, valid: np.ndarray | None = None
) -> dict[str, float]:
    """Mean foreground Dice and IoU, and the pixel error, of two class maps.

    Dice and IoU per class 1..K-1 (class 0, the background, is left out when K > 1) with the
    module's convention that a class absent from both maps scores 1: the numpy twin of
    :func:`dice_iou`. Pixel error = 1 - (pixels whose class is right) / (labelled pixels),
    the ISBI 2012 challenge's pixel error (Arganda-Carreras et al., Front. Neuroanat. 2015);
    "labelled" means inside ``valid``. Memory grows with the classes present, not with
    ``num_classes`` (see :func:`_class_counts`).
    """
    pred, gt = _labelled(pred, gt, valid)
    if bool(pred.dtype == bool):
        pred = pred.view(np.uint8)
    if bool(gt.dtype == bool):
        gt = gt.view(np.uint8)
    classes, inter, size_pred, size_gt = (
        a.astype(np.float64) for a in _class_counts(pred, gt, num_classes))
    first = 1 if num_classes > 1 else 0
    fg = classes >= first
    both = size_pred[fg] + size_gt[fg]
    dice = 2 * inter[fg] / np.maximum(both, 1)
    iou = inter[fg] / np.maximum(both - inter[fg], 1)
    absent = (num_classes - first) - int(fg.sum())  # classes in neither map: each scores 1
    total = size_gt.sum()
    error = 1.0 - inter.sum() / total if total else 0.0
    return {"dice": float((dice.sum() + absent) / (num_classes - first)),
            "iou": float((iou.sum() + absent) / (num_classes - first)),
            "pixel_error": float(error)}


# --- ISBI 2012: Rand error and variation of information --------------------------------------


def adapted_rand_error(
    pred: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = (0,)
) -> tuple[float, float, float]:
    """``(error, precision, recall)``: the foreground-restricted Rand error of the ISBI 2012
    and SNEMI3D challenges (Arganda-Carreras et al., Front. Neuroanat. 9:142, 2015).

    With ``n_ij`` the pixels of ground-truth segment i and predicted segment j, ``s_j`` and
    ``t_i`` the segment sizes, and pixel pairs counted as ``n(n - 1)``::

        precision = sum n_ij(n_ij - 1) / sum s_j(s_j - 1)   (pairs joined in the prediction
                                                            that the ground truth joins too)
        recall    = sum n_ij(n_ij - 1) / sum t_i(t_i - 1)   (pairs joined in the ground truth
                                                            that the prediction recovers)
        error     = 1 - 2 * sum n_ij(n_ij - 1) / (sum s_j(s_j - 1) + sum t_i(t_i - 1))

    Pixels whose ground-truth label is in ``ignore_labels`` (default: background 0) are left
    out; predicted label 0 is an ordinary segment. ``error`` equals
    :func:`skimage.metrics.adapted_rand_error`'s; its precision and recall are ours swapped
    (skimage divides its "precision" by the ground-truth pairs: scikit-image issue #6485), so
    over-segmentation lowers recall here, as the challenge defines it. Without any joined pair
    on a side that side's ratio is 1 (nothing to get wrong).
    """
    return _rand(contingency(pred, gt, ignore_labels))


def _rand(table: Contingency) -> tuple[float, float, float]:
    def pairs(n: np.ndarray) -> float:
        n = n.astype(np.float64)  # n^2 overflows int64 on large volumes
        return float(n @ n - n.sum())

    both, in_pred, in_gt = pairs(table.counts), pairs(table.pred_sizes), pairs(table.gt_sizes)
    precision = both / in_pred if in_pred else 1.0
    recall = both / in_gt if in_gt else 1.0
    error = 1.0 - 2 * both / (in_pred + in_gt) if in_pred + in_gt else 0.0
    return error, precision, recall


def variation_of_information(
    pred: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = ()
) -> tuple[float, float]:
    """``(split, merge)``: the two conditional entropies whose sum is the variation of
    information VI = H(P|G) + H(G|P) (Meila, J. Multivar. Anal. 98:873, 2007), in bits.

    With ``p_ij`` the joint label distribution of ground truth i and prediction j over the
    pixels kept, ``p_i`` and ``q_j`` its marginals::

        split = H(P|G) = -sum p_ij log2(p_ij / p_i)   (over-segmentation)
        merge = H(G|P) = -sum p_ij log2(p_ij / q_j)   (under-segmentation)

    Same values and ``ignore_labels`` meaning (ground-truth labels to skip) as
    :func:`skimage.metrics.variation_of_information`; pass ``(0,)`` for the ISBI 2012
    foreground-restricted version.
    """
    return _vi(contingency(pred, gt, ignore_labels))


def _vi(table: Contingency) -> tuple[float, float]:
    if table.total == 0:
        return 0.0, 0.0
    p = table.counts / table.total
    # -log2(p_ij / p_i) written as log2(p_i / p_ij) >= 0, so a perfect match gives 0.0, not -0.0
    split = np.sum(p * np.log2(table.gt_sizes[table.gt_index] / table.counts))
    merge = np.sum(p * np.log2(table.pred_sizes[table.pred_index] / table.counts))
    return float(split), float(merge)


def isbi_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """``{"vrand": ..., "vinfo": ...}``: the ISBI 2012 challenge's foreground-restricted
    Rand and information-theoretic scores (Arganda-Carreras et al., Front. Neuroanat. 9:142,
    2015, with alpha = 0.5), higher is better, 1 for a perfect segmentation.

    Over the pixels whose ground-truth label is not 0 (the membranes), with ``p_ij`` the
    joint distribution of ground-truth segment i and predicted segment j and ``t_i``, ``s_j``
    its marginals::

        V_Rand = sum p_ij^2 / (0.5 sum s_j^2 + 0.5 sum t_i^2)
        V_Info = I(S; T) / (0.5 H(S) + 0.5 H(T))

    (entropies in any base; mutual information ``I = H(S) + H(T) - H(S, T)``). A predicted
    label 0 inside a cell is one more segment, as in the challenge's evaluation of a
    thresholded boundary map. Two constant segmentations give V_Info 1.
    """
    return _isbi(contingency(pred, gt, ignore_labels=(0,)))


def _isbi(table: Contingency) -> dict[str, float]:
    if table.total == 0:
        return {"vrand": 1.0, "vinfo": 1.0}
    p = table.counts / table.total
    s = table.pred_sizes[table.pred_sizes > 0] / table.total
    t = table.gt_sizes[table.gt_sizes > 0] / table.total
    vrand = float(np.sum(p**2) / (0.5 * np.sum(s**2) + 0.5 * np.sum(t**2)))

    def entropy(q: np.ndarray) -> float:
        return float(-np.sum(q * np.log(q)))

    h_s, h_t = entropy(s), entropy(t)
    mutual = h_s + h_t - entropy(p)
    vinfo = 1.0 if h_s + h_t == 0 else float(mutual / (0.5 * h_s + 0.5 * h_t))
    return {"vrand": vrand, "vinfo": vinfo}


# --- instances: DSB 2018 AP, CTC SEG, splits and merges --------------------------------------


def average_precision(
    pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = DSB_THRESHOLDS
) -> dict[float, float]:
    """The Data Science Bowl 2018 "average precision" at each IoU threshold t::

        AP(t) = TP(t) / (TP(t) + FP(t) + FN(t))

    TP: predicted objects matched one-to-one to a ground-truth object with IoU > t; FP: the
    unmatched predicted objects; FN: the unmatched ground-truth objects (Caicedo et al.,
    Nature Methods 16:1247, 2019). Its mean over :data:`DSB_THRESHOLDS` is the challenge's
    per-image score. No objects on either side scores 1.
    """
    return _ap(object_pairs(contingency(pred, gt)), thresholds)


def _ap(pairs: ObjectPairs, thresholds: Sequence[float]) -> dict[float, float]:
    scores = {}
    for t in thresholds:
        tp = true_positives(pairs, t)
        denominator = pairs.n_gt + pairs.n_pred - tp  # TP + FP + FN
        scores[float(t)] = tp / denominator if denominator else 1.0
    return scores


def seg_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """The Cell Tracking Challenge SEG measure (Ulman et al., Nature Methods 14:1141, 2017).

    For each ground-truth object R, the Jaccard index |R & S| / |R | S| with the predicted
    object S that covers more than half of it (|R & S| > 0.5 |R|; at most one can), or 0
    when none does; SEG is the mean over ground-truth objects. False positives do not count.
    No ground-truth objects: 1 if the prediction is empty too, else 0 (the module's
    absent-class convention; the challenge leaves this case undefined).
    """
    return _seg(object_pairs(contingency(pred, gt)))


def _seg(pairs: ObjectPairs) -> float:
    if pairs.n_gt == 0:
        return 1.0 if pairs.n_pred == 0 else 0.0
    covers = pairs.inter > 0.5 * pairs.gt_size
    return float(pairs.iou[covers].sum() / pairs.n_gt)


def split_merge_counts(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    """``{"splits": ..., "merges": ...}``: over- and under-segmented objects.

    One relation, "A covers more than half of B" (|A & B| > 0.5 |B|, the CTC SEG criterion,
    which at most one A can meet for a given B), read both ways:

    - a ground-truth object is **split** when it covers more than half of each of two or more
      predicted objects (two or more predictions lie mostly inside it);
    - a predicted object is a **merge** when it covers more than half of each of two or more
      ground-truth objects.

    ``splits`` counts ground-truth objects, ``merges`` predicted objects. A prediction that
    straddles two objects without covering most of either counts as neither (it fails AP and
    SEG instead).
    """
    return _split_merge(object_pairs(contingency(pred, gt)))


def _split_merge(pairs: ObjectPairs) -> dict[str, int]:
    pred_inside = pairs.inter > 0.5 * pairs.pred_size  # the GT object covers this prediction
    gt_inside = pairs.inter > 0.5 * pairs.gt_size  # the prediction covers this GT object
    per_gt = np.bincount(pairs.gt[pred_inside], minlength=pairs.n_gt)
    per_pred = np.bincount(pairs.pred[gt_inside], minlength=pairs.n_pred)
    return {"splits": int(np.count_nonzero(per_gt >= 2)),
            "merges": int(np.count_nonzero(per_pred >= 2))}


# --- the score a task is judged by ------------------------------------------------------------

# The task metrics' names (Metric, TASK_METRICS, check_metric) are data.targets': a
# source's config carries data.metric, and data imports nothing from eval.


def metric_key(metric: str) -> str:
    """The name a task metric is logged under (``val/<key>``): ``iou`` is the foreground
    IoU, not the class-mean ``val/iou`` logged beside it."""
    return {"iou": "foreground_iou"}.get(metric, metric)


def task_score(metric: str, pred: np.ndarray, gt: np.ndarray) -> float:
    """``metric`` of one image: ``pred`` and ``gt`` are instance maps (0 = background) for
    ``ap``, ``vrand`` and ``iou`` (which compares their foregrounds)."""
    if metric == "ap":
        return float(np.mean(list(average_precision(pred, gt).values())))
    if metric == "vrand":
        return isbi_scores(pred, gt)["vrand"]
    if metric == "iou":
        return semantic_scores(pred != 0, gt != 0, 2)["iou"]
    raise ValueError(f"no per-image score for metric {metric!r}")


class TaskScorer:
    """A task metric over several images: the mean of the per-image DSB mean AP or V_Rand,
    or the foreground IoU of all pixels pooled (as Lucchi et al. score a volume)."""

    def __init__(self, metric: str) -> None:
        check_metric(metric)
        if metric == "dice":
            raise ValueError("pixel Dice comes from the class maps (OverlapCounter)")
        self.metric = metric
        self.scores: list[float] = []
        self.inter = self.union = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> None:
        """``pred``, ``gt``: instance maps of one image; ``valid``: its labelled pixels."""
        if valid is not None:
            pred, gt = np.where(valid, pred, 0), np.where(valid, gt, 0)
        if self.metric == "iou":
            self.inter += int(np.count_nonzero((pred != 0) & (gt != 0)))
            self.union += int(np.count_nonzero((pred != 0) | (gt != 0)))
        else:
            self.scores.append(task_score(self.metric, pred, gt))

    def compute(self) -> float:
        if self.metric == "iou":
            return self.inter / self.union if self.union else 1.0
        return float(np.mean(self.scores)) if self.scores else float("nan")


# --- all of it for one pair ---------------------------------------------------------------

Kind = Literal["auto", "semantic", "instances"]


def _is_binary(a: np.ndarray) -> bool:
    """At most one non-zero value: a foreground mask (0/1, 0/255, True/False)."""
    nonzero = a[a != 0]
    return nonzero.size == 0 or bool(np.all(nonzero == nonzero.flat[0]))


def _components(mask: np.ndarray) -> np.ndarray:
    """Connected components of a foreground mask, face-connected (4 in 2D, 6 in 3D), so
    objects touching only at a corner stay apart, as across a thin diagonal membrane."""
    from scipy import ndimage

    return ndimage.label(mask)[0]


def instance_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Every instance metric of two instance maps (0 = background): DSB mean AP, AP@0.5,
    AP@0.75, CTC SEG, the foreground-restricted Rand error / precision / recall, VI
    split / merge and the ISBI 2012 V_Rand / V_Info (ground-truth background ignored, as in
    ISBI 2012; predicted background is one segment there, as in skimage), split and merge
    counts, and the object counts."""
    table = contingency(pred, gt)  # one table serves every score
    pairs = object_pairs(table)
    ap = _ap(pairs, DSB_THRESHOLDS)
    foreground = table.without_gt(0)
    error, precision, recall = _rand(foreground)
    vi_split, vi_merge = _vi(foreground)
    counts = _split_merge(pairs)
    return {
        "mean_ap": float(np.mean(list(ap.values()))), "ap50": ap[0.5], "ap75": ap[0.75],
        "seg": _seg(pairs),
        "rand_error": error, "rand_precision": precision, "rand_recall": recall,
        "vi_split": vi_split, "vi_merge": vi_merge, **_isbi(foreground),
        "splits": float(counts["splits"]), "merges": float(counts["merges"]),
        "n_gt": float(pairs.n_gt), "n_pred": float(pairs.n_pred),
    }


def resolve_kind(pred: np.ndarray, gt: np.ndarray, kind: Kind = "auto",
                 num_classes: int | None = None) -> str:
    """``auto`` reads as ``semantic`` when ``num_classes`` > 2 is given or both maps are
    binary masks, else as ``instances``."""
    if kind not in ("auto", "semantic", "instances"):
        raise ValueError(f"kind must be auto, semantic or instances, not {kind!r}")
    if kind != "auto":
        return kind
    if (num_classes or 2) > 2 or (_is_binary(pred) and _is_binary(gt)):
        return "semantic"
    return "instances"


#: The most classes ``num_classes=None`` infers from a semantic map (its largest class + 1):
#: what a uint8 label map holds. Beyond it the classes absent from both maps (each scoring
#: 1) would swamp the mean, so the count must be given.
MAX_INFERRED_CLASSES = 256


def _inferred_classes(pred: np.ndarray, gt: np.ndarray) -> int:
    top = int(max(pred.max(), gt.max()))
    if top >= MAX_INFERRED_CLASSES:
        raise ValueError(
            f"a semantic map holds class {top}: that would be {top + 1} classes, most of them "
            f"absent (each scoring 1); give num_classes={top + 1} if that is meant, or "
            "kind=instances for an instance map"
        )
    return top + 1


def evaluate_pair(
    pred: np.ndarray, gt: np.ndarray, kind: Kind = "auto", num_classes: int | None = None
) -> dict[str, float]:
    """All metrics that apply to one prediction / ground-truth pair, by name.

    - ``semantic``: class maps. Dice, IoU (mean over foreground classes) and pixel error;
      ``num_classes`` defaults to 2 when both maps are binary masks (any non-zero value is
      foreground), else to the largest class + 1 (at most :data:`MAX_INFERRED_CLASSES`).
      A binary pair is also scored as instances:
      the connected components of each mask are its objects.
    - ``instances``: instance maps taken as they are; semantic scores on foreground vs
      background, plus :func:`instance_scores`.
    - ``auto`` (see :func:`resolve_kind`): as above; an instance ground truth paired with a
      binary mask (a plain U-Net output) gets the mask's connected components as objects.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    check_same_shape(pred, gt)
    auto = kind == "auto"
    kind = resolve_kind(pred, gt, kind, num_classes)
    if kind == "semantic":
        binary = _is_binary(pred) and _is_binary(gt)
        k = num_classes or (2 if binary else _inferred_classes(pred, gt))
        if k != 2:
            return semantic_scores(pred, gt, k)
        if binary:
            pred, gt = pred != 0, gt != 0
        scores = semantic_scores(pred, gt, 2)
        return scores | instance_scores(_components(pred != 0), _components(gt != 0))
    if auto:
        pred, gt = (_components(a != 0) if _is_binary(a) else a for a in (pred, gt))
    return semantic_scores(pred != 0, gt != 0, 2) | instance_scores(pred, gt)
