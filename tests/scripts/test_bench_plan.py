"""scripts/bench_plan.py's bookkeeping: the per-modality means, the table's ratios and the
rows an earlier run lends to ``--reuse``, against hand computations (the training it drives
is bench_quality's, tested beside it)."""

import importlib.util
import json
import sys

import pytest
from helpers import ROOT


@pytest.fixture
def bench_plan():
    spec = importlib.util.spec_from_file_location("bench_plan", ROOT / "scripts" / "bench_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_quality", None)


def report(auto=0.45, hand=0.46, monai=0.3):
    def row(score, steps):
        return {"scores": {"mean_ap": score}, "train_s": 600.0, "steps": steps,
                "per_image": {}, "by_modality": {"colour": score / 2, "grey": score}}

    return {"dataset": "dsb2018", "headline": "mean_ap", "plan_s": 7.0, "timing": {"x": 1},
            "plan": {"data.target": "boundary", "trainer.max_steps": 900},
            "methods": {"auto": row(auto, 900), "hand": row(hand, 800),
                        "monai": row(monai, 200)}}


def test_by_modality_is_the_mean_of_each_part(bench_plan):
    result = {"per_image": {"a": {"mean_ap": 0.2}, "b": {"mean_ap": 0.4},
                            "c": {"mean_ap": 0.9}}}
    assert bench_plan.by_modality(result, {"c"}, "mean_ap") == pytest.approx(
        {"colour": 0.9, "grey": 0.3})
    assert bench_plan.by_modality(result, set(), "mean_ap")["colour"] is None


def test_the_table_holds_the_ratios(bench_plan):
    text = bench_plan.table([report()])
    assert "| dsb2018 | 7 | 1.50 | -0.010 |" in text  # 0.45 / 0.3, 0.45 - 0.46
    assert "| dsb2018 | auto | mean_ap 0.450 | 0.225 | 0.450 | 900 | 600 |" in text


def test_reuse_takes_the_earlier_rows(bench_plan, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([report()]))
    earlier = bench_plan.reused(path, "dsb2018")
    assert earlier["timing"] == {"x": 1}
    assert earlier["rows"]["monai"]["scores"] == {"mean_ap": 0.3}
    assert earlier["rows"]["hand"]["train_steps"] == 800
    with pytest.raises(SystemExit, match="holds no isbi2012 run"):
        bench_plan.reused(path, "isbi2012")
    assert bench_plan.reused(None, "dsb2018") is None
