"""Ctrl-C and SIGTERM in training: a whole step, a whole checkpoint, one line; and in
``segunet weightmaps``: one line, and no worker process outlives the command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import TINY, run_in_process, wait_for

from segunet import interrupts
from segunet.errors import SegunetError
from segunet.train import checkpoints, validation
from segunet.train import trainer as train
from segunet.train.trainer import build_trainer


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

    real_save = checkpoints.save_atomic

    def impatient_save(obj, path):
        ctrl_c()  # pressed again while the checkpoint is being written
        real_save(obj, path)

    trainer.train_step = interrupted_at_2
    monkeypatch.setattr(checkpoints, "save_atomic", impatient_save)
    with pytest.raises(SegunetError, match="interrupted at step 2; saved"):
        trainer.fit()
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGUSR2], ids=["sigterm", "sigusr2"])
def test_sigterm_saves_like_ctrl_c_and_says_so_in_one_line(tmp_path, how):
    """What a cluster scheduler sends before preempting a job (SIGTERM), and what submitit
    has SLURM send before a job's time limit (SIGUSR2)."""
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
        proc.send_signal(how)
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    lines = rest.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and "Traceback" not in rest, rest
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert lines[0] == (
        f"segunet: error: terminated ({signal.Signals(how).name}) at step {saved['step']}; saved "
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
        "segunet: error: interrupted before training started; no checkpoint was saved"
    ]


def test_ctrl_c_in_the_search_after_training_keeps_the_checkpoints_and_says_so(
    tmp_path, monkeypatch
):
    """The ``tune: predict`` phase at the end of ``segunet train``: training is done and
    saved; the line says so and how to run the search alone."""
    run_dir = tmp_path / "run"
    searches = []
    real_tune_on = validation.tune_on

    def interrupted_search(*args, **kwargs):
        searches.append(1)
        if len(searches) == 1:
            ctrl_c()
        return real_tune_on(*args, **kwargs)

    monkeypatch.setattr(validation, "tune_on", interrupted_search)
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
    from segunet.cli import overrides as cli

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
        if sweep else "segunet: error: interrupted before training started; no checkpoint was saved"
    ]
    assert not (tmp_path / "run").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # as it was


# --- `segunet weightmaps` with worker processes --------------------------------------------

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")


def state(pid: int) -> str | None:
    """The process's state letter from /proc (None: gone; "Z": ended, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    return state(pid) not in (None, "Z")


def workers_of(pid: int) -> list[int]:
    """The running multiprocessing workers whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline and running(int(stat.parent.name)):
            found.append(int(stat.parent.name))
    return found


def ignores_ctrl_c(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT: a pool worker does once its initializer ran.
    Before that it is still starting Python, and a Ctrl-C then kills it with a traceback."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ignored = next((int(line.split()[1], 16) for line in status.splitlines()
                    if line.startswith("SigIgn:")), 0)
    return bool(ignored >> (signal.SIGINT - 1) & 1)


def until(condition, what: str, limit: float = 60.0) -> None:
    """Poll until ``condition()`` holds (the limit only stops a hung test)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        time.sleep(0.05)


def slow_weightmaps(tmp_path: Path, command: tuple[str, ...] = ("weightmaps",)
                    ) -> subprocess.Popen:
    """``segunet <command> data.targets.workers=2`` on 4 images of 160,000 one-pixel cells
    each (minutes of weight maps), in its own process group as a terminal runs it; returns
    once both workers compute."""
    for folder in ("images", "masks"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    cells = np.zeros((800, 800), np.int32)
    cells[::2, ::2] = np.arange(1, 400 * 400 + 1).reshape(400, 400)
    for i in range(4):
        tifffile.imwrite(tmp_path / "data" / "images" / f"{i}.tif",
                         np.random.default_rng(i).integers(0, 255, (800, 800), np.uint8))
        tifffile.imwrite(tmp_path / "data" / "masks" / f"{i}.tif", cells)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "segunet.cli", *command, "data=folder", "data.path=data",
         "data.val_fraction=0.5", "data.targets.workers=2", "data.targets.cache_dir=cache"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )
    def computing() -> bool:
        workers = workers_of(proc.pid)
        return len(workers) == 2 and all(map(ignores_ctrl_c, workers))

    until(lambda: computing() or proc.poll() is not None, "workers")
    assert proc.poll() is None, proc.communicate()
    return proc


@linux_only
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_weightmaps_stops_at_once_in_one_line_and_ends_its_workers(tmp_path, how):
    """Ctrl-C reaches the whole process group (the terminal's); a scheduler's SIGTERM too."""
    proc = slow_weightmaps(tmp_path)
    workers = workers_of(proc.pid)
    try:
        os.killpg(proc.pid, how)
        # Far less than the minutes the maps still need: the workers are not waited for.
        out, err = proc.communicate(timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.startswith("segunet")]
    assert proc.returncode == 2 and "Traceback" not in err, err
    what = "interrupted" if how == signal.SIGINT else r"terminated \(SIGTERM\)"
    cache = (tmp_path / "cache" / "weightmaps").resolve()
    assert len(lines) == 1 and re.fullmatch(
        f"segunet: error: {what} after 0 weight maps computed and 0 reused; the computed ones "
        f"are cached in {re.escape(str(cache))}: rerun the same command to resume \\(cached "
        "maps are reused\\)", lines[0]), err
    until(lambda: not any(running(w) for w in workers), "end of the workers", 10)


@linux_only
def test_processes_started_in_the_block_begin_with_ctrl_c_blocked():
    """Pool workers are started within this block. A Ctrl-C to the process group while a
    worker still imported printed its 'Fatal Python error' traceback after the command's
    one line; blocked from the start, the signal waits until the worker ignores it."""
    mask = [sys.executable, "-c", "import signal; "
            "print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))"]
    with interrupts.blocked_in_children():
        inside = subprocess.run(mask, capture_output=True, text=True, check=True).stdout
    outside = subprocess.run(mask, capture_output=True, text=True, check=True).stdout
    assert inside.strip() == str(sorted(int(s) for s in (signal.SIGINT, signal.SIGTERM,
                                                          signal.SIGUSR2)))
    assert outside.strip() == "[]"
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()  # this thread's, restored


@linux_only
def test_weightmaps_workers_end_when_their_parent_is_killed(tmp_path):
    proc = slow_weightmaps(tmp_path)
    workers = workers_of(proc.pid)
    try:
        proc.kill()  # SIGKILL: the parent cleans up nothing
        proc.wait(timeout=30)
        until(lambda: not any(running(w) for w in workers), "end of the orphaned workers", 10)
    finally:
        for w in workers:
            if running(w):
                os.kill(w, signal.SIGKILL)


@linux_only
def test_train_stops_its_weight_map_workers_too(tmp_path):
    """``segunet train`` builds its data through the same pool. A scheduler's SIGTERM to
    the command alone: it waited for the workers to finish their maps (minutes)."""
    proc = slow_weightmaps(tmp_path, ("train", "model.channels=[4,8,16]", "trainer.device=cpu",
                                      "logging.progress=false", "hydra.run.dir=run"))
    workers = workers_of(proc.pid)
    try:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(
        "segunet: error: terminated (SIGTERM) before training started")
    until(lambda: not any(running(w) for w in workers), "end of the workers", 10)


@linux_only
def test_weightmaps_worker_killed_is_one_line_with_the_fix(tmp_path):
    """The kernel's out-of-memory killer ends a worker: the others end too, and the line
    says which setting to lower."""
    proc = slow_weightmaps(tmp_path)
    workers = workers_of(proc.pid)
    try:
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "segunet: error: a weight map worker process ended abruptly (killed, or out of "
        "memory?): set data.targets.workers lower, or 0 to compute in this process; the maps "
        "computed so far are cached"
    )
    until(lambda: not any(running(w) for w in workers), "end of the workers", 10)


def test_held_signals_reach_the_handler_after_the_block_once():
    """What a progress bar's constructor runs under: a Ctrl-C inside waits for the block's
    end, then reaches the handler that was in place, as if it had come just then."""
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)  # held too, and not sent again: the first is
            time.sleep(0.05)
            assert seen == []
        assert seen == [signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
    finally:
        signal.signal(signal.SIGINT, previous)
