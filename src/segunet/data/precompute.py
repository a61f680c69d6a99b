"""Compute a dataset's border weight maps into the cache (``segunet weightmaps data=<dataset>``,
:mod:`segunet.cli.weightmaps`).

Building the data IS the precompute: every data source computes its weight maps through
:func:`segunet.data.weightmaps_cache.border_weight_maps` with its ``data.targets.cache_dir``
and ``data.targets.workers``, so this command instantiates ``cfg.data`` and reports what the
cache counter saw. Training later finds every map in the cache. Examples::

    segunet weightmaps data=isbi2012 data.path=../shared/data/isbi2012
    segunet weightmaps data=dsb2018 data.targets.workers=-1     # one process per CPU
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from segunet import interrupts
from segunet.config.compose import checked, instantiate_group
from segunet.data import weightmaps_cache
from segunet.errors import SegunetError


def precompute(cfg: DictConfig) -> weightmaps_cache.CacheStats:
    """Instantiate ``cfg.data``, print and return how many maps were computed and reused.
    Ctrl-C or SIGTERM: a SegunetError that says what is cached and how to go on."""
    stats = weightmaps_cache.stats
    before = (stats.hits, stats.misses, stats.rebuilt)
    start = time.perf_counter()

    def done() -> weightmaps_cache.CacheStats:
        return weightmaps_cache.CacheStats(
            stats.hits - before[0], stats.misses - before[1], stats.rebuilt - before[2]
        )

    cache_dir = checked(cfg, "data").targets.cache_dir
    try:
        data = instantiate_group(cfg, "data")
    except KeyboardInterrupt as e:
        raise SegunetError(_interrupted(e, done(), cache_dir)) from None
    counts = done()
    name = getattr(data, "name", None) or cfg.data.get("_target_", "data")
    where = (
        "not stored (data.targets.cache_dir is null)"
        if cache_dir is None
        else f"cache: {_shown(cache_dir)}"
    )
    damaged = f", {counts.rebuilt} damaged entries rebuilt" if counts.rebuilt else ""
    print(
        f"{name}: {counts.misses} weight maps computed, {counts.hits} reused{damaged} "
        f"in {time.perf_counter() - start:.1f} s; {where}"
    )
    return counts


def _shown(cache_dir: str) -> Path:
    return weightmaps_cache.cache_folder(cache_dir).resolve() / "weightmaps"


def _interrupted(
    e: KeyboardInterrupt, counts: weightmaps_cache.CacheStats, cache_dir: str | None
) -> str:
    """The one line of a stopped precompute: what is finished and kept, how to go on."""
    what = interrupts.describe(e)
    finished = f"{what} after {counts.misses} weight maps computed and {counts.hits} reused"
    if cache_dir is None:
        return (f"{finished}; none is kept (data.targets.cache_dir is null): set "
                "data.targets.cache_dir to keep finished maps")
    return (f"{finished}; the computed ones are cached in {_shown(cache_dir)}: rerun the same "
            "command to resume (cached maps are reused)")
