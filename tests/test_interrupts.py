"""Ctrl-C and SIGTERM in training: a whole step, a whole checkpoint, one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import TINY, run_in_process, wait_for

from segunet import train
from segunet.errors import SegunetError
from segunet.train import build_trainer


@pytest.fixture(autouse=True)
def _default_sigint():
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_between_optimizer_and_scheduler_saves_a_whole_step(make_cfg, tmp_path):
    trainer = build_trainer(make_cfg(*TINY, "trainer.max_steps=10", "trainer.val_every=10",
                                     "scheduler=cosine"), tmp_path)
    update = trainer.scaler.update

    def update_then_ctrl_c(*args):  # between optimizer.step() and scheduler.step()
        update(*args)
        if trainer.scheduler.last_epoch == 2:
            ctrl_c()

    trainer.scaler.update = update_then_ctrl_c
    with pytest.raises(SegunetError, match="interrupted at step 3; saved"):
        trainer.fit()
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    adam_steps = {int(s["step"]) for s in saved["optimizer"]["state"].values()}
    assert saved["step"] == 3
    assert saved["scheduler"]["last_epoch"] == 3
    assert adam_steps == {3}


def test_a_second_ctrl_c_while_saving_does_not_lose_the_checkpoint(make_cfg, tmp_path,
                                                                   monkeypatch):
    trainer = build_trainer(make_cfg(*TINY, "trainer.max_steps=10", "trainer.val_every=10"),
                            tmp_path)
    step = trainer.train_step

    def interrupted_at_2(batch):
        out = step(batch)
        if trainer.step == 2:
            raise KeyboardInterrupt
        return out

    real_save = train.save_atomic

    def impatient_save(obj, path):
        ctrl_c()  # pressed again while the checkpoint is being written
        real_save(obj, path)

    trainer.train_step = interrupted_at_2
    monkeypatch.setattr(train, "save_atomic", impatient_save)
    with pytest.raises(SegunetError, match="interrupted at step 2; saved"):
        trainer.fit()
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_sigterm_saves_like_ctrl_c_and_says_so_in_one_line(tmp_path):
    """What a cluster scheduler sends before preempting a job."""
    # A checkpoint every step: its first one shows that training is under way.
    args = [*TINY, "trainer.max_steps=100000", "trainer.val_every=1",
            f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "segunet.cli", "train", *args], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stderr.readline()
        assert first.startswith("segunet: training"), first
        last = tmp_path / "run" / "checkpoints" / "last.pt"
        wait_for(last.is_file, "first checkpoint", proc)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    lines = rest.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and "Traceback" not in rest, rest
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert lines[0] == (
        f"segunet: error: terminated (SIGTERM) at step {saved['step']}; saved "
        f"{tmp_path / 'run' / 'checkpoints' / 'last.pt'}; continue with "
        f"trainer.resume={tmp_path / 'run'}"
    )


def test_ctrl_c_before_training_starts_is_one_line(tmp_path, monkeypatch):
    """While the data loads (weight maps of a large dataset take minutes)."""

    def loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train, "build_trainer", loading)
    done = run_in_process("train", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "segunet: error: interrupted before training started; nothing was saved"
    ]


def test_ctrl_c_in_the_search_after_training_keeps_the_checkpoints_and_says_so(
    tmp_path, monkeypatch
):
    """The ``tune: predict`` phase at the end of ``segunet train``: training is done and
    saved; the line says so and how to run the search alone."""
    run_dir = tmp_path / "run"
    searches = []
    real_tune_on = train.tune_on

    def interrupted_search(*args, **kwargs):
        searches.append(1)
        if len(searches) == 1:
            ctrl_c()
        return real_tune_on(*args, **kwargs)

    monkeypatch.setattr(train, "tune_on", interrupted_search)
    done = run_in_process(
        "train", *TINY, "data.metric=ap", "trainer.max_steps=2", "trainer.val_every=2",
        "postprocess.grid={threshold:[0.5],min_size:[0]}", f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "segunet: error: interrupted during the post-processing search after training; the "
        f"checkpoints of step 2 are saved in {run_dir / 'checkpoints'}; run the search again "
        f"with segunet tune checkpoint={run_dir}"
    )
    for name in ("last.pt", "best.pt"):
        assert torch.load(run_dir / "checkpoints" / name, weights_only=True)["step"] == 2
    # The advice works.
    again = run_in_process("tune", f"checkpoint={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "written into" in again.stderr


@pytest.mark.parametrize("sweep", [[], ["-m"]])
def test_ctrl_c_while_the_config_is_composed_is_one_line(tmp_path, monkeypatch, sweep):
    """Before ``segunet train`` hands over to Hydra (importing torch, composing and checking
    the config take seconds): no traceback."""
    from segunet import cli

    compose = cli.check_overrides

    def composing(*args, **kwargs):
        ctrl_c()
        return compose(*args, **kwargs)

    monkeypatch.setattr(cli, "check_overrides", composing)
    done = run_in_process("train", *sweep, *TINY, f"hydra.run.dir={tmp_path / 'run'}",
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "segunet: error: interrupted: the sweep stopped; its finished jobs keep their run folders"
        if sweep else "segunet: error: interrupted before training started; nothing was saved"
    ]
    assert not (tmp_path / "run").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # as it was
