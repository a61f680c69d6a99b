"""Matching two label maps: the sparse contingency table of their labels
(:func:`contingency`, each image sorted once per table) and the pairs of overlapping objects
read from it (:func:`object_pairs`), with their one-to-one matching at an IoU threshold
(:func:`true_positives`). Every pairwise score of :mod:`segunet.eval.metrics` starts here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")


@dataclass(frozen=True)
class Contingency:
    """Sparse contingency table of two label maps: ``counts[k]`` pixels carry ground-truth
    label ``gt_labels[gt_index[k]]`` and predicted label ``pred_labels[pred_index[k]]``; only
    non-empty cells are stored. Sizes are per label over the pixels kept."""

    gt_labels: np.ndarray
    pred_labels: np.ndarray
    gt_sizes: np.ndarray
    pred_sizes: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def without_gt(self, label: int) -> Contingency:
        """The table of the pixels whose ground-truth label is not ``label``: the same as
        ``contingency(pred, gt, ignore_labels=(label,))`` without another pass over the image
        (labels that lose all their pixels stay listed, with size 0)."""
        keep = self.gt_labels[self.gt_index] != label
        gt_sizes = np.where(self.gt_labels == label, 0, self.gt_sizes)
        pred_sizes = np.bincount(
            self.pred_index[keep], weights=self.counts[keep], minlength=len(self.pred_labels)
        ).astype(np.int64)
        return Contingency(
            self.gt_labels, self.pred_labels, gt_sizes, pred_sizes,
            self.gt_index[keep], self.pred_index[keep], self.counts[keep],
        )


def _compact(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, index, sizes)``: the sorted distinct values of ``a``, each pixel's position in
    them, and their pixel counts. A lookup table for small non-negative integer labels (one
    pass), ``np.unique`` (a sort) otherwise."""
    if a.dtype.kind in "biu" and a.size and a.min() >= 0 and a.max() <= 4 * a.size + 2**16:
        a = a.astype(np.intp, copy=False)
        sizes = np.bincount(a)
        labels = np.flatnonzero(sizes)
        lut = np.zeros(len(sizes), dtype=np.int64)
        lut[labels] = np.arange(len(labels))
        return labels, lut[a], sizes[labels]
    labels, index = np.unique(a, return_inverse=True)
    return labels, index.reshape(-1), np.bincount(index.reshape(-1), minlength=len(labels))


def contingency(pred: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = ()) -> Contingency:
    """The contingency table of ``pred`` against ``gt``, skipping pixels whose ground-truth
    label is in ``ignore_labels`` (as :func:`skimage.metrics.contingency_table`).

    Labels are made compact first and each (gt, pred) pair becomes one int64 key, counted
    densely when the pairs are few and sorted otherwise: cost linear in the pixels, whatever
    the label values.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    check_same_shape(pred, gt)
    pred, gt = pred.reshape(-1), gt.reshape(-1)
    if bool(pred.dtype == bool):
        pred = pred.view(np.uint8)
    if bool(gt.dtype == bool):
        gt = gt.view(np.uint8)
    if len(ignore_labels):
        keep = ~np.isin(gt, np.asarray(ignore_labels))
        pred, gt = pred[keep], gt[keep]
    gt_labels, gi, gt_sizes = _compact(gt)
    pred_labels, pi, pred_sizes = _compact(pred)
    n_pred = max(len(pred_labels), 1)
    key = gi * n_pred + pi
    if len(gt_labels) * n_pred <= 4 * key.size + 2**16:
        dense = np.bincount(key, minlength=len(gt_labels) * n_pred)
        cells = np.flatnonzero(dense)
        counts = dense[cells]
    else:
        cells, counts = np.unique(key, return_counts=True)
    return Contingency(
        gt_labels, pred_labels, gt_sizes, pred_sizes, cells // n_pred, cells % n_pred, counts
    )


# --- the objects of two instance maps that overlap ------------------------------------


@dataclass(frozen=True)
class ObjectPairs:
    """Every overlapping (ground-truth object, predicted object) pair of two instance maps,
    background 0 left out on both sides: their intersection and the two object sizes."""

    gt: np.ndarray  # object index per pair, 0..n_gt-1
    pred: np.ndarray
    inter: np.ndarray
    gt_size: np.ndarray
    pred_size: np.ndarray
    n_gt: int
    n_pred: int

    @property
    def iou(self) -> np.ndarray:
        return self.inter / (self.gt_size + self.pred_size - self.inter)


def object_pairs(t: Contingency) -> ObjectPairs:
    gt_fg, pred_fg = t.gt_labels != 0, t.pred_labels != 0
    keep = gt_fg[t.gt_index] & pred_fg[t.pred_index]
    # Renumber objects 0..n-1 without background so counts per object are plain bincounts.
    gt_id, pred_id = np.cumsum(gt_fg) - 1, np.cumsum(pred_fg) - 1
    g, p = t.gt_index[keep], t.pred_index[keep]
    return ObjectPairs(
        gt_id[g], pred_id[p], t.counts[keep].astype(np.float64),
        t.gt_sizes[g].astype(np.float64), t.pred_sizes[p].astype(np.float64),
        int(gt_fg.sum()), int(pred_fg.sum()),
    )


def true_positives(pairs: ObjectPairs, threshold: float) -> int:
    """Predicted objects matched one-to-one to ground-truth objects with IoU > threshold."""
    iou = pairs.iou
    ok = iou > threshold
    if threshold >= 0.5:
        # IoU > 0.5 means the overlap is more than half of each object's union, which at most
        # one partner can have: the matching is unique, no assignment needed.
        return int(ok.sum())
    # Below 0.5 an object may pass with several partners: take the one-to-one matching of
    # largest total IoU (Hungarian), as StarDist's ``matching`` does.
    from scipy.optimize import linear_sum_assignment

    g_ids, g = np.unique(pairs.gt[ok], return_inverse=True)
    p_ids, p = np.unique(pairs.pred[ok], return_inverse=True)
    m = np.zeros((len(g_ids), len(p_ids)))
    m[g, p] = iou[ok]
    rows, cols = linear_sum_assignment(m, maximize=True)
    return int(np.count_nonzero(m[rows, cols] > threshold))
