"""The plan as an experiment config: it composes with Hydra into exactly the values the rules
chose, keeps the user's data keys and carries the fingerprint."""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf
from test_rules import FOLDER, nuclei, timer

from segunet.cli.experiment import stage
from segunet.config.compose import check_config
from segunet.plan.recipe import write_recipe
from segunet.plan.rules import Device, plan


def test_the_recipe_composes_to_the_plan(make_cfg):
    fp = nuclei(channels=[1, 3], colour_gain=2.0, dark_objects=0.3)
    result = plan(fp, FOLDER, Device("cpu"), 600, timer(0.4))
    text = write_recipe(result, fp, "folder", {"path": "/my/cells", "label_suffix": "_mask"},
                        "segunet plan data=folder data.path=/my/cells")
    # every setting has its reason on the line above
    lines = text.splitlines()
    for c in result.choices:
        leaf = c.key.split(".")[-1]
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{leaf}:"))
        assert lines[i - 1].strip().startswith("#"), c.key
    folder, name = stage(text, "cells")
    cfg = make_cfg(f"hydra.searchpath=[file://{folder}]", f"experiment={name}")
    check_config(cfg)
    for c in result.choices:
        got = OmegaConf.select(cfg, c.key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == c.value, c.key
    assert cfg.data.path == "/my/cells" and cfg.data.label_suffix == "_mask"
    assert cfg.data._target_.endswith(".folder")
    assert cfg.scheduler._target_.endswith("CosineAnnealingLR")
    assert cfg.plan.fingerprint.touching == fp.touching
    assert cfg.plan.step_s == 0.4 and cfg.plan.budget_s == 600
    assert yaml.safe_load(text)["plan"]["fingerprint"]["diameter"]["p50"] == 20


def test_staging_is_content_addressed():
    a, name_a = stage("# @package _global_\n", "x")
    b, name_b = stage("# @package _global_\n", "x")
    c, name_c = stage("# @package _global_\ntrainer:\n  max_steps: 3\n", "x")
    assert (a, name_a) == (b, name_b) and name_c != name_a
    assert (c / "experiment" / f"{name_c}.yaml").read_text().endswith("max_steps: 3\n")
