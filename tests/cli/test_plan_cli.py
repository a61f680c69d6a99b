"""``segunet plan`` and ``segunet train experiment=<file>`` / ``experiment=auto`` as a user
runs them: a folder of their own images in, a recipe out, a run that trains it."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import yaml
from helpers import run_in_process


def cells_folder(root, n=6, shape=(96, 96), seed=0, inverted=0):
    """``n`` images of bright discs 8-12 px across on a dark background, some touching; the
    last ``inverted`` of them dark discs on a bright background (brightfield)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(n):
        labels = np.zeros(shape, np.uint16)
        for k in range(1, 9):
            r = rng.uniform(4, 6)
            cy, cx = rng.uniform(8, shape[0] - 8, 2)
            labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = k
        image = 0.1 + 0.7 * (labels > 0) + 0.05 * rng.normal(size=shape)
        image = 1 - image if i >= n - inverted else image
        tifffile.imwrite(root / "images" / f"c{i}.tif", (image * 255).clip(0, 255).astype(np.uint8))
        tifffile.imwrite(root / "masks" / f"c{i}.tif", labels)
    return root


def test_plan_writes_a_recipe_that_trains(tmp_path):
    data = cells_folder(tmp_path / "cells")
    out = tmp_path / "plans" / "cells.yaml"
    done = run_in_process("plan", "data=folder", f"data.path={data}", "budget=2m",
                          f"out={out}", "device=cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # the recipe went to the file
    assert "diameter px" in done.stderr and "touching" in done.stderr
    assert f"segunet train experiment={out}" in done.stderr
    recipe = yaml.safe_load(out.read_text())
    assert recipe["data"]["path"] == str(data)
    d50 = recipe["plan"]["fingerprint"]["diameter"]["p50"]
    assert 7 < d50 < 13  # discs of radius 4-6
    assert recipe["model"]["channels"] == [16, 32, 64]  # 41 px of context covers them
    assert recipe["trainer"]["max_steps"] >= 100

    done = run_in_process("train", f"experiment={out}", "trainer.max_steps=2",
                          "trainer.val_every=2", "trainer.batch_size=2", "model.channels=[4,8,16]",
                          "logging.progress=false", "trainer.device=cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = next(tmp_path.glob("outputs/train/*"))
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["plan"]["fingerprint"]["diameter"]["p50"] == d50
    assert saved["data"]["targets"]["sigma"] == recipe["data"]["targets"]["sigma"]
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "plan" in str(checkpoint.get("config", ""))


def test_two_modalities_are_oriented_and_balanced(tmp_path):
    data = cells_folder(tmp_path / "cells", n=8, inverted=2)
    out = tmp_path / "plan.yaml"
    done = run_in_process("plan", "data=folder", f"data.path={data}", "budget=1m",
                          f"out={out}", "device=cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "grey, bright background: 2; grey, dark background: 6" in done.stderr
    recipe = yaml.safe_load(out.read_text())
    assert recipe["data"]["polarity"] == "bright_objects"
    assert recipe["data"]["balance"] == "appearance"
    done = run_in_process("train", f"experiment={out}", "trainer.max_steps=1",
                          "trainer.val_every=1", "trainer.batch_size=2", "model.channels=[4,8,16]",
                          "logging.progress=false", "trainer.device=cpu",
                          "postprocess.enabled=false", "data.val_fraction=0.25", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # 2 and 4 training images of the same size: sqrt(2) : sqrt(4)
    share = np.sqrt(2) / (np.sqrt(2) + 2)
    assert (f"data.balance=appearance: patches drawn grey, bright background {share:.0%} "
            f"(2 images); grey, dark background {1 - share:.0%} (4 images)") in done.stderr


def test_plan_to_stdout_is_the_yaml(tmp_path):
    data = cells_folder(tmp_path / "cells", n=3)
    done = run_in_process("plan", "data=folder", f"data.path={data}", "budget=1m",
                          "device=cpu", "limit=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    recipe = yaml.safe_load(done.stdout)
    assert recipe["plan"]["fingerprint"]["sampled"] == 2
    assert recipe["plan"]["fingerprint"]["images"] == 3


def test_experiment_auto_plans_and_trains_in_one_command(tmp_path):
    done = run_in_process("train", "data=synthetic", "data.n_train=3", "data.n_val=2",
                          "data.shape=[96,96]", "experiment=auto", "plan.budget=1m",
                          "plan.limit=5", "trainer.max_steps=2", "trainer.val_every=2",
                          "model.channels=[4,8,16]", "trainer.batch_size=2",
                          "logging.progress=false", "trainer.device=cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "experiment=auto: planning the recipe" in done.stderr
    run = next(tmp_path.glob("outputs/train/*"))
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["plan"]["fingerprint"]["sampled"] == 5
    assert saved["plan"]["budget_s"] == 60
    assert saved["trainer"]["max_steps"] == 2  # the command line over the plan


@pytest.mark.parametrize("args, message", [
    (["train", "experiment=nothere.yaml"], "experiment=nothere.yaml: no such file"),
    (["train", "experiment=auto"], "experiment=auto plans from your data: give data="),
    (["train", "experiment=quickstart", "plan.budget=5m"], "plan.<key>=... goes with "
                                                          "experiment=auto"),
    (["plan", "data=synthetic", "budget=5s"], "budget=5s: give the training time as"),
    (["plan", "data=synthetic", "trainer.max_steps=3"], "segunet plan takes data=..."),
    (["plan", "data=synthetic", "out=plan.txt"], "out=plan.txt: name a .yaml file"),
    (["plan", "data=folder", "data.path=/no/such/folder"], "data folder /no/such/folder/images "
                                                           "not found"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    done = run_in_process(*args, cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in done.stderr, done.stderr


def test_one_image_is_refused(tmp_path):
    data = cells_folder(tmp_path / "one", n=1)
    done = run_in_process("plan", "data=folder", f"data.path={data}", cwd=tmp_path)
    assert done.returncode != 0
    assert "1 image found; a plan needs at least two" in done.stderr.strip().splitlines()[-1]
