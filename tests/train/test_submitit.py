"""Training sweeps through Hydra's submitit launcher, as on SLURM (``submitit_slurm``) but
with its local executor (``submitit_local``): each run a job of its own in its own run
folder, with what a single run has (its lock, its checkpoints, and a scheduler's SIGTERM
saving one, then resume)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

import pytest
import torch
from helpers import TINY, wait_for

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
psutil = pytest.importorskip("psutil")

LAUNCHER = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
            "hydra.launcher.cpus_per_task=1"]


def sweep(tmp_path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "segunet.cli", "train", "-m", *LAUNCHER, *TINY, *args,
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_submitit_local_sweep_trains_each_run_in_its_own_job_and_folder(tmp_path):
    proc = sweep(tmp_path, "trainer.max_steps=2", "trainer.val_every=2",
                 "optim.lr=0.001,0.002")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and
                  not p.name.startswith("."))
    assert len(runs) == 2 and runs[0].name.startswith("0_") and runs[1].name.startswith("1_")
    assert "optim.lr=0.001" in runs[0].name and "optim.lr=0.002" in runs[1].name
    for run, lr in zip(runs, (0.001, 0.002)):
        ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert ckpt["step"] == 2 and ckpt["config"]["optim"]["lr"] == lr
        assert "segunet: done at step 2" in (run / "train.log").read_text()
    jobs = list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))
    assert len(jobs) == 2  # two jobs, as SLURM would run them


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGUSR2], ids=["sigterm", "sigusr2"])
def test_sigterm_to_a_sweep_job_saves_a_checkpoint_and_the_run_resumes(tmp_path, how):
    """What SLURM sends a job it preempts (SIGTERM), and what submitit has it send before the
    time limit (SIGUSR2, which submitit would take to requeue the job): the run saves, says
    how to resume, and resumes."""
    proc = sweep(tmp_path, "trainer.max_steps=100000", "trainer.val_every=1",
                 "optim.lr=0.001")
    def started() -> bool:
        return any((tmp_path / "sweep").glob("0_*/checkpoints/last.pt"))

    try:
        wait_for(started, "first checkpoint", proc, 180)
        run = next((tmp_path / "sweep").glob("0_*"))
        # The job itself (SLURM's job step), not submitit's local stand-in for SLURM.
        jobs = [p for p in psutil.Process(proc.pid).children(recursive=True)
                if "submitit.core._submit" in p.cmdline()]
        assert len(jobs) == 1, [p.cmdline() for p in jobs]
        jobs[0].send_signal(how)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    log = (run / "train.log").read_text() + err
    assert f"terminated ({signal.Signals(how).name}) at step {saved['step']}; saved" in log
    assert proc.returncode != 0  # the sweep reports its job's failure
    # Resumed with the override the line gives, typed into a shell as it stands.
    hint = log.split("; continue with ")[1].splitlines()[0]
    steps = saved["step"] + 2
    done = subprocess.run(
        f"{shlex.join([sys.executable, '-m', 'segunet.cli', 'train', *TINY])} {hint} "
        f"trainer.max_steps={steps} trainer.val_every={steps}",
        shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (new,) = tmp_path.glob("outputs/train/*/checkpoints/last.pt")  # a run folder of its own
    assert torch.load(new, weights_only=True)["step"] == steps
