"""``segunet predict``: its usage and ``run()``; the run itself is
:mod:`segunet.infer.run`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from segunet.config.args import parse, run_command, usage
from segunet.infer.run import PredictConfig, predict_files

USAGE = """usage: segunet predict checkpoint=<file or run folder> input=<file, folder or glob>
                       output=<folder> [key=value ...]
       segunet predict model=nuclei input=... output=...   (a model that ships with segunet)

output must be a folder you can write to (created if missing); it is checked before the
prediction starts. Each output is written to a hidden temp name and renamed when complete:
an error or Ctrl-C leaves no partial file, and temps of runs killed outright (kill -9) are
removed by the next predict into that folder.

Z-stacks and 2D models: a (Z, Y, X) stack whose depth Z is no channel count of the 2D model
(an OME-Zarr's axes say which it is) is predicted slice by slice (the stack normalised as a
whole, as training on a stack does)
and written back as stacks, slice by slice: probabilities (Z, C, Y, X) (Fiji's hyperstack
order; a 3D model's are (C, Z, Y, X)), labels (Z, Y, X), instances (Z, Y, X) uint32 with the
2D objects of each slice numbered on through the stack, so no id repeats across slices.
With format=tif these TIFFs are uncompressed.

example:
  segunet predict checkpoint=outputs/train/2025-01-01_12-00-00 input='data/test/*.tif' \\
      output=predictions outputs=labels,instances instances.method=watershed
"""


def run(argv: Sequence[str]) -> int:
    """``segunet predict key=value ...``; returns the exit status (2 on an error)."""
    argv = list(argv)

    def body() -> None:
        options = parse(PredictConfig, argv, "predict")
        written = predict_files(options)
        print(
            f"segunet: wrote {len(written)} file{'s' * (len(written) != 1)} to {options.output}",
            file=sys.stderr,
        )

    return run_command(body, usage(PredictConfig, USAGE), argv)

