"""Evaluation metrics (segunet.eval.metrics) and the ``segunet evaluate`` command."""

import json

import numpy as np
import pytest
import skimage.metrics as skm
import torch
from helpers import SHARED_DATA, blobs, save_tiny_checkpoint
from scipy import ndimage

from segunet.cli.evaluate import run as main
from segunet.data.io import read_array, write_array
from segunet.eval.evaluate import format_table
from segunet.eval.matching import contingency
from segunet.eval.metrics import (
    DSB_THRESHOLDS,
    adapted_rand_error,
    average_precision,
    dice_iou,
    evaluate_pair,
    instance_scores,
    isbi_scores,
    seg_score,
    semantic_scores,
    split_merge_counts,
    variation_of_information,
)

DATA = SHARED_DATA


# --- against skimage ----------------------------------------------------------------------


@pytest.mark.parametrize("ignore", [(0,), (), (0, 3)])
@pytest.mark.parametrize("seed", range(4))
def test_rand_and_vi_agree_with_skimage_on_random_labels(seed, ignore):
    rng = np.random.default_rng(seed)
    shape = (30, 41) if seed % 2 else (6, 20, 17)  # 2D and 3D
    gt = rng.integers(0, 7, shape)
    pred = blobs(shape, 9, seed, holes=0.2) if seed < 2 else rng.integers(0, 12, shape)
    error, precision, recall = adapted_rand_error(pred, gt, ignore_labels=ignore)
    sk_error, sk_precision, sk_recall = skm.adapted_rand_error(gt, pred, ignore_labels=ignore)
    # skimage's precision and recall are swapped (scikit-image #6485); the error is symmetric.
    assert (error, precision, recall) == pytest.approx(
        (sk_error, sk_recall, sk_precision), abs=1e-6)
    vi = variation_of_information(pred, gt, ignore_labels=ignore)
    assert vi == pytest.approx(tuple(skm.variation_of_information(gt, pred, ignore_labels=ignore)),
                               abs=1e-6)


def test_large_label_values_take_the_sorting_path_and_agree():
    gt, pred = blobs((40, 40), 12, 5, holes=0.2), blobs((40, 40), 15, 6, holes=0.2)
    big_gt = np.where(gt > 0, gt + 200_000, 0)  # too sparse for the lookup table
    big_pred = np.where(pred > 0, pred * 99_991, 0).astype(np.uint64)
    assert adapted_rand_error(big_pred, big_gt) == pytest.approx(adapted_rand_error(pred, gt))
    assert adapted_rand_error(big_pred, big_gt)[0] == pytest.approx(
        skm.adapted_rand_error(big_gt, big_pred.astype(np.int64))[0], abs=1e-6)
    assert instance_scores(big_pred, big_gt) == pytest.approx(instance_scores(pred, gt))


def test_rand_and_vi_by_hand():
    gt = np.array([1, 1, 2, 2])
    pred = np.array([1, 1, 1, 1])  # one predicted segment merges two true ones
    # Pairs n(n-1): joined in both 2 + 2 = 4; in pred 4*3 = 12; in gt 2 + 2 = 4.
    # precision 4/12, recall 4/4, error 1 - 2*4/(12 + 4) = 1/2.
    assert adapted_rand_error(pred, gt) == pytest.approx((1 / 2, 1 / 3, 1.0))
    # Each true segment lies in one predicted one: split H(P|G) = 0; the predicted segment is
    # half one, half the other: merge H(G|P) = 1 bit.
    assert variation_of_information(pred, gt) == pytest.approx((0.0, 1.0))
    assert variation_of_information(gt, pred) == pytest.approx((1.0, 0.0))
    # The foreground restriction: ground-truth 0 pixels do not count, whatever is predicted there.
    gt0, pred0 = np.array([0, 0, 1, 1]), np.array([5, 1, 1, 1])
    assert adapted_rand_error(pred0, gt0) == pytest.approx((0.0, 1.0, 1.0))
    assert adapted_rand_error(pred0, gt0, ignore_labels=())[0] > 0


def test_contingency_counts_pairs():
    t = contingency(np.array([[3, 3], [0, 3]]), np.array([[1, 1], [1, 0]]))
    cells = {(int(t.gt_labels[g]), int(t.pred_labels[p])): int(n)
             for g, p, n in zip(t.gt_index, t.pred_index, t.counts)}
    assert cells == {(0, 3): 1, (1, 0): 1, (1, 3): 2}
    assert t.total == 4


# --- semantic --------------------------------------------------------------------------------


def test_semantic_scores_by_hand_and_match_dice_iou():
    gt = np.array([[1, 1, 1, 0], [0, 0, 0, 0]])
    pred = np.array([[0, 1, 1, 1], [1, 0, 0, 0]])
    # |P & G| = 2, |P| = 4, |G| = 3 -> Dice 4/7, IoU 2/5; 3 of 8 pixels wrong.
    assert semantic_scores(pred, gt) == pytest.approx(
        {"dice": 4 / 7, "iou": 2 / 5, "pixel_error": 3 / 8})
    rng = np.random.default_rng(0)
    for k in (2, 4):
        p, g = rng.integers(0, k, (9, 11)), rng.integers(0, k, (9, 11))
        ours = semantic_scores(p, g, k)
        theirs = dice_iou(torch.from_numpy(p), torch.from_numpy(g), k)
        assert {"dice": ours["dice"], "iou": ours["iou"]} == pytest.approx(theirs)
    # Only labelled pixels count toward the pixel error.
    valid = np.array([[True] * 4, [False] * 4])
    assert semantic_scores(pred, gt, valid=valid)["pixel_error"] == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="class 4"):
        semantic_scores(np.full((2, 2), 4), np.zeros((2, 2), int), 3)


# --- instances: hand cases -------------------------------------------------------------------

GT_ONE = np.zeros((8, 8), int)
GT_ONE[:4, :] = 1  # one object, 32 px


def test_perfect_and_empty():
    gt = blobs((32, 32), 8, 1, holes=0.2)
    pred = np.where(gt > 0, gt * 7 + 100, 0)  # other ids, same objects
    assert set(average_precision(pred, gt).values()) == {1.0}
    assert seg_score(pred, gt) == 1.0
    assert split_merge_counts(pred, gt) == {"splits": 0, "merges": 0}
    empty = np.zeros((5, 5), int)
    assert set(average_precision(empty, empty).values()) == {1.0}
    assert seg_score(empty, empty) == 1.0
    m = evaluate_pair(empty, empty, kind="instances")
    assert (m["mean_ap"], m["seg"], m["rand_error"], m["dice"]) == (1.0, 1.0, 0.0, 1.0)


def test_all_wrong():
    pred = np.zeros((8, 8), int)
    pred[6:, :2] = 1  # one object nowhere near the true one
    # TP 0, FP 1, FN 1 at every threshold: AP 0; the true object is not covered: SEG 0.
    assert set(average_precision(pred, GT_ONE).values()) == {0.0}
    assert seg_score(pred, GT_ONE) == 0.0
    assert split_merge_counts(pred, GT_ONE) == {"splits": 0, "merges": 0}
    assert set(average_precision(np.zeros_like(GT_ONE), GT_ONE).values()) == {0.0}
    assert set(average_precision(GT_ONE, np.zeros_like(GT_ONE)).values()) == {0.0}


def test_one_split():
    pred = np.zeros((8, 8), int)
    pred[:4, :6] = 1  # 24 px: IoU with the true object 24/32 = 0.75
    pred[:4, 6:] = 2  # 8 px: IoU 8/32 = 0.25
    ap = average_precision(pred, GT_ONE)
    # t in 0.5..0.70 (5 thresholds): TP 1 (piece 1), FP 1 (piece 2), FN 0 -> 1/2.
    # t >= 0.75: 0.75 > t fails -> TP 0, FP 2, FN 1 -> 0. Mean: 5 * 0.5 / 10 = 0.25.
    assert ap[0.5] == ap[0.7] == 0.5
    assert ap[0.75] == ap[0.95] == 0.0
    assert np.mean(list(ap.values())) == pytest.approx(0.25)
    # Piece 1 covers 24 > 16 px of the object: SEG = its Jaccard 0.75.
    assert seg_score(pred, GT_ONE) == pytest.approx(0.75)
    # Both pieces lie wholly inside the true object: one split, no merge.
    assert split_merge_counts(pred, GT_ONE) == {"splits": 1, "merges": 0}
    m = evaluate_pair(pred, GT_ONE)
    assert (m["mean_ap"], m["ap50"], m["n_gt"], m["n_pred"]) == pytest.approx((0.25, 0.5, 1, 2))


def test_one_merge():
    gt = np.zeros((8, 8), int)
    gt[:4, :6] = 1  # 24 px
    gt[:4, 6:] = 2  # 8 px
    pred = GT_ONE  # one 32 px object over both: IoU 24/32 = 0.75 and 8/32 = 0.25
    ap = average_precision(pred, gt)
    # t < 0.75: TP 1, FP 0, FN 1 (object 2) -> 1/2; t >= 0.75: TP 0, FP 1, FN 2 -> 0.
    assert [ap[t] for t in DSB_THRESHOLDS] == [0.5] * 5 + [0.0] * 5
    # Both true objects are wholly covered by the prediction: Jaccards 0.75 and 0.25 -> 0.5.
    assert seg_score(pred, gt) == pytest.approx(0.5)
    assert split_merge_counts(pred, gt) == {"splits": 0, "merges": 1}


def test_straddling_prediction_is_neither_split_nor_merge():
    gt = np.zeros((4, 8), int)
    gt[:, :4], gt[:, 4:] = 1, 2  # two 16 px objects
    pred = np.zeros_like(gt)
    pred[:, 2:6] = 1  # 16 px: half of each, more than half of neither (8 > 8 fails)
    assert split_merge_counts(pred, gt) == {"splits": 0, "merges": 0}
    assert seg_score(pred, gt) == 0.0


def test_thresholds_below_half_match_one_to_one():
    # At t = 0.2 the merged prediction passes with both objects (0.75, 0.25) but matches one.
    gt = np.zeros((8, 8), int)
    gt[:4, :6], gt[:4, 6:] = 1, 2
    assert average_precision(GT_ONE, gt, thresholds=[0.2])[0.2] == pytest.approx(1 / 2)


# --- evaluate_pair ---------------------------------------------------------------------------


def test_evaluate_pair_binary_masks_get_instance_scores_by_components():
    gt = np.zeros((10, 10), np.uint8)
    gt[1:4, 1:4] = gt[6:9, 6:9] = 255
    m = evaluate_pair(gt, gt)
    assert m["n_gt"] == 2 and m["mean_ap"] == 1.0 and m["pixel_error"] == 0.0
    instances = ndimage.label(gt)[0]
    # Instance ground truth, binary prediction: the mask's components are its objects.
    assert evaluate_pair(gt > 0, instances) == pytest.approx(m)
    # Told it is an instance map, the mask is one object: a merge.
    assert evaluate_pair(gt > 0, instances, kind="instances")["merges"] == 1


def test_evaluate_pair_multiclass_is_semantic_only():
    rng = np.random.default_rng(1)
    p, g = rng.integers(0, 3, (6, 6)), rng.integers(0, 3, (6, 6))
    assert set(evaluate_pair(p, g, num_classes=3)) == {"dice", "iou", "pixel_error"}
    assert set(evaluate_pair(p, g, kind="semantic")) == {"dice", "iou", "pixel_error"}
    with pytest.raises(ValueError, match="shape"):
        evaluate_pair(p, g[:5])


def test_instance_scores_share_one_table_consistently():
    pred, gt = blobs((30, 30), 10, 2, holes=0.2), blobs((30, 30), 8, 3, holes=0.2)
    m = instance_scores(pred, gt)
    assert (m["rand_error"], m["rand_precision"], m["rand_recall"]) == pytest.approx(
        adapted_rand_error(pred, gt, ignore_labels=(0,)))
    assert (m["vi_split"], m["vi_merge"]) == pytest.approx(
        variation_of_information(pred, gt, ignore_labels=(0,)))


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for i, name in enumerate(["a", "b"]):
        g = blobs((24, 24), 5, i, holes=0.2).astype(np.uint8)
        write_array(gt / f"{name}.png", g)
        write_array(pred / f"{name}.tif", g if i == 0 else np.roll(g, 1, axis=0))
    return pred, gt


def test_cli_prints_table_and_writes_json(folders, tmp_path, capsys):
    pred, gt = folders
    out = tmp_path / "m.json"
    assert main([f"pred={pred}", f"gt={gt}", f"out={out}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["image", "dice", "iou"]
    rows = {line.split()[0]: line for line in lines}
    assert {"a", "b", "mean"} <= set(rows)
    assert len({len(line) for line in (lines[0], rows["a"], rows["mean"])}) == 1  # aligned
    report = json.loads(out.read_text())
    assert set(report["images"]) == {"a", "b"} and report["kind"] == "instances"
    assert report["images"]["a"]["mean_ap"] == 1.0
    assert report["mean"]["mean_ap"] == pytest.approx(
        (1.0 + report["images"]["b"]["mean_ap"]) / 2)


def test_cli_single_files(folders, tmp_path, capsys):
    pred, gt = folders
    assert main([f"pred={pred / 'a.tif'}", f"gt={gt / 'a.png'}", "out="]) == 0
    assert "mean" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.json"))


def test_table_keeps_an_image_named_mean():
    rows = {"mean": {"dice": 0.5}, "b": {"dice": 1.0}}
    lines = format_table(rows, {"dice": 0.75}).splitlines()
    assert [line.split() for line in lines if not line.startswith("-")] == [
        ["image", "dice"], ["mean", "0.5000"], ["b", "1.0000"], ["mean", "0.7500"]
    ]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segunet: error: ")
    return err[0]


def test_cli_unmatched_names(folders, capsys):
    pred, gt = folders
    (pred / "b.tif").rename(pred / "c.tif")
    assert main([f"pred={pred}", f"gt={gt}", "out="]) == 2
    line = one_error_line(capsys)
    assert "c.tif" in line and "b.png" in line


def test_cli_shape_mismatch(folders, capsys):
    pred, gt = folders
    write_array(pred / "b.tif", np.zeros((5, 5), np.uint8))
    assert main([f"pred={pred}", f"gt={gt}", "out="]) == 2
    line = one_error_line(capsys)
    assert str(pred / "b.tif") in line and str(gt / "b.png") in line


def test_cli_unreadable_file_and_bad_arguments(folders, capsys):
    pred, gt = folders
    (pred / "a.tif").write_bytes(b"not a tiff at all")
    assert main([f"pred={pred}", f"gt={gt}", "out="]) == 2
    assert "a.tif" in one_error_line(capsys)
    assert main([f"pred={pred}"]) == 2
    assert "gt=" in one_error_line(capsys)
    assert main([f"pred={pred}", f"gt={gt}", "colour=red"]) == 2
    one_error_line(capsys)


# --- real data -------------------------------------------------------------------------------


def eroded(labels: np.ndarray) -> np.ndarray:
    """Each object shrunk by one pixel: keep a pixel only if its 3x3 neighbourhood is all it."""
    same = ndimage.minimum_filter(labels, 3) == ndimage.maximum_filter(labels, 3)
    return np.where(same, labels, 0)


@pytest.mark.skipif(not (DATA / "dsb2018").is_dir(), reason="shared DSB 2018 data not present")
def test_dsb2018_masks_against_themselves_and_eroded():
    masks = sorted((DATA / "dsb2018" / "train" / "masks").glob("*.tif"))[:3]
    for path in masks:
        gt = read_array(path)
        m = evaluate_pair(gt, gt)
        assert {m[k] for k in ("dice", "iou", "mean_ap", "ap50", "seg", "rand_precision",
                               "rand_recall")} == {1.0}
        assert (m["pixel_error"], m["rand_error"], m["vi_split"], m["vi_merge"],
                m["splits"], m["merges"]) == (0.0,) * 6
        # Large nuclei (>= 200 px, radius ~8) keep IoU ~ (7/8)^2 > 0.5 when eroded by 1 px.
        sizes = np.bincount(gt.ravel())
        large = np.where(sizes[gt] >= 200, gt, 0)
        if not large.any():
            continue
        e = evaluate_pair(eroded(large), large)
        assert e["ap50"] == 1.0 and e["mean_ap"] < 1.0
        assert 0.5 < e["seg"] < 1.0 and e["splits"] == e["merges"] == 0


def test_a_segunet_predict_folder_pairs_its_instance_maps(tmp_path):
    """predict writes <name>_instances/_labels/_probabilities: evaluate takes the instances."""
    gt = np.zeros((20, 20), np.uint16)
    gt[2:8, 2:8], gt[10:18, 10:18] = 1, 2
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    write_array(gt_dir / "a.tif", gt)
    write_array(pred_dir / "a_instances.tif", gt)
    write_array(pred_dir / "a_labels.tif", (gt > 0).astype(np.uint8))
    write_array(pred_dir / "a_probabilities.tif", np.zeros((2, 20, 20), np.float16))
    out = tmp_path / "m.json"
    assert main([f"pred={pred_dir}", f"gt={gt_dir}", f"out={out}"]) == 0
    report = json.loads(out.read_text())
    assert list(report["images"]) == ["a"] and report["mean"]["mean_ap"] == 1.0


def test_instance_scores_carry_the_isbi_v_rand_and_v_info():
    rng = np.random.default_rng(3)
    for _ in range(3):
        pred = rng.integers(0, 6, (40, 40))
        gt = rng.integers(0, 4, (40, 40))
        scores = instance_scores(pred, gt)
        assert scores["vrand"] == pytest.approx(isbi_scores(pred, gt)["vrand"], abs=1e-12)
        assert scores["vinfo"] == pytest.approx(isbi_scores(pred, gt)["vinfo"], abs=1e-12)


def test_slices_score_a_stack_as_2d_images(tmp_path, capsys):
    """ISBI 2012 style: a binary cell mask (0 = membrane) as ground truth and a 2D model's
    instances numbered on through the stack. The cells of the two slices overlap in XY, so
    as one volume they are one object (a 3D component) and the prediction looks split;
    slice by slice every cell is found exactly."""
    gt = np.zeros((2, 12, 12), np.uint8)
    gt[:, 1:5, 1:5] = 255
    gt[:, 7:11, 2:10] = 255
    pred = np.zeros((2, 12, 12), np.uint32)
    pred[0][gt[0] > 0] = ndimage.label(gt[0] > 0)[0][gt[0] > 0]
    pred[1][gt[1] > 0] = ndimage.label(gt[1] > 0)[0][gt[1] > 0] + 2  # ids go on: 3, 4
    write_array(tmp_path / "vol.tif", gt)
    write_array(tmp_path / "pred.tif", pred)
    out = tmp_path / "m.json"
    assert main([f"pred={tmp_path / 'pred.tif'}", f"gt={tmp_path / 'vol.tif'}",
                 f"out={out}", "slices=true"]) == 0
    report = json.loads(out.read_text())
    assert set(report["images"]) == {"vol_z000", "vol_z001"}
    for row in report["images"].values():
        assert (row["mean_ap"], row["vrand"], row["vinfo"], row["n_gt"]) == (1.0, 1.0, 1.0, 2)
    assert main([f"pred={tmp_path / 'pred.tif'}", f"gt={tmp_path / 'vol.tif'}",
                 f"out={out}", "overwrite=true"]) == 0
    whole = json.loads(out.read_text())["images"]["vol"]
    assert whole["n_gt"] == 2 and whole["n_pred"] == 4 and whole["mean_ap"] == 0.0


def test_slices_of_a_2d_image_are_one_line(tmp_path, capsys):
    write_array(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    assert main([f"pred={tmp_path / 'a.tif'}", f"gt={tmp_path / 'a.tif'}", "slices=true",
                 "out="]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "leave slices out for 2D images")


# --- what a user may hand evaluate -----------------------------------------------------------


def test_far_apart_class_ids_cost_what_the_classes_present_cost(tmp_path, capsys):
    """The issue's case: a semantic map holding class 100000 made a 100001^2 confusion
    matrix (74.5 GiB). Counted over the classes present it is small; by hand: class 1 is
    right, classes 2 and 100000 are all wrong, the 99997 classes absent from both score 1."""
    gt = np.zeros((10, 10), np.int64)
    gt[:3], gt[5:] = 1, 2
    pred = gt.copy()
    pred[5:] = 100000
    k = 100001
    scores = semantic_scores(pred, gt, k)
    assert scores["dice"] == pytest.approx((1 + 99997) / 100000)
    assert scores["iou"] == pytest.approx((1 + 99997) / 100000)
    assert scores["pixel_error"] == pytest.approx(50 / 100)
    # Random maps of 4 classes, renumbered far apart: the torch counter of the compact maps
    # gives classes 1..3; the 99996 others are absent from both.
    rng = np.random.default_rng(1)
    p, g = rng.integers(0, 4, (30, 30)), rng.integers(0, 4, (30, 30))
    ids = np.array([0, 1, 50000, 99999])
    compact = dice_iou(torch.from_numpy(p), torch.from_numpy(g), 4)
    far = semantic_scores(ids[p], ids[g], 100000)
    for key in ("dice", "iou"):
        assert far[key] == pytest.approx((3 * compact[key] + 99996) / 99999)
    assert far["pixel_error"] == pytest.approx(np.mean(p != g))

    write_array(tmp_path / "gt.tif", gt.astype(np.int32))
    write_array(tmp_path / "pred.tif", pred.astype(np.int32))
    args = [f"pred={tmp_path / 'pred.tif'}", f"gt={tmp_path / 'gt.tif'}", "kind=semantic"]
    # Inferred, that many classes would swamp the mean with absent ones: say so.
    assert main([*args, "out="]) == 2
    line = one_error_line(capsys)
    assert "class 100000" in line and f"num_classes={k}" in line
    out = tmp_path / "m.json"
    assert main([*args, f"num_classes={k}", f"out={out}"]) == 0
    assert json.loads(out.read_text())["mean"]["pixel_error"] == pytest.approx(0.5)


def test_an_existing_report_is_kept_unless_overwrite(folders, tmp_path, capsys):
    pred, gt = folders
    out = tmp_path / "m.json"
    out.write_text("my notes")
    assert main([f"pred={pred}", f"gt={gt}", f"out={out}"]) == 2
    assert "overwrite=true" in one_error_line(capsys) and out.read_text() == "my notes"
    assert main([f"pred={pred}", f"gt={gt}", f"out={out}", "overwrite=true"]) == 0
    assert set(json.loads(out.read_text())["images"]) == {"a", "b"}
    # Never onto an input, overwrite or not.
    a = gt / "a.png"
    before = a.read_bytes()
    assert main([f"pred={pred / 'a.tif'}", f"gt={a}", f"out={a}", "overwrite=true"]) == 2
    assert "gt input" in one_error_line(capsys) and a.read_bytes() == before


def test_the_default_report_goes_next_to_pred_not_into_the_working_folder(
    folders, tmp_path, monkeypatch, capsys
):
    pred, gt = folders
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main([f"pred={pred}", f"gt={gt}"]) == 0
    assert set(json.loads((pred / "metrics.json").read_text())["images"]) == {"a", "b"}
    assert main([f"pred={pred / 'a.tif'}", f"gt={gt / 'a.png'}"]) == 0
    assert json.loads((pred / "a_metrics.json").read_text())["mean"]["mean_ap"] == 1.0
    assert list(work.iterdir()) == []
    assert main([f"pred={pred}", f"gt={gt}"]) == 2  # the folder's report exists now
    assert "overwrite=true" in one_error_line(capsys)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """Two images predicted by a tiny checkpoint in each of predict's formats, and their
    ground truth: ``(root, {format: output folder})``."""
    from segunet.cli.predict import run as predict

    root = tmp_path_factory.mktemp("predicted")
    checkpoint = save_tiny_checkpoint(root / "run")
    for i, name in enumerate("ab"):
        objects = blobs((40, 44), 5, i, radius=7)
        noise = np.random.default_rng(i).normal(0, 20, objects.shape)
        write_array(root / "images" / f"{name}.tif", ((objects > 0) * 200 + noise).astype(
            np.float32))
        write_array(root / "gt" / f"{name}.tif", objects.astype(np.uint16))
    folders = {}
    for fmt in ("tif", "zarr", "ome-zarr"):
        folders[fmt] = root / fmt
        assert predict([f"checkpoint={checkpoint}", f"input={root / 'images'}",
                        f"output={folders[fmt]}", f"format={fmt}", "device=cpu"]) == 0
    return root, folders


@pytest.mark.parametrize("fmt", ["tif", "zarr", "ome-zarr"])
@pytest.mark.parametrize("kind", ["auto", "semantic"])
def test_evaluate_reads_what_predict_writes_in_every_format(predicted, fmt, kind):
    """The issue's case: an OME-Zarr folder written by predict gave "no ground truth".
    Every format scores the instances (labels with kind=semantic) that predict wrote, the
    reference read straight from the TIFF outputs with tifffile."""
    import tifffile

    root, folders = predicted
    out = root / f"{fmt}-{kind}.json"
    assert main([f"pred={folders[fmt]}", f"gt={root / 'gt'}", f"out={out}", f"kind={kind}"]) == 0
    report = json.loads(out.read_text())
    assert set(report["images"]) == {"a", "b"}
    output = "labels" if kind == "semantic" else "instances"
    for name in "ab":
        pred = tifffile.imread(folders["tif"] / f"{name}_{output}.tif")
        gt = tifffile.imread(root / "gt" / f"{name}.tif")
        assert report["images"][name] == pytest.approx(evaluate_pair(pred, gt, kind))


def test_one_ome_zarr_file_against_its_ground_truth(predicted, capsys):
    root, folders = predicted
    image = folders["ome-zarr"] / "a.ome.zarr"
    out = root / "one.json"
    assert main([f"pred={image}", f"gt={root / 'gt' / 'a.tif'}", f"out={out}"]) == 0
    reference = evaluate_pair(read_array(folders["tif"] / "a_instances.tif"),
                              read_array(root / "gt" / "a.tif"))
    assert json.loads(out.read_text())["images"]["a"] == pytest.approx(reference)
    assert main([f"pred={image}", f"gt={root / 'gt' / 'a.tif'}"]) == 0  # beside the image
    assert json.loads((folders["ome-zarr"] / "a_metrics.json").read_text()) == json.loads(
        out.read_text())


@pytest.mark.parametrize("bad, says", [
    (np.float32(np.nan), "NaN"),
    (np.float32(0.4), "fractional"),
    (-1, "negative label -1"),
])
def test_what_no_label_map_holds_is_one_line(tmp_path, capsys, bad, says):
    """A probability map (NaN in it, or fractions) or a negative label was scored as if it
    were objects, with exit 0."""
    gt = np.zeros((12, 12), np.int16)
    gt[2:6, 2:6] = 1
    dtype = np.float32 if isinstance(bad, np.floating) else np.int16
    pred = gt.astype(dtype)
    pred[8, 8] = bad
    write_array(tmp_path / "gt.tif", gt)
    write_array(tmp_path / "pred.tif", pred)
    for p, g in (("pred", "gt"), ("gt", "pred")):  # as the prediction and as ground truth
        assert main([f"pred={tmp_path / p}.tif", f"gt={tmp_path / g}.tif", "out="]) == 2
        line = one_error_line(capsys)
        assert says in line and "pred.tif" in line  # the file that holds it


def test_whole_number_floats_are_labels(tmp_path, capsys):
    gt = blobs((16, 16), 4, 0)
    write_array(tmp_path / "gt.tif", gt.astype(np.uint16))
    write_array(tmp_path / "pred.tif", np.roll(gt, 1, 0).astype(np.float32))
    out = tmp_path / "m.json"
    assert main([f"pred={tmp_path / 'pred.tif'}", f"gt={tmp_path / 'gt.tif'}",
                 f"out={out}"]) == 0
    assert json.loads(out.read_text())["images"]["gt"] == pytest.approx(
        evaluate_pair(np.roll(gt, 1, 0), gt))


def test_an_ome_zarr_without_the_label_image_says_which_it_has(predicted, tmp_path, capsys):
    import shutil

    root, folders = predicted
    image = tmp_path / "a.ome.zarr"
    shutil.copytree(folders["ome-zarr"] / "a.ome.zarr", image)
    shutil.rmtree(image / "labels" / "instances")  # as predict outputs=labels writes it
    assert main([f"pred={image}", f"gt={root / 'gt' / 'a.tif'}", "out="]) == 2
    line = one_error_line(capsys)
    assert "no label image 'instances' (it has: labels)" in line and "kind=semantic" in line
    assert main([f"pred={image}", f"gt={root / 'gt' / 'a.tif'}", "out=", "kind=semantic"]) == 0


def test_a_predict_folder_without_instances_says_what_to_pass(predicted, tmp_path, capsys):
    """outputs=labels: the folder holds a_labels.tif, yet the error was "no prediction for
    gt/a.tif"."""
    import shutil

    root, folders = predicted
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in "ab":
        shutil.copy(folders["tif"] / f"{name}_labels.tif", labels)
    assert main([f"pred={labels}", f"gt={root / 'gt'}", "out="]) == 2
    line = one_error_line(capsys)
    assert "_labels" in line and "no *_instances maps" in line and "kind=semantic" in line
    assert main([f"pred={labels}", f"gt={root / 'gt'}", "out=", "kind=semantic"]) == 0


def test_arrays_named_inside_a_container(tmp_path, capsys):
    """read_array's own error says "name one, e.g. v.h5:gt", and evaluate answered that with
    "no such file or folder"."""
    gt = blobs((16, 18), 4, 2)
    pred = np.roll(gt, 1, 1)
    volume = tmp_path / "v.h5"
    write_array(f"{volume}:gt", gt.astype(np.uint16))
    write_array(f"{volume}:pred", pred.astype(np.uint16))
    assert main([f"pred={volume}", f"gt={volume}:gt", "out="]) == 2
    assert f"{volume}:gt" in one_error_line(capsys)  # the hint: name one
    assert main([f"pred={volume}:pred", f"gt={volume}:gt"]) == 0
    report = json.loads((tmp_path / "v_metrics.json").read_text())
    assert report["images"]["v"] == pytest.approx(evaluate_pair(pred, gt))
    # The container holds the inputs: never the report, overwrite or not.
    assert main([f"pred={volume}:pred", f"gt={volume}:gt", f"out={volume}",
                 "overwrite=true"]) == 2
    assert "is the pred input" in one_error_line(capsys)
