"""scripts/bench_scale_auto.py on two held-out DSB images (skipped without ../shared): its
rows, and the resampled labels' widths against the factor."""

import importlib.util
import sys

import pytest
from helpers import ROOT

SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture
def bench():
    path = ROOT / "scripts" / "bench_scale_auto.py"
    spec = importlib.util.spec_from_file_location("bench_scale_auto", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_quality", None)


@pytest.mark.skipif(not (SHARED / "dsb2018").is_dir(), reason="needs ../shared/data/dsb2018")
def test_two_images_at_two_scales(bench, tmp_path, capsys):
    out = tmp_path / "scale.json"
    result = bench.main(["--limit", "2", "--scales", "1,2", "--methods", "as_is,auto",
                         "--shared", str(SHARED), "--out", str(out)])
    rows = result["rows"]
    assert [(r["scale"], r["method"]) for r in rows] == [
        (1.0, "as_is"), (1.0, "auto"), (2.0, "as_is"), (2.0, "auto")]
    assert all(0 <= r["mean_ap"] <= 1 for r in rows)
    for one, two in zip(rows[0]["images"], rows[2]["images"]):
        assert two["width"] == pytest.approx(2 * one["width"], rel=0.05)
    assert rows[0]["log2_error"] is None and rows[1]["log2_error"] is not None
    assert "| 2x | auto |" in capsys.readouterr().out and out.is_file()


@pytest.mark.skipif(not (SHARED / "dsb2018").is_dir(), reason="needs ../shared/data/dsb2018")
def test_a_model_trained_at_the_scale(bench, capsys):
    result = bench.main(["--limit", "2", "--scales", "0.5", "--methods", "as_is,trained",
                         "--shared", str(SHARED), "--train-steps", "2", "--train-images", "5",
                         "--train-override", "model.channels=[4,8,16,32]",
                         "--train-override", "logging.progress=false"])
    as_is, trained = result["rows"]
    assert trained["method"] == "trained" and 0 <= trained["mean_ap"] <= 1
    assert [i["name"] for i in trained["images"]] == [i["name"] for i in as_is["images"]]
    if trained["mean_ap"]:
        ratio = as_is["mean_ap"] / trained["mean_ap"]
        assert f"0.5x: as_is / trained on that scale: {ratio:.2f}" in capsys.readouterr().out


def test_training_images_are_the_grey_ones_nuclei_trained_on(bench):
    if not (SHARED / "dsb2018").is_dir():
        pytest.skip("needs ../shared/data/dsb2018")
    test = {n for n, _, _ in bench.held_out(SHARED, 60)}
    train = [(n, image) for n, image, _ in bench.held_out(SHARED, 10**6, trained_on=True)]
    assert len(test) == 60 and not test & {n for n, _ in train}
    assert all(image.ndim == 2 for _, image in train)
