"""``segunet train``: the overrides and the run folder checked before Hydra runs, the launch
of ``trainer.devices`` processes under torchrun, and the Hydra app that trains, one run or a
``-m`` sweep (:func:`segunet.train.trainer.run` trains). torchrun runs this command on every
rank too (:func:`segunet.train.distributed.launch_command`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segunet import interrupts
from segunet.cli.overrides import checked, hydra_app
from segunet.errors import SegunetError, report_errors

if TYPE_CHECKING:
    from omegaconf import DictConfig


def run(argv: list[str]) -> int:
    """``segunet train [flags] [overrides]``; returns the exit status (errors exit 2 with
    one line, as Hydra's app does)."""
    with interrupts.ctrl_c_interrupts():
        try:
            return _train_command(argv)
        except KeyboardInterrupt:  # before training takes Ctrl-C over: loading, composing
            sweep = any(a in ("-m", "--multirun") for a in argv)
            print("segunet: error: " + (
                "interrupted: the sweep stopped; its finished jobs keep their run folders"
                if sweep else "interrupted before training started; no checkpoint was saved"
            ), file=sys.stderr)
            return 2


def _train_command(argv: list[str]) -> int:
    """Check the overrides and the run folder (or launch the ranks), then hand over to the
    Hydra app. A rank under torchrun goes straight to the app: ``segunet train`` checked
    everything before it launched the ranks, and rank 0 holds the run folder."""
    from segunet.train import distributed

    if distributed.launched_by_torchrun():
        rank = distributed.env_world().rank  # only rank 0 writes Hydra's files
        return train_app([*argv, *distributed.hydra_overrides_for_rank(rank)])
    from segunet.cli.experiment import staged

    with report_errors():
        argv = staged(argv)
    rest, args, cfg = checked(argv)
    if cfg is not None and not args.cfg:
        devices = cfg.trainer.get("devices", 1)
        if isinstance(devices, int) and devices > 1:
            return launch_ddp(cfg, rest)
        rest = pin_sweep_folder(cfg, rest) if args.multirun else pin_run_folder(cfg, rest)
    return train_app(rest)


def pin_run_folder(cfg: DictConfig, rest: list[str]) -> list[str]:
    """Check the folder a single run would train into before Hydra writes its ``.hydra/``
    files there (another live run, another run's checkpoints, a folder it cannot write), and
    name it explicitly so Hydra uses the one checked (its clock may have moved on a second).
    A folder that already holds a run's record (a resume into it) keeps it until the run is
    accepted: Hydra writes none, training does once it starts (:func:`run_folder.write_record`)."""
    from segunet.train import run_folder

    run_dir = Path(str(cfg.hydra.run.dir))
    with report_errors():
        run_folder.check(run_dir, cfg.trainer.get("resume"))
    given = any(a.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for a in rest)
    pinned = rest if given else [*rest, f"hydra.run.dir={run_dir}"]
    own = any(a.split("=", 1)[0].lstrip("+") == "hydra.output_subdir" for a in rest)
    defer = run_folder.holds_record(run_dir) and not own
    return [*pinned, run_folder.DEFER_RECORD] if defer else pinned


def pin_sweep_folder(cfg: DictConfig, rest: list[str]) -> list[str]:
    """Make the folder a ``-m`` sweep writes its runs into, or refuse it in one line, and
    name it explicitly, as :func:`pin_run_folder` does for one run. Keys whose values hold a
    ``/`` stay out of the jobs' folder names (``<n>_<overrides>``): their slashes would
    nest the folder, and ``..`` in them lead it out of the sweep's. A sweep folder already
    holding jobs' records keeps them until each job is accepted, as a run folder does."""
    from segunet.train import run_folder

    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    with report_errors():
        run_folder.make(sweep_dir, "hydra.sweep.dir")
    overrides = [a.split("=", 1) for a in rest if "=" in a and not a.startswith("-")]
    given = {key.lstrip("+") for key, _ in overrides}
    pinned = rest if "hydra.sweep.dir" in given else [*rest, f"hydra.sweep.dir={sweep_dir}"]
    if "hydra.output_subdir" not in given and any(map(run_folder.holds_record,
                                                       sweep_dir.iterdir())):
        pinned = [*pinned, run_folder.DEFER_RECORD]
    naming = "hydra.job.config.override_dirname.exclude_keys"
    slashed = [key.lstrip("+~") for key, value in overrides
               if "/" in value and not key.lstrip("+~").startswith("hydra.")]
    if not slashed or naming in given or "hydra.sweep.subdir" in given:
        return pinned
    excluded = [*cfg.hydra.job.config.override_dirname.exclude_keys, *slashed]
    return [*pinned, f"{naming}=[{','.join(dict.fromkeys(excluded))}]"]


def launch_ddp(cfg: DictConfig, overrides: list[str]) -> int:
    """Re-run ``segunet train`` as ``trainer.devices`` processes under torchrun, all training
    into the one run folder resolved here (each rank's own clock could name another)."""
    from segunet.train import distributed

    n = int(cfg.trainer.devices)
    if any(a in ("-m", "--multirun") for a in overrides):
        print(
            f"segunet: error: trainer.devices={n} trains one configuration at a time: "
            "run the sweep's configurations one by one, without -m",
            file=sys.stderr,
        )
        return 2
    import torch

    from segunet.train.trainer import check_launch

    # Refuse here, not in every rank.
    if distributed.uses_cuda(str(cfg.trainer.device)) and torch.cuda.device_count() < n:
        print(
            f"segunet: error: trainer.devices={n} but {torch.cuda.device_count()} GPUs are "
            f"visible: set trainer.devices={max(torch.cuda.device_count(), 1)}",
            file=sys.stderr,
        )
        return 2
    with report_errors():
        check_launch(cfg, n)
    overrides = pin_run_folder(cfg, overrides)  # the folder torchrun's ranks will share
    run_dir = Path(str(cfg.hydra.run.dir))
    command = distributed.launch_command(n, overrides, run_dir)
    print(f"segunet: launching {n} processes: torchrun {' '.join(command[3:])}", file=sys.stderr)
    return wait_for_ranks(subprocess.Popen(command))


def wait_for_ranks(launcher: subprocess.Popen) -> int:
    """The exit status of ``segunet train`` once the launcher and its ranks ended: 0, or 2
    like a single process, with one line when no rank reported the error itself."""
    interrupted = False
    while True:
        try:
            code = launcher.wait()
            break
        except KeyboardInterrupt:
            # The terminal's Ctrl-C reached torchrun too, which passes it on and waits while
            # rank 0 saves a checkpoint and says how to resume: leaving now orphans them.
            interrupted = True
    if code not in (0, 2) and not interrupted:
        signals = {int(s) + 128: s.name for s in signal.Signals}  # torchrun's 128 + N
        how = f"by {signals[code]}" if code in signals else f"with exit status {code}"
        print(
            f"segunet: error: training stopped: a process ended {how} (see its output above)",
            file=sys.stderr,
        )
    return 0 if code == 0 else 2


#: This process's ``-m`` sweep: how many jobs ran, and (number, run folder, one-line reason)
#: of each that failed.
_sweep: dict[str, Any] = {"jobs": 0, "failed": []}


def train_app(argv: list[str]) -> int:
    """``segunet train``'s Hydra app on ``argv``. A ``-m`` sweep runs every job, then lists
    the failed ones and exits with status 2."""
    _sweep.update(jobs=0, failed=[])
    try:
        return hydra_app("train", argv, _train)
    finally:
        _close_run_log()
        _report_sweep()


def _close_run_log() -> None:
    """Detach the run's ``train.log`` from the console logger once the app is done, so a
    later line of this process (a Python session that trains, then predicts) stays out of it."""
    import logging

    from segunet.errors import console

    for handler in [h for h in console.handlers if isinstance(h, logging.FileHandler)]:
        console.removeHandler(handler)
        handler.close()


def _train(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return _sweep_job(cfg)
    with report_errors():
        return _train_job(cfg)


def _train_job(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from segunet.train import distributed, trainer

    try:
        with interrupts.sigterm_interrupts():
            final = trainer.run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except KeyboardInterrupt as e:  # fit() handles its own: this is before training
        terminated = isinstance(e, interrupts.Terminated)
        if terminated and distributed.env_world().rank > 0:
            # torchrun stops the other ranks once one fails, and a cluster's SIGTERM reaches
            # rank 0 as well: rank 0 says why, once.
            sys.exit(2)
        raise SegunetError(
            f"{interrupts.describe(e)} before training started; no checkpoint was saved"
        ) from None
    return final.get("val/dice", float("nan"))


def _sweep_job(cfg: DictConfig) -> float:
    """One job of a ``-m`` sweep. Hydra's launcher runs the jobs in this process, and one
    that raised would end the sweep: a failure is said in one line and recorded, and the
    next job runs. Ctrl-C or SIGTERM ends the sweep."""
    import traceback

    from hydra.core.hydra_config import HydraConfig

    from segunet.errors import expected_errors, one_line, short_message

    _sweep["jobs"] += 1
    try:
        return _train_job(cfg)
    except Exception as e:  # noqa: BLE001 (every job runs; the list at the end says which failed)
        if _interrupted(e):
            with report_errors():
                raise
        expected = isinstance(e, expected_errors())
        if not expected:
            traceback.print_exc()  # a bug: its traceback, then the next job
        reason = one_line(e) if expected else short_message(e)
        job = HydraConfig.get()
        print(f"segunet: error: sweep job #{job.job.num}: {reason}", file=sys.stderr)
        _sweep["failed"].append((job.job.num, job.runtime.output_dir, reason))
        return float("nan")


def _interrupted(e: BaseException) -> bool:
    """Whether ``e`` stands for Ctrl-C or SIGTERM (raised while handling one)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _report_sweep() -> None:
    """After a sweep: each failed job in one line, then how many, and exit status 2."""
    failed = _sweep["failed"]
    if not failed:
        return
    for num, folder, reason in failed:
        print(f"segunet: error: sweep job #{num} ({folder}) failed: {reason}", file=sys.stderr)
    others = "; the others ran to the end" if len(failed) < _sweep["jobs"] else ""
    print(
        f"segunet: error: {len(failed)} of {_sweep['jobs']} sweep jobs failed (listed above)"
        f"{others}",
        file=sys.stderr,
    )
    sys.exit(2)

