"""scripts/bench_quality.py end to end at ``--preset tiny`` on DSB 2018: every method is
trained and scored on held-out images, and the scores it records are those of the
predictions it saved, checked against the ground-truth files by a reference written here."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, SHARED_DATA

SCRIPT = ROOT / "scripts" / "bench_quality.py"
SHARED = SHARED_DATA  # where quality_data reads it
DSB = SHARED / "dsb2018" / "train"
THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


@pytest.fixture
def bench_quality():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_quality"]


def reference_ap(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """DSB 2018 AP at each threshold, from a dense pair histogram: TP = pairs with IoU > t
    (above 0.5 a match is unique), AP = TP / (n_gt + n_pred - TP); nothing on both sides: 1."""
    _, g = np.unique(gt, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    g, p = g.reshape(-1), p.reshape(-1)
    g_bg, p_bg = int((gt == 0).any()), int((pred == 0).any())  # background comes first
    joint = np.zeros((g.max() + 1, p.max() + 1))
    np.add.at(joint, (g, p), 1)
    gt_size, pred_size = joint.sum(1)[g_bg:], joint.sum(0)[p_bg:]
    joint = joint[g_bg:, p_bg:]
    n_gt, n_pred = joint.shape
    if n_gt == n_pred == 0:
        return np.ones(len(THRESHOLDS))
    union = gt_size[:, None] + pred_size[None, :] - joint
    iou = np.divide(joint, union, out=np.zeros_like(joint), where=union > 0)
    tp = np.array([np.count_nonzero(iou > t) for t in THRESHOLDS])
    return tp / (n_gt + n_pred - tp)


def test_reference_ap_on_a_known_case():
    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1  # 16 px
    gt[6:10, 6:10] = 2  # 16 px, missed
    pred = np.zeros((10, 10), int)
    pred[0:4, 0:3] = 5  # IoU 12/16 = 0.75 with object 1
    pred[5, 5] = 7  # a false positive
    expected = [1 / 3 if t < 0.75 else 0.0 for t in THRESHOLDS]
    np.testing.assert_allclose(reference_ap(pred, gt), expected)


@pytest.mark.skipif(not DSB.is_dir(), reason=f"{DSB} not found (shared data absent)")
def test_bench_quality_tiny_dsb(bench_quality, tmp_path, capsys):
    pytest.importorskip("monai")
    from segunet.data.io import read_array

    out = tmp_path / "quality.json"
    bench_quality.main(["--dataset", "dsb2018", "--preset", "tiny", "--workdir",
                        str(tmp_path / "work"), "--out", str(out), "--shared", str(SHARED)])
    report = json.loads(out.read_text())
    methods = report["methods"]
    assert list(methods) == list(bench_quality.METHODS)

    # Held out: the first test images of quality_data's split, trained and tuned on by none.
    split = report["split"]
    quality_data = sys.modules["quality_data"]
    stems = sorted(p.stem for p in (DSB / "images").glob("*.png"))
    assert split["test_images"] == quality_data.dsb_test_names(stems)[:4]
    assert split["train"] and split["val"]
    assert not set(split["test_images"]) & (set(split["train"]) | set(split["val"]))

    scored = []
    for name, m in methods.items():
        assert m["train_steps"] == 30 and m["batch_size"] == 2, name  # one budget for all
        assert set(m["scores"]) == {"mean_ap", "ap50"}, name
        assert all(0 <= v <= 1 for v in m["scores"].values()), (name, m["scores"])
        assert list(m["per_image"]) == split["test_images"], name
        for image, recorded in m["per_image"].items():
            pred = read_array(Path(m["predictions"]) / f"{image}.tif")
            gt = read_array(DSB / "masks" / f"{image}.tif")
            ap = reference_ap(pred, gt)
            assert recorded["mean_ap"] == pytest.approx(ap.mean(), abs=1e-9), (name, image)
            assert recorded["ap50"] == pytest.approx(ap[0], abs=1e-9), (name, image)
            scored.append(recorded["mean_ap"])
        for key in ("mean_ap", "ap50"):
            mean = np.mean([s[key] for s in m["per_image"].values()])
            assert m["scores"][key] == pytest.approx(mean), (name, key)
    assert max(scored) > 0  # the comparison above saw objects matched, not only zeros
    assert methods["foreground"]["postprocess"]["grow"] == 0
    assert methods["monai"]["postprocess"] == "argmax + connected components"
    assert report["default_method"] == "boundary"  # dsb2018_cpu trains the boundary target

    printed = capsys.readouterr().out
    for name in methods:
        assert f"\n{name} " in printed
    assert "mAP.5:.95" in printed and "boundary / monai" in printed


def test_monai_loop_with_a_time_budget_stops_on_the_clock(bench_quality):
    """``--budget time``: the MONAI loop trains for the seconds it is given, whatever its
    step count says, and reports the steps it did; without seconds it does exactly its
    steps."""
    pytest.importorskip("monai")
    import torch

    from segunet.data.datasets import Volume

    rng = np.random.default_rng(0)
    instances = np.zeros((48, 48), np.int32)
    instances[10:20, 10:20], instances[30:40, 25:35] = 1, 2
    volume = Volume("a", rng.random((1, 48, 48), dtype=np.float32), (instances > 0).astype(
        np.int64), np.ones((48, 48), np.float32), np.zeros((48, 48), bool), instances)
    features = bench_quality.TINY_FEATURES
    cpu = torch.device("cpu")

    _, first, steps = bench_quality.train_monai([volume], [32, 32], 3, 2, cpu, features)
    assert steps == 3

    # One step asked for, and a clock far longer than one step at the pace just measured: a
    # loop that went by its step count stops after one step, well before the clock.
    budget = max(0.5, 5 * first)
    _, seconds, steps = bench_quality.train_monai([volume], [32, 32], 1, 2, cpu, features,
                                                  seconds=budget)
    assert seconds >= budget and steps > 1  # the clock, not the one step, ended it
    assert seconds < 3 * budget  # and it did end


@pytest.mark.skipif(not DSB.is_dir(), reason=f"{DSB} not found (shared data absent)")
def test_time_budget_needs_the_default_recipe(bench_quality, tmp_path):
    """MONAI's seconds are the default recipe's: without it there is no budget to give."""
    with pytest.raises(SystemExit, match="--budget time gives MONAI the wall-clock of the "
                                         "default recipe \\(boundary\\)"):
        bench_quality.main(["--dataset", "dsb2018", "--preset", "tiny", "--budget", "time",
                            "--methods", "monai,foreground", "--workdir", str(tmp_path),
                            "--shared", str(SHARED)])


@pytest.mark.parametrize("value, message", [
    ("a,b", "give comma-separated integers"),
    ("16,32", "BasicUNet takes 6 feature counts, got 2"),
])
def test_bad_monai_features_are_one_line(bench_quality, capsys, value, message):
    with pytest.raises(SystemExit) as exit_:
        bench_quality.parse_args(["--dataset", "dsb2018", "--monai-features", value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert bench_quality.parse_args(["--dataset", "dsb2018", "--monai-features",
                                     "16,16,32,64,128,16"]).monai_features == (
        16, 16, 32, 64, 128, 16)
