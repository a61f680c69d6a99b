"""Score predicted label maps against ground truth with
:func:`segunet.eval.metrics.evaluate_pair` (``segunet evaluate pred=... gt=...``:
:mod:`segunet.cli.evaluate`).

Two folders are paired by file stem (``pred/a.tif`` with ``gt/a.png``); any file without a
partner is an error, so a missing prediction cannot silently raise the mean. What ``segunet
predict`` writes is read in each of its formats: ``<stem>_instances.tif`` / ``.zarr`` (or
``_labels`` with ``kind=semantic``), and ``<stem>.ome.zarr``, whose label image
``labels/instances`` (or ``labels/labels``) is scored. Label maps must hold whole numbers
>= 0: a probability map, NaN or a negative label is refused. The terminal gets a table (one
row per image, then the mean over images, the DSB 2018 way of averaging); the JSON file gets
the same numbers, written atomically: by default ``metrics.json`` inside a ``pred`` folder, or
``<name>_metrics.json`` beside a ``pred`` file; an existing one is kept unless
``overwrite=true``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segunet.data.io import (
    PREDICT_OUTPUTS,
    SUPPORTED,
    read_array,
    refuse_existing,
    split_key,
)
from segunet.data.omezarr import OME_ZARR
from segunet.errors import SegunetError
from segunet.eval.metrics import evaluate_pair, resolve_kind

#: The suffixes of predict's files, the maps evaluate prefers first.
PREDICT_SUFFIXES = tuple(f"_{o}" for o in reversed(PREDICT_OUTPUTS))


def _is_ome(path: Path) -> bool:
    return path.name.lower().endswith(OME_ZARR)


def _label_files(folder: Path, suffix: str = "") -> dict[str, Path]:
    """Name -> file for the readable label maps in ``folder`` whose stem ends with ``suffix``
    (the name is the stem without it); hidden files skipped. An OME-Zarr image
    ``<name>.ome.zarr`` holds all of predict's outputs of one input: no suffix applies."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in SUPPORTED:
            continue
        if _is_ome(path):
            name = path.name[: -len(OME_ZARR)]
        elif not path.stem.endswith(suffix):
            continue
        else:
            name = path.stem[: len(path.stem) - len(suffix)]
        if name in files:
            raise SegunetError(f"{files[name]} and {path} share the name '{name}': keep one")
        files[name] = path
    return files


def resolve_suffix(folder: Path, suffix: str, kind: str) -> str:
    """``auto``: the instance (or, for semantic scores, label) maps of a `segunet predict`
    output folder, recognised by its file names; otherwise every file. A predict folder
    without the maps wanted is a one-line error that says which it has."""
    if suffix != "auto":
        return suffix
    stems = {p.stem for p in folder.iterdir()} if folder.is_dir() else set()
    has = [o for o in PREDICT_SUFFIXES if any(s.endswith(o) for s in stems)]
    if not has:
        return ""
    wanted = "_labels" if kind == "semantic" else "_instances"
    if wanted not in has:
        fix = ("pass kind=semantic to score the class maps" if "_labels" in has else
               f"predict with outputs={wanted[1:]}, or give pred_suffix=")
        raise SegunetError(
            f"{folder} holds segunet predict outputs ({', '.join(has)}) but no *{wanted} "
            f"maps: {fix}"
        )
    return wanted


def container(path: Path) -> Path:
    """The file of ``vol.h5:key`` (an array in an HDF5 file or zarr group); ``path`` else."""
    return split_key(path)[0]


def pair_files(
    pred: Path, gt: Path, pred_suffix: str = "", gt_suffix: str = ""
) -> list[tuple[str, Path, Path]]:
    """``(name, pred file, gt file)`` per image: two files, or two folders matched by stem."""
    for path in (pred, gt):
        if not container(path).exists():
            raise SegunetError(f"cannot read {path}: no such file or folder; check the path")
    pred_dir = pred.is_dir() and pred.suffix.lower() != ".zarr"
    gt_dir = gt.is_dir() and gt.suffix.lower() != ".zarr"
    if not pred_dir and not gt_dir:
        return [(container(gt).stem, pred, gt)]
    if pred_dir != gt_dir:
        raise SegunetError(f"pred={pred} and gt={gt}: give two files or two folders, not one each")
    preds, gts = _label_files(pred, pred_suffix), _label_files(gt, gt_suffix)
    lonely = [str(preds[s]) for s in preds if s not in gts]
    missing = [str(gts[s]) for s in gts if s not in preds]
    if lonely or missing:
        parts = []
        if lonely:
            parts.append(f"no ground truth for {_some(lonely)}")
        if missing:
            parts.append(f"no prediction for {_some(missing)}")
        raise SegunetError("; ".join(parts) + ": files are paired by name without extension")
    if not gts:
        raise SegunetError(f"no label maps in {gt} (looked for {', '.join(SUPPORTED)})")
    return [(stem, preds[stem], gts[stem]) for stem in sorted(gts)]


def _some(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def score_pair(
    pred_path: Path, gt_path: Path, kind: str, num_classes: int | None, slices: bool = False
) -> list[tuple[str | None, str, dict[str, float]]]:
    """``(slice or None, kind used, metrics)`` of one pair of files, one entry per slice with
    ``slices``; SegunetError naming both on a mismatch."""
    pred = label_map(read_prediction(pred_path, kind), pred_path)
    gt = label_map(np.asarray(read_array(gt_path)), gt_path)
    if pred.shape != gt.shape:
        raise SegunetError(
            f"{pred_path} has shape {pred.shape} but {gt_path} has {gt.shape}: "
            "a prediction must match its ground truth pixel for pixel"
        )
    if slices and pred.ndim != 3:
        raise SegunetError(
            f"slices=true scores (Z, Y, X) stacks, but {gt_path} has shape {gt.shape}: "
            "leave slices out for 2D images"
        )
    parts = [(f"z{z:03d}", pred[z], gt[z]) for z in range(pred.shape[0])] if slices else [
        (None, pred, gt)]
    try:
        return [(part, resolve_kind(p, g, kind, num_classes),  # type: ignore[arg-type]
                 evaluate_pair(p, g, kind, num_classes))  # type: ignore[arg-type]
                for part, p, g in parts]
    except ValueError as e:  # e.g. a class beyond num_classes
        raise SegunetError(f"cannot score {pred_path} against {gt_path}: {e}") from e


def read_prediction(path: Path, kind: str) -> np.ndarray:
    """The label map at ``path``; of an OME-Zarr image (``segunet predict format=ome-zarr``),
    its label image ``instances`` (``labels`` with ``kind=semantic``), without the label
    image's channel axis of length 1."""
    from segunet.data import omezarr

    if not (path.is_dir() and omezarr.is_ome_zarr(path)):
        return np.asarray(read_array(path))
    name = "labels" if kind == "semantic" else "instances"
    labels = path / "labels"
    present = sorted(p.name for p in labels.iterdir() if p.is_dir()) if labels.is_dir() else []
    if name not in present:
        fix = "pass kind=semantic to score the labels" if "labels" in present else (
            "pass kind=instances to score the instances" if "instances" in present else
            "predict it again with outputs=labels,instances")
        raise SegunetError(
            f"{path} has no label image '{name}' (it has: {', '.join(present) or 'none'}): "
            f"{fix}"
        )
    array = np.asarray(read_array(labels / name))  # itself an OME-Zarr image: (1, *spatial)
    return array[0] if array.ndim > 2 and array.shape[0] == 1 else array


def label_map(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` as an integer label map; a one-line SegunetError naming ``path`` for what no
    label map holds: NaN or infinity, fractions (a probability map), negative labels."""
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise SegunetError(
                f"{path} holds NaN or infinite values: it is no label map; give the "
                "_labels or _instances output of segunet predict, or integer labels"
            )
        fractions = array[array != np.round(array)]
        if fractions.size:
            raise SegunetError(
                f"{path} holds fractional values (e.g. {fractions[0]:g}): it is no label map "
                "but, e.g., a probability map; give integer labels (the _labels or _instances "
                "output of segunet predict)"
            )
        array = array.astype(np.int64)
    elif array.dtype.kind not in "biu":
        raise SegunetError(f"{path} holds {array.dtype} values: give an integer label map")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise SegunetError(
            f"{path} holds the negative label {array.min()}: label maps take 0 for background "
            "and positive object ids or classes; relabel it"
        )
    return array


def mean_over_images(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per metric, the mean over the images that have it (mixed kinds give different keys)."""
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    return {k: float(np.mean([row[k] for row in rows.values() if k in row])) for k in keys}


_COUNTS = ("splits", "merges", "n_gt", "n_pred")


def format_table(rows: dict[str, dict[str, float]], mean: dict[str, float]) -> str:
    """Aligned text: a header, one row per image, a rule, the mean."""
    keys = list(mean)

    def cells(row: dict[str, float], counts: bool) -> list[str]:
        return [(f"{row[k]:.0f}" if counts and k in _COUNTS else f"{row[k]:.4f}")
                if k in row else "-" for k in keys]

    # A list, not a dict by name: an image called "mean" keeps its own row.
    table = [(name, cells(row, True)) for name, row in rows.items()] + [
        ("mean", cells(mean, False))
    ]
    name_width = max(len("image"), *(len(n) for n, _ in table))
    widths = [max(len(k), *(len(c[i]) for _, c in table)) for i, k in enumerate(keys)]

    def line(first: str, values: Sequence[str]) -> str:
        return "  ".join([first.ljust(name_width), *(v.rjust(w) for v, w in zip(values, widths))])

    rule = "-" * len(line("", keys))
    body = [line(name, values) for name, values in table[:-1]]
    return "\n".join([line("image", keys), rule, *body, rule, line(*table[-1])])


def evaluate(
    pred: Path,
    gt: Path,
    kind: str = "auto",
    num_classes: int | None = None,
    pred_suffix: str = "auto",
    gt_suffix: str = "",
    slices: bool = False,
) -> dict[str, object]:
    """The report: kinds used, per-image (with ``slices``: per-slice) metrics and their mean
    over images."""
    from tqdm import tqdm

    pairs = pair_files(pred, gt, resolve_suffix(pred, pred_suffix, kind), gt_suffix)
    rows: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    # disable=None: a progress bar on a terminal only, never in logs or captured output.
    for name, pred_path, gt_path in tqdm(pairs, desc="evaluate", disable=None, leave=False):
        for part, used, scores in score_pair(pred_path, gt_path, kind, num_classes, slices):
            row = name if part is None else f"{name}_{part}"
            kinds[row], rows[row] = used, scores
    used = sorted(set(kinds.values()))
    return {
        "pred": str(pred), "gt": str(gt), "kind": used[0] if len(used) == 1 else used,
        "images": rows, "mean": mean_over_images(rows),
    }


def report_path(out: str, pred: Path) -> Path | None:
    """Where the JSON report goes: ``out``, none for ``out=``, and for ``auto`` next to
    ``pred`` (inside a folder of predictions, beside a single file), never into the working
    folder by default."""
    if not out:
        return None
    if out != "auto":
        return Path(out)
    if pred.is_dir() and pred.suffix.lower() != ".zarr":
        return pred / "metrics.json"
    file = container(pred)
    name = file.name[: -len(OME_ZARR)] if _is_ome(file) else file.stem
    return file.with_name(f"{name}_metrics.json")


def check_report_path(out: Path, overwrite: bool, pred: Path, gt: Path) -> None:
    """Before any scoring: the report must not be an input, nor replace a file unasked."""
    for key, path in (("pred", container(pred)), ("gt", container(gt))):
        if path.exists() and out.resolve() == path.resolve():
            raise SegunetError(f"out={out} is the {key} input: choose another out= file")
    refuse_existing(out, overwrite)
