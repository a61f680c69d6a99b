"""The post-processing search, the challenge scores it optimises, and the tuned settings
travelling from training to the checkpoint and `segunet tune`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TINY, run_in_process

from segunet.errors import SegunetError
from segunet.eval.metrics import isbi_scores
from segunet.postprocess.decoding import PostProcess, decode, format_table, search
from segunet.train.trainer import run


def bridged_pair() -> tuple[np.ndarray, np.ndarray]:
    """Two objects (foreground probability 0.65) joined by a bridge of 0.55, and a speck of
    0.65 four pixels large: threshold 0.6 with min_size 8 is the one right decoding."""
    truth = np.zeros((20, 30), int)
    truth[5:15, 3:12], truth[5:15, 16:25] = 1, 2
    fg = np.full(truth.shape, 0.1, np.float32)
    fg[truth > 0] = 0.65
    fg[9:11, 12:16] = 0.55  # lower thresholds merge the two
    fg[1:3, 27:29] = 0.65  # lower min sizes keep this speck as an object
    return np.stack([1 - fg, fg]), truth


def test_the_search_finds_the_known_best_settings():
    probs, truth = bridged_pair()
    grid = {"threshold": (0.4, 0.5, 0.6, 0.7), "grow": (0,), "min_size": (0, 8)}
    best, rows = search({False: [probs]}, [truth], "foreground", "ap", grid)
    assert best == PostProcess(threshold=0.6, min_size=8)
    assert rows[0]["ap"] == 1.0
    assert len(rows) == 8 and all(r["ap"] < 1.0 for r in rows[1:])
    # Each row's score is the metric of decoding with its settings (by hand: AP of 2 objects
    # merged into one is 0, of 2 found plus one speck 2/3 at every threshold).
    by_settings = {(r["threshold"], r["min_size"]): r["ap"] for r in rows}
    assert by_settings[(0.5, 8)] == 0.0
    assert by_settings[(0.6, 0)] == pytest.approx(2 / 3)
    assert by_settings[(0.7, 8)] == 0.0  # nothing found at all
    assert "| threshold | min_size | ap |" in format_table(rows, "ap")


def test_the_search_can_choose_test_time_augmentation():
    probs, truth = bridged_pair()
    blurred = probs.copy()
    blurred[1] = 0.5 + 0.2 * (truth > 0) - 0.1  # without TTA no threshold separates them
    blurred[0] = 1 - blurred[1]
    best, _ = search({False: [blurred], True: [probs]}, [truth], "foreground", "ap",
                     {"threshold": (0.6,), "grow": (0,), "min_size": (8,)})
    assert best.tta


def test_v_rand_and_v_info_by_hand():
    # 8 foreground pixels: ground truth two segments of 4, the prediction one of 8.
    gt = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
    merged = np.where(gt > 0, 7, 0)
    scores = isbi_scores(merged, gt)
    # p_ij = (1/2, 1/2), s = (1), t = (1/2, 1/2): V_Rand = 1/2 / (1/2 + 1/4) = 2/3.
    assert scores["vrand"] == pytest.approx(2 / 3)
    assert scores["vinfo"] == pytest.approx(0.0)  # I(S;T) = 0: the prediction says nothing
    # Split the first segment in two halves: s = (1/4, 1/4, 1/2), t = (1/2, 1/2).
    split = gt.copy()
    split[1, :2] = 3
    scores = isbi_scores(split, gt)
    sum_p2, sum_s2, sum_t2 = 2 / 16 + 1 / 4, 2 / 16 + 1 / 4, 1 / 2
    assert scores["vrand"] == pytest.approx(sum_p2 / (0.5 * sum_s2 + 0.5 * sum_t2))
    h_s = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    h_t = math.log(2)
    mutual = h_t  # the prediction refines the ground truth: I = H(T)
    assert scores["vinfo"] == pytest.approx(mutual / (0.5 * h_s + 0.5 * h_t))
    # Membrane pixels (ground truth 0) do not count, whatever is predicted there.
    assert isbi_scores(np.where(gt > 0, gt, 9), gt) == {"vrand": 1.0, "vinfo": 1.0}


BOUNDARY = [*TINY, "data.target=boundary", "data.metric=ap", "model.out_channels=3",
            "trainer.max_steps=4", "trainer.val_every=2",
            "postprocess.grid={threshold:[0.5],seed_threshold:[0.4,0.6],min_size:[0,16]}"]


def test_training_tunes_and_stores_the_decoding(make_cfg, tmp_path, capsys):
    final = run(make_cfg(*BOUNDARY), tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    tuned = last["postprocess"]
    assert tuned["metric"] == "ap" and tuned["target"] == "boundary"
    assert len(tuned["table"]) == 4
    assert tuned["score"] == max(r["ap"] for r in tuned["table"]) >= tuned["default_score"]
    assert tuned["settings"]["seed_threshold"] in (0.4, 0.6)
    # best.pt is chosen by the task metric.
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["best_metric"] == final["val/best_ap"] == best["metrics"]["ap"]
    assert "postprocess" in best and best["postprocess"]["metric"] == "ap"
    err = capsys.readouterr().err
    assert "post-processing tuned on the validation images" in err


def test_segunet_tune_rewrites_the_checkpoint(make_cfg, tmp_path):
    run(make_cfg(*BOUNDARY, "postprocess.enabled=false"), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert torch.load(ckpt, weights_only=True)["postprocess"] is None
    done = run_in_process("tune", f"checkpoint={ckpt}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tuned = torch.load(ckpt, weights_only=True)["postprocess"]
    assert tuned["metric"] == "ap" and tuned["target"] == "boundary"
    assert f"written into {ckpt}" in done.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.target=contour",
         "data.target='contour' is not valid: expected one of foreground, boundary"),
        ("data.metric=map",
         "data.metric='map' is not valid: expected one of dice, iou, ap, vrand"),
    ],
)
def test_unknown_targets_and_metrics_are_one_line(tmp_path, override, expected):
    done = run_in_process("train", *TINY, override, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"segunet: error: {expected}"]


def test_targets_and_metrics_the_labels_cannot_support(tmp_path):
    from segunet.data.labels import Targets
    from segunet.data.sources import stack

    image = np.zeros((4, 16, 16), np.uint8)
    labels = np.zeros((4, 16, 16), np.uint8)
    labels[:, 4:8, 4:8] = 1
    kwargs = dict(targets=Targets(label_kind="classes", num_classes=2),
                  val_fraction=0.25)
    with pytest.raises(SegunetError, match="data.target=boundary needs objects"):
        stack(image, labels, "img", "lab", target="boundary", **kwargs)
    with pytest.raises(SegunetError, match="data.metric=ap scores objects"):
        stack(image, labels, "img", "lab", metric="ap", **kwargs)
    data = stack(image, labels, "img", "lab", metric="iou", **kwargs)
    assert data.metric == "iou"


def test_decode_boundary_keeps_thin_objects_without_interior():
    """A one-pixel-wide object has no interior, so no seed: it keeps its own label."""
    probs = np.zeros((3, 5, 9), np.float32)
    probs[0] = 1
    probs[:, 2, 1:8] = [[0], [0], [1]]  # a line of boundary pixels
    labels = decode(probs, "boundary")
    assert labels.max() == 1 and (labels > 0).sum() == 7
