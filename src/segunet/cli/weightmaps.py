"""``segunet weightmaps data=<dataset> [overrides]``: the Hydra app that fills the weight map
cache (:func:`segunet.data.precompute.precompute`), its overrides checked as
``segunet train``'s are."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segunet import interrupts
from segunet.cli.overrides import checked, hydra_app
from segunet.errors import report_errors

if TYPE_CHECKING:
    from omegaconf import DictConfig

# This command writes no run folder, no .hydra/ and no log file: it only fills the cache.
QUIET = {
    "hydra.run.dir": ".",
    "hydra.output_subdir": "null",
    "hydra/job_logging": "stdout",
    "hydra.job.name": "weightmaps",
}


def run(argv: list[str]) -> int:
    """``segunet weightmaps [flags] [overrides]``; errors exit 2 with one line."""
    rest, _, _ = checked(argv)
    given = {arg.split("=", 1)[0].removeprefix("+").removeprefix("override ") for arg in rest}
    quiet = [f"{key}={value}" for key, value in QUIET.items() if key not in given]
    return hydra_app("weightmaps", [*rest, *quiet], _app)


def _app(cfg: DictConfig) -> None:
    from segunet.data.precompute import precompute

    with report_errors(), interrupts.interruptible():
        precompute(cfg)
