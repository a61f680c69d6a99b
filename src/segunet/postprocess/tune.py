"""Choosing the post-processing on the validation images: at the end of training, and by
``segunet tune checkpoint=<run or .pt> [tta=true] [device=auto]`` (:mod:`segunet.cli.tune`) for
a checkpoint trained before (or with other settings).

The validation images are predicted once (and once more under test-time augmentation when
``tta`` is searched), every setting of :data:`segunet.postprocess.decoding.GRIDS` is scored by the
task's metric (``data.metric``) and the best is written into the checkpoint, where
``segunet predict`` finds it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from segunet.data.datasets import SegmentationData, Volume
from segunet.eval.metrics import TaskScorer, metric_key
from segunet.postprocess.decoding import GRIDS, PostProcess, decode, format_table, search

Predict = Callable[[np.ndarray, bool], np.ndarray]  # (image, tta) -> probabilities


@dataclass
class TuneConfig:
    """The ``postprocess`` config group: the search at the end of training."""

    enabled: bool = True  # search when data.metric scores objects or the foreground (not dice)
    tta: bool = False  # also search with test-time augmentation (8 predictions per image)
    grid: dict | None = None  # replaces GRIDS' values per key, e.g. {min_size: [0]}


def tunable(data: SegmentationData) -> bool:
    """Whether the task has decoding to tune: a metric of objects or of the foreground, and
    ground-truth objects on every validation image."""
    return data.metric != "dice" and all(v.instances is not None for v in data.val)


def grid_for(target: str, cfg: TuneConfig) -> dict[str, list]:
    from segunet.errors import SegunetError

    grid = {k: list(v) for k, v in GRIDS[target].items()}
    for key, values in (cfg.grid or {}).items():
        if key not in grid:
            raise SegunetError(
                f"postprocess.grid.{key} is not searched for data.target={target}: use "
                f"{', '.join(grid)}"
            )
        grid[key] = list(values)
    return grid


def tune_on(
    volumes: Sequence[Volume],
    predict: Predict,
    target: str,
    metric: str,
    cfg: TuneConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """Search the decoding of ``target`` on ``volumes`` (with ground-truth objects) for the
    best ``metric``; returns what a checkpoint stores under ``"postprocess"``: the settings,
    their score, the score of the default settings and the table of the search."""
    probs: dict[bool, list[np.ndarray]] = {}
    for tta in (False, True) if cfg.tta else (False,):
        images = tqdm(volumes, desc=f"tune: predict{' (tta)' * tta}", unit="image",
                      disable=not progress, file=sys.stderr, leave=False)
        probs[tta] = [predict(v.image, tta) for v in images]
    truths = [np.where(v.ignore, 0, v.instances) for v in volumes]
    for images in probs.values():  # ignored pixels are nobody's: zero them for decoding too
        for p, v in zip(images, volumes):
            p[:, v.ignore] = 0
    bar = tqdm(desc="tune: search", unit="setting", disable=not progress, file=sys.stderr,
               leave=False)

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    best, rows = search(probs, truths, target, metric, grid_for(target, cfg), advance)
    bar.close()
    scorer = TaskScorer(metric)
    for p, t in zip(probs[False], truths):
        scorer.update(decode(p, target, PostProcess()), t)
    default_score = scorer.compute()
    return {
        "settings": best.as_dict(), "metric": metric, "target": target,
        "score": rows[0][metric], "default_score": default_score, "table": rows[:50],
    }


def describe_tuned(result: Mapping[str, Any]) -> str:
    """One line: the settings chosen and what they gained over the defaults."""
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    key = metric_key(result["metric"])
    return (
        f"post-processing tuned on the validation images: {settings}; {key} "
        f"{result['score']:.4f} (defaults {result['default_score']:.4f})"
    )


def report(result: Mapping[str, Any]) -> str:
    """The search as a table of its best settings, for the log and TensorBoard."""
    return format_table(result["table"], result["metric"])


def tune_checkpoint(checkpoint: str | Path, tta: bool = False, device: str = "auto",
                    progress: bool = True, data_path: str | None = None,
                    ) -> tuple[Path, dict[str, Any]]:
    """Tune the checkpoint's decoding on its validation data (read from ``data_path``
    instead of its ``data.path`` when given) and write it into the file."""
    import torch

    from segunet.checkpoint import load_model, resolve_checkpoint, save_atomic
    from segunet.config.compose import stored_data
    from segunet.errors import SegunetError
    from segunet.infer.predict import predict_tiled
    from segunet.models.device import resolve_device
    from segunet.pretrained import shipped

    file = resolve_checkpoint(checkpoint, prefer="best")
    if shipped(file):  # tuning rewrites the checkpoint: never segunet's installed package
        raise SegunetError(
            f"checkpoint={checkpoint}: {file} ships with segunet and is not rewritten; tune a "
            f"copy (cp {file} {file.name})"
        )
    device = str(resolve_device(device))  # before loading: not the file's fault
    model, config = load_model(file, device)
    data: SegmentationData = stored_data(
        config, str(file), "pass data_path=<where the training data is now>", data_path)
    if not tunable(data):
        raise SegunetError(
            f"{file}: data.metric={data.metric} has no decoding to tune: train with "
            "data.metric=ap, vrand or iou"
        )

    def predict(image: np.ndarray, with_tta: bool) -> np.ndarray:
        return predict_tiled(model, image, device=device, tta=with_tta)

    cfg = TuneConfig(tta=tta)
    result = tune_on(data.val, predict, data.target, data.metric, cfg, progress)
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    ckpt["postprocess"] = result
    save_atomic(ckpt, file)
    return file, result
