"""Atomic file writes: readers see the old file or the whole new one, never a part.

Temp files are named ``.<name>.<pid>@<host>.<random>.tmp``, so the next writer into a folder
can tell the temps of a killed writer (kill -9, power loss: no ``finally`` ran) from those of
one still writing, and remove them (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from segunet.errors import SegunetError

_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^.]+)\.[^.]+\.tmp$")


def writer_tag() -> str:
    """``<pid>@<host>`` of this process, as temp names carry it."""
    host = socket.gethostname().split(".")[0] or "localhost"
    return f"{os.getpid()}@{host}"


def temp_name(path: Path) -> str:
    """The ``.<name>.<pid>@<host>.`` prefix of ``path``'s temps (a random part and ``.tmp``
    follow)."""
    return f".{path.name}.{writer_tag()}."


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temp file in ``path``'s folder, fsync it, rename it over ``path``.

    The file gets the mode a new file gets under the umask (``mkstemp`` makes it 0600). A
    failure removes the temp and leaves any old ``path`` as it was; a write the disk refuses
    (full, quota, permissions) is a one-line SegunetError that says so.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_name(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) or _torch_write_failed(e):
            raise _write_error(path, e) from e
        raise
    # The rename is only durable once the directory entry is on disk too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_error(path: Path, e: BaseException) -> SegunetError:
    if isinstance(e, OSError):
        reason = os.strerror(e.errno) if e.errno else str(e)
    else:  # torch's writer says only that a write failed: the usual cause is a full disk
        reason = "the write failed"
    try:
        free = shutil.disk_usage(_existing(path.parent)).free / 2**20
        reason += f" ({free:.0f} MiB free there)"
    except OSError:
        pass
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    return SegunetError(f"cannot write {path}: {reason}; {kept}")


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _torch_write_failed(e: BaseException) -> bool:
    """torch.save's zip writer turns a failed write (ENOSPC, EFBIG) into a RuntimeError of
    its ``inline_container.cc`` ('file write failed', 'unexpected pos ...')."""
    return isinstance(e, RuntimeError) and "inline_container" in str(e)


def remove_stale_temps(folder: Path, any_writer: bool = False) -> list[Path]:
    """Remove the temp files and folders (``.<name>.<pid>@<host>.<random>.tmp``) in
    ``folder`` whose writer, on this host, is no longer alive; with ``any_writer`` (the
    caller knows no other writer can be at work there, e.g. it holds the run folder's lock)
    every ``.*.tmp``. Returns what was removed."""
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        if not any_writer and not _writer_dead(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _writer_dead(name: str) -> bool:
    """Whether the temp ``name`` belongs to a dead process of this host (unknown: alive)."""
    match = _TEMP.match(name)
    if match is None or match["host"] != writer_tag().split("@")[1]:
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive, another user's / not a pid
        return False
    return False


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
