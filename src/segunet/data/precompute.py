"""``segunet weightmaps data=<dataset>``: compute a dataset's border weight maps into the cache.

Building the data IS the precompute: every data source computes its weight maps through
:func:`segunet.data.weightmaps_cache.border_weight_maps` with its ``data.targets.cache_dir``
and ``data.targets.workers``, so this command instantiates ``cfg.data`` and reports what the
cache counter saw. Training later finds every map in the cache. Examples::

    segunet weightmaps data=isbi2012 data.path=../shared/data/isbi2012
    segunet weightmaps data=dsb2018 data.targets.workers=-1     # one process per CPU
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from segunet.config import checked, config_dir, instantiate_group
from segunet.data import weightmaps_cache
from segunet.errors import report_errors

# This command writes no run folder, no .hydra/ and no log file: it only fills the cache.
QUIET = {
    "hydra.run.dir": ".",
    "hydra.output_subdir": "null",
    "hydra/job_logging": "stdout",
    "hydra.job.name": "weightmaps",
}


def precompute(cfg: DictConfig) -> weightmaps_cache.CacheStats:
    """Instantiate ``cfg.data``, print and return how many maps were computed and reused."""
    stats = weightmaps_cache.stats
    before = (stats.hits, stats.misses, stats.rebuilt)
    start = time.perf_counter()
    data = instantiate_group(cfg, "data")
    done = weightmaps_cache.CacheStats(
        stats.hits - before[0], stats.misses - before[1], stats.rebuilt - before[2]
    )
    name = getattr(data, "name", None) or cfg.data.get("_target_", "data")
    cache_dir = checked(cfg, "data").targets.cache_dir
    where = (
        "not stored (data.targets.cache_dir is null)"
        if cache_dir is None
        else f"cache: {Path(cache_dir).expanduser().resolve() / 'weightmaps'}"
    )
    damaged = f", {done.rebuilt} damaged entries rebuilt" if done.rebuilt else ""
    print(
        f"{name}: {done.misses} weight maps computed, {done.hits} reused{damaged} "
        f"in {time.perf_counter() - start:.1f} s; {where}"
    )
    return done


def _app(cfg: DictConfig) -> None:
    with report_errors():
        precompute(cfg)


def main() -> None:
    """Entry point of ``segunet weightmaps``: Hydra reads the overrides from ``sys.argv``."""
    given = {arg.split("=", 1)[0].removeprefix("+").removeprefix("override ")
             for arg in sys.argv[1:]}
    sys.argv += [f"{key}={value}" for key, value in QUIET.items() if key not in given]
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(_app)()


if __name__ == "__main__":
    main()
