"""Border weight maps (Ronneberger et al. 2015, Eq. 2) computed once per image, in parallel,
and kept on disk.

A map is stored under a key that hashes everything it depends on: the instance labels
(bytes, shape, dtype), the valid mask, ``w0``, ``sigma``, the class weighting, the spacing,
:data:`~segunet.data.weightmaps.BORDER_TOL` and :data:`FORMAT_VERSION`. Changing any of them
misses the cache; nothing is ever invalidated by hand. Entries live in
``<cache_dir>/weightmaps/<key[:2]>/<key>.npz`` (``cache_dir`` :data:`AUTO`: the per-user
cache folder) with the map, the key and a SHA-256 of the map;
they are written to a temp file in the same folder, fsynced and renamed into place, so a
crash leaves at most a ``*.tmp`` file (ignored, and removed once stale), never a truncated
entry. A damaged or foreign entry is reported, deleted and rebuilt, never used; so is one
whose map holds NaN, infinite or out-of-range weights (a poisoned shared cache).

Worker processes live and die with the process that started them: they ignore the
terminal's Ctrl-C, which their parent handles by killing them, and end when their parent
ends, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import platformdirs
from tqdm import tqdm

from segunet import interrupts
from segunet.atomic import write_atomic
from segunet.data.weightmaps import BORDER_TOL, border_weight_map
from segunet.errors import SegunetError

#: Bump when the stored layout or the weight map formula changes: old entries then miss.
FORMAT_VERSION = 1
#: Temp files older than this (seconds) are debris of a killed run and get removed.
STALE_TMP_SECONDS = 3600.0
#: How often (seconds) a worker checks that its parent is still there.
PARENT_POLL_SECONDS = 0.5
#: Linux's prctl option: a signal for this process when its parent ends.
PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)

#: ``data.targets.cache_dir``'s default: the per-user cache folder (platformdirs:
#: ``$XDG_CACHE_HOME/segunet`` or ``~/.cache/segunet`` on Linux). Not the data folder, which
#: may be read-only (shared datasets are), nor the run folder, which would compute the
#: expensive maps again for every run: an entry's key hashes everything its map depends on
#: (:func:`cache_key`), so runs and projects share entries safely.
AUTO = "auto"


@dataclass
class CacheStats:
    """What :func:`border_weight_maps` did since the last :meth:`reset` (all calls summed):
    maps read from the cache, maps computed, and the entries among them that were damaged."""

    hits: int = 0
    misses: int = 0
    rebuilt: int = 0

    def reset(self) -> None:
        self.hits = self.misses = self.rebuilt = 0


#: Module-level counter, read by ``segunet weightmaps`` to report computed vs reused maps.
stats = CacheStats()


def border_weight_maps(
    instances_list: Sequence[np.ndarray],
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | None = "balanced",
    spacing: Sequence[float] | None = None,
    valid_list: Sequence[np.ndarray | None] | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """:func:`~segunet.data.weightmaps.border_weight_map` of every instance image, in order.

    ``cache_dir``: reuse and store maps under ``<cache_dir>/weightmaps`` (None: no cache).
    ``workers``: processes computing the missing maps (0: this process, -1: one per CPU).
    ``valid_list``: a valid mask (or None) per image. ``names`` label the images in messages.
    """
    n = len(instances_list)
    valid_list = [None] * n if valid_list is None else list(valid_list)
    names = [f"image {i}" for i in range(n)] if names is None else list(names)
    if len(valid_list) != n or len(names) != n:
        raise ValueError(
            f"{n} instance images but {len(valid_list)} valid masks and {len(names)} names"
        )
    params = dict(w0=float(w0), sigma=float(sigma), class_weights=class_weights,
                  spacing=None if spacing is None else tuple(float(s) for s in spacing))
    root = None if cache_dir is None else cache_root(cache_dir)
    if root is not None:
        _remove_stale_tmp(root)

    maps: list[np.ndarray | None] = [None] * n
    jobs: list[tuple[int, np.ndarray, np.ndarray | None, Path | None]] = []
    for i, (instances, valid) in enumerate(zip(instances_list, valid_list)):
        instances = np.asarray(instances)
        # An all-True mask changes nothing: let it share the entry of no mask.
        valid = None if valid is None or np.all(valid) else np.asarray(valid, bool)
        path = None
        if root is not None:
            key = cache_key(instances, valid, **params)
            path = root / key[:2] / f"{key}.npz"
            bound = _largest_weight(params, instances.size)
            maps[i] = _load(path, key, instances.shape, names[i], bound)
        if maps[i] is None:
            jobs.append((i, instances, valid, path))
    stats.hits += n - len(jobs)
    if root is not None and jobs:
        _make_writable(root, cache_dir)

    # delay: a bar for work a person waits on, not for a few quick maps.
    bar = tqdm(total=n, initial=n - len(jobs), desc="weight maps", unit="map",
               disable=not progress or n <= 1, delay=1.0)
    with bar:
        for i, weight in _compute(jobs, params, workers, progress):
            maps[i] = weight
            stats.misses += 1
            bar.update()
    return maps  # type: ignore[return-value]  # every slot is filled by now


def cache_folder(cache_dir: str | Path) -> Path:
    """The folder ``data.targets.cache_dir`` names: :data:`AUTO` is the per-user cache."""
    if cache_dir == AUTO:
        return Path(platformdirs.user_cache_dir("segunet"))
    return Path(cache_dir).expanduser()


def cache_root(cache_dir: str | Path) -> Path:
    """``<cache_dir>/weightmaps``; a one-line SegunetError up front when a file stands where
    a folder of it must be (the cache folder itself, a parent, or its ``weightmaps``)."""
    root = cache_folder(cache_dir) / "weightmaps"
    for folder in (root, *root.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise SegunetError(
                    f"the weight map cache folder data.targets.cache_dir={cache_dir} cannot be "
                    f"made: {folder} is a file; set data.targets.cache_dir to a folder (or "
                    "null for no cache)"
                )
            break
    return root


def _make_writable(root: Path, cache_dir: str | Path) -> None:
    """Create the cache folder before any map is computed; a folder that cannot be (a
    read-only or virtual file system) is one line naming the key. A read-only cache that
    holds every map is read without this."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SegunetError(
            f"cannot store weight maps in data.targets.cache_dir={cache_dir}: "
            f"{e.strerror or e} ({e.filename or root}); set data.targets.cache_dir to a "
            "writable folder, or null for no cache"
        ) from e


def cache_key(
    instances: np.ndarray,
    valid: np.ndarray | None,
    w0: float,
    sigma: float,
    class_weights: str | None,
    spacing: Sequence[float] | None,
) -> str:
    """SHA-256 (hex) of everything a weight map depends on."""
    instances = np.ascontiguousarray(instances)
    header = dict(
        format=FORMAT_VERSION, tol=BORDER_TOL, w0=float(w0), sigma=float(sigma),
        class_weights=class_weights, spacing=None if spacing is None else list(spacing),
        dtype=instances.dtype.str, shape=list(instances.shape), valid=valid is not None,
    )
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    h.update(memoryview(instances).cast("B"))
    if valid is not None:
        h.update(np.packbits(np.asarray(valid, bool), axis=None).tobytes())
    return h.hexdigest()


def _compute(
    jobs: list[tuple[int, np.ndarray, np.ndarray | None, Path | None]],
    params: dict[str, Any],
    workers: int,
    progress: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, weight map)`` for every job, in any order, storing each as it comes.
    In this process, a large image shows its own bar over its objects (``progress``)."""
    workers = (os.cpu_count() or 1) if workers < 0 else workers
    workers = min(workers, len(jobs))
    if workers <= 1:  # in this process: a pool of one would only add its start-up
        for i, instances, valid, path in jobs:
            yield i, _compute_one(instances, valid, params, path, progress)
        return
    # spawn, not fork: a forked child may inherit locked thread pools (OpenCV's, torch's).
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                               initializer=_worker_start, initargs=(os.getpid(),))
    try:
        with interrupts.blocked_in_children():  # the pool starts its workers as jobs come
            futures = {pool.submit(_compute_one, instances, valid, params, path): i
                       for i, instances, valid, path in jobs}
        for future in as_completed(futures):
            yield futures[future], future.result()
    except BaseException as e:
        with interrupts.ignored():  # a second Ctrl-C must not cut the clean-up short
            _kill_workers(pool)
        if isinstance(e, BrokenProcessPool):
            raise SegunetError(
                "a weight map worker process ended abruptly (killed, or out of memory?): set "
                "data.targets.workers lower, or 0 to compute in this process; the maps "
                "computed so far are cached"
            ) from e
        raise
    pool.shutdown()


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """End the workers now, not once their maps are done (minutes, for a large image): the
    executor's shutdown would wait for them, at exit too. Python 3.14 has ``kill_workers``;
    before it, the processes are the executor's ``_processes``."""
    kill = getattr(pool, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _compute_one(
    instances: np.ndarray,
    valid: np.ndarray | None,
    params: dict[str, Any],
    path: Path | None,
    progress: bool = False,
) -> np.ndarray:
    weight = border_weight_map(instances, valid=valid, progress=progress, **params)
    if not np.isfinite(weight).all():  # never stored, never trained on
        raise ValueError(f"the weight map with {params} holds NaN or infinite values")
    if path is not None:
        _store(path, path.stem, weight)
    return weight


def _worker_start(parent: int) -> None:
    """A pool worker's set-up: it ignores the terminal's Ctrl-C and SIGTERM (sent to the
    whole process group; the parent handles them and kills its workers), ends when its
    parent does, and uses one thread. Its progress bars lock with a thread lock: tqdm's
    default one is a multiprocessing semaphore, which a killed worker never releases, and
    Python's resource tracker then warns about it after the command's error line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    interrupts.unblock()  # blocked since it started: any sent meanwhile are now dropped
    tqdm.set_lock(threading.RLock())
    _end_with(parent)
    _single_threaded()


def _end_with(parent: int) -> None:
    """End this process when ``parent`` ends, however it ends: Linux kills it at once
    (PR_SET_PDEATHSIG, even while it computes in C); a thread polling the parent's pid
    covers other systems."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc, no prctl: poll only
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _single_threaded() -> None:
    """Pool workers already use every core between them."""
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(1)


def _checksum(weight: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(weight)).cast("B")).hexdigest()


def _largest_weight(params: dict[str, Any], pixels: int) -> float:
    """The largest weight a map of ``pixels`` can hold: ``w_c`` (``N / (C * N_c)``, at most
    the pixel count ``N``; 1 unbalanced) plus ``w0``, and float32 rounding."""
    largest = (float(pixels) if params["class_weights"] else 1.0) + params["w0"]
    return largest * (1 + 1e-6)


def _load(
    path: Path, key: str, shape: tuple[int, ...], name: str, bound: float = np.inf
) -> np.ndarray | None:
    """The stored map, or None when absent; a damaged entry is reported and deleted."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            weight, checksum = entry["weight"], str(entry["checksum"])
            stored_key = str(entry["key"])
    except FileNotFoundError:
        return None
    except Exception as e:  # zip, zlib, format and missing-field errors all mean "damaged"
        problem = f"is unreadable ({type(e).__name__}: {e})"
    else:
        if stored_key != key:
            problem = "holds another key"
        elif weight.dtype != np.float32 or weight.shape != tuple(shape):
            problem = f"holds a {weight.dtype} {weight.shape} map, not float32 {tuple(shape)}"
        elif _checksum(weight) != checksum:
            problem = "fails its checksum"
        elif not np.isfinite(weight).all():  # a matching checksum proves no more than the key
            problem = "holds NaN or infinite weights"
        elif weight.size and not 0 <= weight.min() <= weight.max() <= bound:
            problem = f"holds weights outside [0, {bound:g}]"
        else:
            return weight
    log.warning("weight map cache entry %s (%s) %s: deleting and rebuilding it", path, name,
                problem)
    path.unlink(missing_ok=True)
    stats.rebuilt += 1
    return None


def _store(path: Path, key: str, weight: np.ndarray) -> None:
    def write(f: IO[bytes]) -> None:
        checksum = np.array(_checksum(weight))
        np.savez_compressed(f, weight=weight, key=np.array(key), checksum=checksum)

    write_atomic(path, write)


def _remove_stale_tmp(root: Path) -> None:
    """Temp files left by a killed run; recent ones may belong to a run still writing."""
    if not root.is_dir():
        return
    now = time.time()
    for tmp in root.glob("*/.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
        except OSError:  # another process got there first
            pass
