"""scripts/bench_train.py end to end at a CPU-sized scale: every variant of a 2D and the 3D
case runs, on synthetic data, and the JSON holds a rate for each."""

import importlib.util
import json
import sys

import pytest
import torch
from helpers import ROOT

SCRIPT = ROOT / "scripts" / "bench_train.py"


@pytest.fixture
def bench_train():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # --threads sets it for the whole process
    del sys.modules["bench_train"]


def test_bench_train_small(bench_train, tmp_path, capsys):
    pytest.importorskip("monai")
    out = tmp_path / "bench.json"
    bench_train.main([
        "--small", "--cases", "valid572,unet3d", "--steps", "1", "--warmup", "1",
        "--batch-size", "1", "--workers", "1", "--loader-workers", "1", "--threads", "1",
        "--data-root", str(tmp_path / "no-data"), "--json", str(out),
    ])
    report = json.loads(out.read_text())
    assert [c["case"] for c in report["cases"]] == ["valid572", "unet3d"]
    for case in report["cases"]:
        assert "synthetic" in case["data"]
        for variant in ("a", "b", "c"):
            assert case[variant]["images_per_s"] > 0, case[variant]
        assert case["b_over_a"] > 0 and case["b_over_c"] > 0
    assert report["cases"][1]["in_shape"] == [44, 44, 44]
    assert "b>=10c" in report["cases"][1]["goal"]
    printed = capsys.readouterr().out
    assert "b/a" in printed and "unet3d" in printed


def test_small_fills_only_the_step_counts_not_given(bench_train):
    assert (bench_train.parse_args([]).steps, bench_train.parse_args([]).warmup) == (50, 5)
    small = bench_train.parse_args(["--small"])
    assert (small.steps, small.warmup) == (3, 1)
    given = bench_train.parse_args(["--small", "--steps", "50", "--warmup", "0"])
    assert (given.steps, given.warmup) == (50, 0)
