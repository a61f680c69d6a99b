"""Data-parallel training across processes (DDP), launched by ``torchrun``.

``torchrun --nproc_per_node=N -m segunet.cli train ...`` (or ``segunet train trainer.devices=N``,
which runs that command) starts one process per device and tells each its place through the
environment: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``. This
module reads those, joins the process group (NCCL on CUDA, gloo on the CPU) and offers the few
collectives the trainer needs. Without torchrun everything here is a single-process no-op.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from segunet.errors import SegunetError

# Rank 0 validates and writes checkpoints while the others wait in a collective; a long
# validation must not trip the default timeout (10 min with NCCL).
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, validates and writes checkpoints."""
        return self.rank == 0


def env_world() -> World:
    """The world torchrun describes in the environment (a world of one without it)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def world() -> World:
    """This process's world once :func:`init` joined the group; a world of one before."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())


def uses_cuda(device: str) -> bool:
    """Whether ``trainer.device`` trains on CUDA (``auto`` does when a GPU is visible)."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def check_device(device: str, size: int) -> None:
    """``trainer.device`` for ``size`` processes: one may pin a GPU, several use one each."""
    if size > 1 and device.startswith("cuda:"):
        raise SegunetError(
            f"trainer.device={device} pins one GPU, but each of the {size} processes uses "
            "its own (cuda:LOCAL_RANK): use trainer.device=cuda or auto"
        )


def init(device: str) -> World:
    """Join the process group torchrun set up, if there is one (``WORLD_SIZE`` > 1).

    ``device`` is ``trainer.device``: CUDA (``auto`` with a GPU, ``cuda``) uses NCCL with one
    GPU per process, ``cuda:LOCAL_RANK``; ``cpu`` uses gloo.
    """
    w = env_world()
    if w.size == 1 or dist.is_initialized():
        return world()
    check_device(device, w.size)
    if uses_cuda(device):
        if torch.cuda.device_count() <= w.local_rank:
            raise SegunetError(
                f"process {w.rank} wants cuda:{w.local_rank} but {torch.cuda.device_count()} "
                "GPUs are visible: lower --nproc_per_node / trainer.devices"
            )
        torch.cuda.set_device(w.local_rank)
        dist.init_process_group(
            "nccl", timeout=TIMEOUT, device_id=torch.device("cuda", w.local_rank)
        )
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return world()


def shutdown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank; also where the other ranks wait for it."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (a host sync: for one-off decisions)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ------------------------------------------------------------------------------ launching
def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def hydra_overrides_for_rank(rank: int) -> list[str]:
    """Extra Hydra overrides for a process, which ``segunet train`` adds under torchrun: ranks
    above 0 write no ``.hydra/`` folder and no log file into the shared run folder (rank 0
    writes them once)."""
    return [] if rank == 0 else ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def launch_command(nproc: int, overrides: list[str], run_dir: str | Path) -> list[str]:
    """torchrun (through :func:`torchrun`) for ``nproc`` local processes training with the
    same overrides into one run folder, resolved here once so every rank agrees on it.
    ``--standalone`` finds a free port on this machine."""
    return [
        sys.executable, "-m", "segunet.train.distributed", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "segunet.cli", "train",
        *[o for o in overrides if not o.startswith("hydra.run.dir=")],
        f"hydra.run.dir={_quoted(str(Path(run_dir).resolve()))}",
    ]


def torchrun(args: list[str]) -> int:
    """``torchrun args``, its failures an exit status instead of its traceback and failure
    table (the ranks' own output says what went wrong): 2 when a rank stopped on an error it
    reported in one line (status 2), else the first failed rank's status, 128 + N for signal N.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(args))
    except ChildFailedError as e:
        if any(f.exitcode == 2 for f in e.failures.values()):
            return 2
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code
    except SignalException as e:  # Ctrl-C: torchrun passed it on and waited for the ranks
        return 128 + int(e.sigval)
    return 0


def _quoted(value: str) -> str:
    """A Hydra override value, quoted when it holds characters the grammar would parse."""
    if all(c.isalnum() or c in "/._-:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
