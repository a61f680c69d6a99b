"""``segunet evaluate pred=<file|folder> gt=<file|folder> [out=<file>]``: its arguments,
usage and run; the scoring is
:func:`segunet.eval.evaluate.evaluate`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from omegaconf import MISSING

from segunet.atomic import write_atomic
from segunet.config.args import check_range, option, parse, run_command, usage
from segunet.errors import SegunetError
from segunet.eval.evaluate import check_report_path, evaluate, format_table, report_path
from segunet.eval.metrics import Kind

USAGE = """usage: segunet evaluate pred=<file|folder> gt=<file|folder> [out=<file>]
                        [key=value ...]

pred and gt are a label map each, or two folders of them paired by file stem (TIFF, PNG,
HDF5, zarr, .npy; a `segunet predict` folder in any of its formats, OME-Zarr included). The
terminal gets a table of the metrics per image and their mean; the JSON report goes to
<pred folder>/metrics.json or beside a pred file as <name>_metrics.json unless out= says
otherwise (out= alone: none), and an existing one is replaced only with overwrite=true.
"""


@dataclasses.dataclass
class EvaluateConfig:
    """The arguments of ``segunet evaluate`` (see :func:`evaluate`)."""

    pred: str = option(MISSING, "a predicted label map, or a folder of them")
    gt: str = option(MISSING, "its ground truth, or a folder of it paired by file stem")
    out: str = option(
        "auto", "the JSON report (per image and mean); auto: metrics.json inside a pred "
        "folder, <name>_metrics.json beside a pred file; out= writes none")
    overwrite: bool = option(False, "replace an existing report (else it is an error)")
    kind: Kind = option(
        "auto", "semantic: class maps; instances: 0 = background, each other value one "
        "object; auto: binary masks are semantic, anything else instances")
    num_classes: int | None = option(
        None, "classes of a semantic map (null: 2 for masks, else the largest class + 1, "
        "up to 256)")
    pred_suffix: str = option(
        "auto", "in a folder, use only files whose name ends so, paired without it; auto: a "
        "`segunet predict` folder gives _instances (_labels if kind=semantic), any other "
        "folder every file")
    gt_suffix: str = option("", "the same for the ground-truth folder (default: every file)")
    slices: bool = option(
        False, "score each (Z, Y, X) stack slice by slice as 2D images, one row each (how 2D "
        "models are scored on stacks, e.g. ISBI 2012's V_Rand); false: as one 3D volume")

    def __post_init__(self) -> None:
        for key in ("pred", "gt"):
            if not getattr(self, key):
                raise SegunetError(f"{key}= is empty: give a file or folder")
        check_range("num_classes", self.num_classes,
                    self.num_classes is None or self.num_classes >= 1, "a whole number >= 1")


def run(argv: Sequence[str]) -> int:
    """Run ``segunet evaluate``; 0 on success, 2 with one line on stderr on bad input."""
    argv = list(argv)

    def body() -> None:
        args = parse(EvaluateConfig, argv, "evaluate")
        pred, gt = Path(args.pred), Path(args.gt)
        out = report_path(args.out, pred)
        if out is not None:
            check_report_path(out, args.overwrite, pred, gt)
        report = evaluate(
            pred, gt, args.kind, args.num_classes, args.pred_suffix, args.gt_suffix,
            args.slices,
        )
        print(format_table(report["images"], report["mean"]))  # type: ignore[arg-type]
        if out is not None:
            text = json.dumps(report, indent=2) + "\n"
            try:
                write_atomic(out, lambda f: f.write(text.encode()))
            except OSError as e:
                raise SegunetError(
                    f"cannot write {out}: {e.strerror or e}; check the folder is writable"
                ) from e
            print(f"wrote {out}")

    return run_command(body, usage(EvaluateConfig, USAGE), argv)
