"""Border weight maps (Ronneberger et al. 2015, Eq. 2) computed once per image, in parallel,
and kept on disk.

A map is stored under a key that hashes everything it depends on: the instance labels
(bytes, shape, dtype), the valid mask, ``w0``, ``sigma``, the class weighting, the spacing,
:data:`~segunet.data.weightmaps.BORDER_TOL` and :data:`FORMAT_VERSION`. Changing any of them
misses the cache; nothing is ever invalidated by hand. Entries live in
``<cache_dir>/weightmaps/<key[:2]>/<key>.npz`` with the map, the key and a SHA-256 of the map;
they are written to a temp file in the same folder, fsynced and renamed into place, so a
crash leaves at most a ``*.tmp`` file (ignored, and removed once stale), never a truncated
entry. A damaged or foreign entry is reported, deleted and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from segunet.atomic import write_atomic
from segunet.data.weightmaps import BORDER_TOL, border_weight_map

#: Bump when the stored layout or the weight map formula changes: old entries then miss.
FORMAT_VERSION = 1
#: Temp files older than this (seconds) are debris of a killed run and get removed.
STALE_TMP_SECONDS = 3600.0

log = logging.getLogger(__name__)


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
    root = None if cache_dir is None else Path(cache_dir).expanduser() / "weightmaps"
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
            maps[i] = _load(path, key, instances.shape, names[i])
        if maps[i] is None:
            jobs.append((i, instances, valid, path))
    stats.hits += n - len(jobs)

    # delay: a bar for work a person waits on, not for a few quick maps.
    bar = tqdm(total=n, initial=n - len(jobs), desc="weight maps", unit="map",
               disable=not progress or n <= 1, delay=1.0)
    with bar:
        for i, weight in _compute(jobs, params, workers):
            maps[i] = weight
            stats.misses += 1
            bar.update()
    return maps  # type: ignore[return-value]  # every slot is filled by now


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
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, weight map)`` for every job, in any order, storing each as it comes."""
    workers = (os.cpu_count() or 1) if workers < 0 else workers
    workers = min(workers, len(jobs))
    if workers <= 1:  # in this process: a pool of one would only add its start-up
        for i, instances, valid, path in jobs:
            yield i, _compute_one(instances, valid, params, path)
        return
    # spawn, not fork: a forked child may inherit locked thread pools (OpenCV's, torch's).
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                               initializer=_single_threaded)
    try:
        futures = {pool.submit(_compute_one, instances, valid, params, path): i
                   for i, instances, valid, path in jobs}
        for future in as_completed(futures):
            yield futures[future], future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _compute_one(
    instances: np.ndarray, valid: np.ndarray | None, params: dict[str, Any], path: Path | None
) -> np.ndarray:
    weight = border_weight_map(instances, valid=valid, **params)
    if path is not None:
        _store(path, path.stem, weight)
    return weight


def _single_threaded() -> None:
    """Pool workers already use every core between them."""
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(1)


def _checksum(weight: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(weight)).cast("B")).hexdigest()


def _load(path: Path, key: str, shape: tuple[int, ...], name: str) -> np.ndarray | None:
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
