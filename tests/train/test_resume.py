"""Resuming with changed settings: applied from the resumed step on and recorded, or refused
in one line; never silently ignored."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY

from segunet.errors import SegunetError
from segunet.train.resume import config_changes
from segunet.train.trainer import build_trainer

COSINE = [*TINY, "scheduler=cosine", "trainer.val_every=3", "logging.log_every=1"]


def lr_of(trainer) -> float:
    return trainer.optimizer.param_groups[0]["lr"]


def test_a_longer_cosine_run_with_another_lr_continues_the_new_schedule(make_cfg, tmp_path):
    first = build_trainer(make_cfg(*COSINE, "trainer.max_steps=6"), tmp_path / "a")
    first.fit()
    assert lr_of(first) == pytest.approx(0.0, abs=1e-12)  # the end of its 6-step cosine
    resumed = build_trainer(
        make_cfg(*COSINE, "trainer.max_steps=10", "optim.lr=5e-4",
                 f"trainer.resume={tmp_path / 'a'}"),
        tmp_path / "b",
    )
    # The cosine of the new settings (lr 5e-4 over 10 steps) at step 6, by hand.
    def cosine(step: int) -> float:
        return 5e-4 * (1 + math.cos(math.pi * step / 10)) / 2

    assert resumed.step == 6
    assert lr_of(resumed) == pytest.approx(cosine(6), rel=1e-6)
    # Adam's moments came from the checkpoint (its step count is the run's).
    state = next(iter(resumed.optimizer.state.values()))
    assert int(state["step"]) == 6
    lrs = []
    step = resumed.train_step

    def recording(batch):
        out = step(batch)
        lrs.append(lr_of(resumed))
        return out

    resumed.train_step = recording
    resumed.fit()
    assert lrs == pytest.approx([cosine(s) for s in range(7, 11)], rel=1e-6, abs=1e-12)
    saved = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["config"]["optim"]["lr"] == 5e-4
    assert saved["config"]["scheduler"]["T_max"] == 10
    assert saved["resumes"][-1]["changed"]["optim.lr"] == ["0.001", "0.0005"]
    assert saved["scheduler"]["last_epoch"] == 10


def test_resuming_with_another_optimiser_is_one_line(make_cfg, tmp_path):
    build_trainer(make_cfg(*TINY, "trainer.max_steps=2"), tmp_path / "a").save_checkpoint(
        "last.pt"
    )
    with pytest.raises(SegunetError) as error:
        build_trainer(
            make_cfg(*TINY, "optim=sgd", f"trainer.resume={tmp_path / 'a'}"), tmp_path / "b"
        )
    message = str(error.value)
    assert "\n" not in message
    assert "trained with torch.optim.Adam, not torch.optim.SGD" in message
    assert "optim=adam" in message


def test_unchanged_settings_resume_from_the_saved_scheduler_state(make_cfg, tmp_path):
    """Nothing changed: the saved scheduler state loads as it is (the exact path)."""
    first = build_trainer(make_cfg(*COSINE, "trainer.max_steps=4"), tmp_path / "a")
    first.fit()
    resumed = build_trainer(
        make_cfg(*COSINE, "trainer.max_steps=4", f"trainer.resume={tmp_path / 'a'}"),
        tmp_path / "b",
    )
    assert resumed.scheduler.state_dict() == first.scheduler.state_dict()
    assert lr_of(resumed) == lr_of(first)
    assert resumed.resumes[-1]["changed"] == {}


def test_config_changes_lists_every_difference():
    old = {"optim": {"lr": 1e-3, "betas": [0.9, 0.999]}, "trainer": {"resume": None, "seed": 0}}
    new = {"optim": {"lr": 5e-4, "betas": [0.9, 0.999]}, "trainer": {"resume": "x", "seed": 0},
           "data": {"n_val": 2}}
    changes = config_changes(old, new)
    assert set(changes) == {"optim.lr", "data.n_val"}
    assert changes["optim.lr"] == (1e-3, 5e-4)
