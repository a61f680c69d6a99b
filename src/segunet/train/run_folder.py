"""One run per run folder: a lock while a run trains there, no second run writing its
checkpoints beside another's, and no temp files left by a killed writer.

Two runs started in the same second (Hydra names run folders by the second), or given the same
``hydra.run.dir``, would otherwise interleave their TensorBoard files and leave ``last.pt`` of
one beside ``best.pt`` of the other.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO, TYPE_CHECKING

from segunet.atomic import remove_stale_temps, write_atomic
from segunet.errors import SegunetError

if TYPE_CHECKING:
    from omegaconf import DictConfig

LOCK_NAME = ".segunet.lock"
CHECKPOINTS = ("last.pt", "best.pt")
#: Hydra's record of a run (its config, its own settings, the overrides), in ``<run>/.hydra``.
RECORD = ".hydra"
#: The override ``segunet train`` adds for a folder that already holds a record: Hydra then
#: writes none before the run starts, and :func:`write_record` writes it once the run is
#: accepted (a refused resume leaves the record its error message points to as it was).
DEFER_RECORD = "hydra.output_subdir=null"


def claim(run_dir: Path, resume: str | None) -> IO[str]:
    """Lock ``run_dir`` for this run and return the open lock file (keep it open: the lock
    lasts as long as it, and the system drops it when the process dies, also on kill -9).
    Refuses a folder another live run holds, or one with another run's checkpoints unless
    ``resume`` points into it. Stale temp files of dead writers in ``checkpoints/`` go."""
    lock = _lock(run_dir, resume)
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    # Holding the lock, no other writer of this folder's checkpoints can be alive.
    remove_stale_temps(run_dir / "checkpoints", any_writer=True)
    return lock


def check(run_dir: Path, resume: str | None) -> None:
    """What :func:`claim` would refuse, without keeping the lock: checked before Hydra
    writes its ``.hydra/`` files into the folder. A folder that cannot be made or written
    (under a file, on a read-only or virtual file system) is refused too; one that can is
    made, as Hydra would next."""
    _lock(run_dir, resume).close()


def make(folder: Path, key: str = "hydra.run.dir") -> None:
    """Create ``folder`` (Hydra would next), or refuse it in one line that names ``key``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unwritable(folder, e, key) from None


def unwritable(folder: Path, e: OSError, key: str = "hydra.run.dir") -> SegunetError:
    reason = "a file of that name exists" if isinstance(e, FileExistsError) else (
        os.strerror(e.errno) if e.errno else str(e))
    return SegunetError(
        f"{key}={folder}: cannot make or write that folder ({reason}): choose a folder you "
        "can write to"
    )


def holds_record(run_dir: Path) -> bool:
    return (run_dir / RECORD).is_dir()


def write_record(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Write Hydra's record of this run (``config.yaml``, ``hydra.yaml``,
    ``overrides.yaml`` in ``<run>/.hydra``) as Hydra itself would have, had
    :data:`DEFER_RECORD` not held it back; each file whole or not at all. ``hydra_cfg``:
    ``{"hydra": ...}``, as :class:`hydra.core.hydra_config.HydraConfig` holds it."""
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.create(OmegaConf.to_container(hydra_cfg))  # a writable copy
    hydra_cfg.hydra.output_subdir = RECORD
    hydra_cfg.hydra.overrides.hydra = [
        o for o in hydra_cfg.hydra.overrides.hydra if o != DEFER_RECORD
    ]
    files = {
        "config.yaml": cfg,
        "hydra.yaml": hydra_cfg,
        "overrides.yaml": hydra_cfg.hydra.overrides.task,
    }
    for name, node in files.items():
        text = OmegaConf.to_yaml(node).encode()
        write_atomic(run_dir / RECORD / name, lambda f, text=text: f.write(text))


def _lock(run_dir: Path, resume: str | None) -> IO[str]:
    make(run_dir)
    try:
        lock = open(run_dir / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the run)
    except OSError as e:
        raise unwritable(run_dir, e) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        lock.close()
        raise SegunetError(
            f"run folder {run_dir} is in use by a running segunet train ({owner}): wait for it "
            "or choose another folder (hydra.run.dir=...)"
        ) from None
    try:
        check_checkpoints(run_dir, resume)
    except SegunetError:
        lock.close()
        raise
    return lock


def check_checkpoints(run_dir: Path, resume: str | None) -> None:
    """Refuse a folder holding checkpoints unless ``resume`` (a file or folder) lies in it."""
    found = [n for n in CHECKPOINTS if (run_dir / "checkpoints" / n).is_file()]
    if not found:
        return
    if resume is not None:
        target = Path(resume).expanduser().resolve()
        if target == run_dir.resolve() or run_dir.resolve() in target.parents:
            return
    raise SegunetError(
        f"run folder {run_dir} already holds another run's checkpoints ({', '.join(found)}): "
        f"continue that run with trainer.resume={run_dir}, or choose another folder "
        "(hydra.run.dir=...)"
    )


def recorded_overrides(checkpoint: Path) -> list[str] | None:
    """The ``segunet train`` overrides Hydra recorded for the run ``checkpoint`` belongs to
    (``<run>/.hydra/overrides.yaml``, the checkpoint in ``<run>/checkpoints/`` or in
    ``<run>/``), or None when it is not in its run folder."""
    import yaml

    for run in (checkpoint.parent.parent, checkpoint.parent):
        record = run / ".hydra" / "overrides.yaml"
        if record.is_file():
            return [str(o) for o in yaml.safe_load(record.read_text()) or []]
    return None
