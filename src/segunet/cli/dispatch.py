"""The ``segunet`` command: ``segunet <command> [key=value ...]``.

This module only dispatches: each command is a module of this package with a
``run(argv) -> exit status`` (``train`` and ``weightmaps`` hand their overrides to Hydra, the
others read theirs into a dataclass with :mod:`segunet.config.args`). Expected failures (bad
config, bad data, missing files) are one line on stderr and exit status 2;
``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

USAGE = """usage: segunet <command> [key=value ...]

commands:
  train          train a model (Hydra overrides, e.g. model=attention_unet optim.lr=3e-4;
                 -m for multirun sweeps, --cfg job to print the composed config;
                 trainer.devices=N for data-parallel training on N GPUs via torchrun)
  plan           measure a labelled dataset and write the recipe for it (data=... data.path=...
                 [budget=15m] [out=plan.yaml]); train it with experiment=<plan.yaml>
  weightmaps     precompute and cache the border weight maps of a dataset (data=<name>)
  data download  fetch a public dataset into data/<name> (name=lucchi or dsb2018; name=isbi2012
                 says how; dest=<folder> for another place than data/)
  predict        overlap-tile prediction of images of any size (checkpoint=... input=... output=...)
  export         export a checkpoint to ONNX, TorchScript or a bioimage.io model package,
                 verified against PyTorch
  evaluate       score predictions against ground truth (pred=<file|folder> gt=<file|folder>)
  tune           choose a checkpoint's post-processing on its validation images (checkpoint=...)

examples:
  segunet train experiment=quickstart
  segunet train model=attention_unet trainer.max_steps=2000
  segunet train -m model=unet,attention_unet
  segunet train trainer.devices=4
  segunet plan data=folder data.path=/data/cells out=plans/cells.yaml
  segunet train experiment=plans/cells.yaml
  segunet train data=folder data.path=/data/cells experiment=auto plan.budget=10m
  segunet weightmaps data=isbi2012 data.path=/path/to/isbi2012 data.targets.workers=-1
  segunet data download name=lucchi
  segunet predict checkpoint=outputs/train/<run> input=images/ output=pred/
  segunet export checkpoint=outputs/train/<run> format=onnx
  segunet evaluate pred=out/ gt=data/dsb2018/train/masks out=metrics.json
  segunet tune checkpoint=outputs/train/<run> tta=true

segunet --version prints the version.
"""


COMMANDS = ("train", "plan", "weightmaps", "data", "predict", "export", "evaluate", "tune")


def close_command(command: str) -> str:
    """``: did you mean train?`` for a command close to one (``trian``), else nothing."""
    import difflib

    close = difflib.get_close_matches(command, COMMANDS, n=1)
    return f": did you mean {close[0]}?" if close else ""


def main(argv: list[str] | None = None) -> None:
    """``segunet``'s entry point (``argv``: the words after it; default ``sys.argv[1:]``):
    exits with the command's status."""
    try:
        sys.exit(_main(list(sys.argv[1:] if argv is None else argv)))
    except BrokenPipeError:
        # `segunet predict --help | head`: the reader left; no traceback about it. Python's
        # own flush at exit would raise again, so stdout goes to devnull first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version", "version"):
        from segunet import __version__

        print(f"segunet {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"segunet: error: unknown command '{command}'{close_command(command)}\n\n{USAGE}",
              file=sys.stderr)
        return 2
    return importlib.import_module(f"segunet.cli.{command}").run(rest)
