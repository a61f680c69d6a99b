"""``segunet tune checkpoint=... [tta=false] [device=auto]``: its arguments, usage and run;
the search is :func:`segunet.postprocess.tune.tune_checkpoint`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import MISSING

from segunet.config.args import option, parse, run_command, usage
from segunet.postprocess.tune import describe_tuned, report, tune_checkpoint

USAGE = """usage: segunet tune checkpoint=<file or run folder> [tta=false] [device=auto]
                    [data_path=<the training data, if it moved>]

Searches the post-processing (probability threshold, minimum object size, watershed seeds,
gap growth; with tta=true also test-time augmentation) on the validation images of the
checkpoint's own training data for the best value of its data.metric, prints the table and
writes the best settings into the checkpoint, where `segunet predict` uses them by default.
"""


@dataclass
class TuneCommandConfig:
    """The arguments of ``segunet tune`` (see :func:`tune_checkpoint`)."""

    checkpoint: str = option(MISSING, "a checkpoint file, or a run folder (its best.pt, else "
                             "last.pt)")
    tta: bool = option(False, "also search with test-time augmentation")
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    data_path: str | None = option(
        None, "where the training data is now, if it moved since training; null: the "
        "checkpoint's data.path")


def run(argv: Sequence[str]) -> int:
    """``segunet tune key=value ...``; returns the exit status."""
    argv = list(argv)

    def body() -> None:
        args = parse(TuneCommandConfig, argv, "tune")
        file, result = tune_checkpoint(args.checkpoint, args.tta, args.device,
                                       data_path=args.data_path)
        print(report(result), file=sys.stderr)
        print(f"segunet: {describe_tuned(result)}; written into {file}", file=sys.stderr)

    return run_command(body, usage(TuneCommandConfig, USAGE), argv)
