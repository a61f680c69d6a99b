"""The ``segunet`` command: ``segunet <command> [hydra overrides]``.

Each command is a Hydra app; this module only dispatches and turns expected failures (bad
config, bad data, missing files) into one line on stderr and a non-zero exit.
``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segunet.errors import SegunetError, report_errors

if TYPE_CHECKING:
    from omegaconf import DictConfig

USAGE = """usage: segunet <command> [overrides ...]

commands:
  train          train a model (Hydra overrides, e.g. model=attention_unet optim.lr=3e-4;
                 -m for multirun sweeps, --cfg job to print the composed config;
                 trainer.devices=N for data-parallel training on N GPUs via torchrun)
  weightmaps     precompute and cache the border weight maps of a dataset (data=<name>)
  data download  fetch a public dataset into data/<name> (lucchi, dsb2018; isbi2012 says how)
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
  segunet weightmaps data=isbi2012 data.path=/path/to/isbi2012 data.targets.workers=-1
  segunet data download lucchi
  segunet predict checkpoint=outputs/train/<run> input=images/ output=pred/
  segunet export checkpoint=outputs/train/<run> format=onnx
  segunet evaluate pred=out/ gt=data/dsb2018/train/masks out=metrics.json
  segunet tune checkpoint=outputs/train/<run> tta=true

segunet --version prints the version.
"""


COMMANDS = ("train", "weightmaps", "data", "predict", "export", "evaluate", "tune")


def close_command(command: str) -> str:
    """``: did you mean train?`` for a command close to one (``trian``), else nothing."""
    import difflib

    close = difflib.get_close_matches(command, COMMANDS, n=1)
    return f": did you mean {close[0]}?" if close else ""


def hydra_args(argv: list[str]) -> argparse.Namespace | None:
    """``argv`` as Hydra itself reads it (``--cfg job``, ``--config-dir DIR``, overrides), or
    None where Hydra would refuse it (it then says why itself). Flags may come between the
    overrides here: :func:`flags_first` puts them where Hydra's own parser wants them."""
    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return get_args_parser().parse_intermixed_args(argv)
    except SystemExit:
        return None


def flags_first(argv: list[str], args: argparse.Namespace) -> list[str]:
    """``argv`` with Hydra's flags (and their values) before the overrides: Hydra's parser
    takes no override after a flag (``a=1 -m b=1,2``)."""
    flags = list(argv)
    for override in args.overrides:
        flags.remove(override)
    return [*flags, *args.overrides]


def check_modes(args: argparse.Namespace) -> None:
    """Hydra does one of run, sweep (``-m``) and print (``--cfg``) at a time; asked for two,
    it raises a ValueError (a traceback)."""
    modes = [flag for flag, given in (("--run", args.run), ("-m", args.multirun),
                                      ("--cfg", args.cfg)) if given]
    if len(modes) > 1:
        raise SegunetError(
            f"{' and '.join(modes)} together: give one (--cfg job prints one configuration: "
            "leave out -m and give one value per key)"
        )


def readable_overrides(args: argparse.Namespace) -> list[str]:
    """``args.overrides`` as Hydra's override grammar reads them. A value that is plain text
    but for letters outside ASCII (``data.path=/data/ünï``), which the grammar cannot read
    bare, is quoted for it; any other override it cannot read, and a comma list outside a
    ``-m`` sweep, is one line that shows how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    readable = []
    for given in args.overrides:
        arg, override = given, _parsed(parser, given)
        if override is None:
            arg = _quoted_non_ascii(given, parser)
            override = _parsed(parser, arg) if arg else None
        if override is None:
            raise SegunetError(_unreadable(given))
        if override.is_sweep_override() and not args.multirun:
            raise SegunetError(_not_a_sweep(arg, override))
        readable.append(arg)
    return readable


def _not_a_sweep(arg: str, override: Any) -> str:
    from hydra.core.override_parser.types import ValueType

    key, _, value = arg.partition("=")
    if override.value_type != ValueType.SIMPLE_CHOICE_SWEEP:  # range(...), glob(...)
        return f"{arg} is a sweep: run it with -m"
    return (
        f"{arg}: a comma separates the values of a sweep, run with -m; for a list write "
        f"{key}=[{value}], for text that holds a comma quote it: {shell_quoted(key, value)}"
    )


def _parsed(parser: Any, arg: str) -> Any:
    """Hydra's reading of the override ``arg``, or None where its grammar cannot read it."""
    from hydra.errors import HydraException

    try:
        return parser.parse_override(arg)
    except HydraException:
        return None


def _quoted_non_ascii(arg: str, parser: Any) -> str | None:
    """``key='value'`` where ``value`` is plain text to Hydra's grammar once its non-ASCII
    letters are left out, else None."""
    key, sep, value = arg.partition("=")
    if not sep or value.isascii() or not key.isascii():
        return None
    ascii_only = re.sub(r"[^\x00-\x7f]", "x", value)
    plain = _parsed(parser, f"{key}={ascii_only}")
    if plain is None or plain.is_sweep_override() or not isinstance(plain.value(), str):
        return None
    return f"{key}={hydra_quoted(value)}"


def hydra_quoted(value: str) -> str:
    """``value`` as a quoted string of Hydra's override grammar: ``'...'`` with its quotes
    escaped, and the backslashes before them and before the closing quote doubled."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"


def shell_quoted(key: str, value: str) -> str:
    """``key=value`` quoted for Hydra, then for a POSIX shell (``"data.path='/x/a,b'"``):
    what to type so that ``key`` gets ``value`` as text."""
    text = f"{key}={hydra_quoted(value)}"
    text = re.sub(r'\\(?=[\\$`"]|$)', r"\\\\", text)  # backslashes the shell would eat
    return '"' + re.sub(r'([$`"])', r"\\\1", text) + '"'


def _unreadable(arg: str) -> str:
    key, sep, value = arg.partition("=")
    if not sep:
        return (
            f"cannot read '{arg}': overrides are key=value (e.g. trainer.max_steps=100), "
            "Hydra's flags start with - (e.g. --cfg job)"
        )
    return (
        f"cannot read the override {arg}: a value holding quotes, brackets, =, #, ~ or other "
        "characters Hydra's override grammar gives a meaning must be quoted, inside the "
        f"shell's quotes: {shell_quoted(key, value)}"
    )


def check_overrides(args: argparse.Namespace | list[str]) -> DictConfig:
    """Compose the config once per override value before Hydra runs, and check it (allowed
    targets, types and values: :func:`segunet.config.compose.check_config`), so an unknown group
    option, key or value fails as one line instead of Hydra's multi-line report, before Hydra
    creates a run folder. Returns the first
    composition, with its ``hydra`` section (the run folder it would use). ``args`` is
    :func:`hydra_args`' reading (its ``--config-dir`` and ``--config-name`` count) or a list
    of overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from segunet.config.compose import check_config, config_dir

    if isinstance(args, list):
        args = hydra_args(args)
    extra = [f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]"] if (
        args.config_dir
    ) else []
    with report_errors():
        if args.config_dir and not Path(args.config_dir).is_dir():
            raise FileNotFoundError(f"--config-dir {args.config_dir}: no such folder")
        parsed = OverridesParser.create().parse_overrides(args.overrides)
        first = [o.input_line if not o.is_sweep_override() else None for o in parsed]
        trials = [[*extra, *(o for o in first if o)]]
        for o in parsed:
            if o.is_sweep_override():
                key = o.get_key_element()
                values = [f"{key}={v}" for v in o.sweep_string_iterator()]
                trials = [[*t, v] for t in trials for v in values]
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(str(config_dir()), version_base="1.3"), _options_named():
                name = args.config_name or "config"
                first_cfg = compose(name, overrides=trials[0], return_hydra_config=True)
                empty = [o for o in parsed if o.input_line.endswith("=") and not o.is_delete()]
                if empty:
                    rest = [t for t in trials[0] if t not in {o.input_line for o in empty}]
                    check_empty(empty, compose(name, overrides=rest, return_hydra_config=True))
                check_config(first_cfg)
                for trial in trials[1:16]:
                    check_config(compose(name, overrides=trial))
        finally:
            GlobalHydra.instance().clear()
    return first_cfg


@contextlib.contextmanager
def _options_named() -> Iterator[None]:
    """A group option that does not exist (``experiment=nope``) as one line with the options
    there are and a close one, without Hydra's search path."""
    import difflib

    from hydra.errors import MissingConfigException

    try:
        yield
    except MissingConfigException as e:
        if not e.options or not e.missing_cfg_file or "/" not in e.missing_cfg_file:
            raise SegunetError(str(e).split("\nConfig search path")[0]) from None
        group, name = e.missing_cfg_file.rsplit("/", 1)
        close = difflib.get_close_matches(name, list(e.options), n=1)
        hint = f": did you mean {group}={close[0]}?" if close else ""
        raise SegunetError(
            f"Could not find '{e.missing_cfg_file}'{hint} ({group} has "
            f"{', '.join(e.options)})"
        ) from None


def check_empty(empty: list[Any], defaults: DictConfig) -> None:
    """Refuse ``key=`` with nothing after it (a value lost to the shell, a slip) where the
    key's value would otherwise not be empty text: an empty ``hydra.run.dir`` trains into
    the working folder, an empty ``trainer.resume`` starts afresh, an empty ``data.path``
    fails later with an odd message. ``defaults``: the config without those overrides.
    ``key=''`` still sets empty text on purpose."""
    from omegaconf import OmegaConf

    for override in empty:
        key = override.key_or_group
        if OmegaConf.select(defaults, key, default=None) != "":
            raise SegunetError(
                f"{override.input_line} has no value: give {key} one, or leave it out (an "
                "unset shell variable in it leaves it empty)"
            )


def pin_run_folder(cfg: DictConfig, rest: list[str]) -> list[str]:
    """Check the folder a single run would train into before Hydra writes its ``.hydra/``
    files there (another live run, another run's checkpoints, a folder it cannot write), and
    name it explicitly so Hydra uses the one checked (its clock may have moved on a second).
    A folder that already holds a run's record (a resume into it) keeps it until the run is
    accepted: Hydra writes none, training does once it starts (:func:`run_folder.write_record`)."""
    from segunet.train import run_folder

    run_dir = Path(str(cfg.hydra.run.dir))
    with report_errors():
        run_folder.check(run_dir, cfg.trainer.get("resume"))
    given = any(a.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for a in rest)
    pinned = rest if given else [*rest, f"hydra.run.dir={run_dir}"]
    own = any(a.split("=", 1)[0].lstrip("+") == "hydra.output_subdir" for a in rest)
    defer = run_folder.holds_record(run_dir) and not own
    return [*pinned, run_folder.DEFER_RECORD] if defer else pinned


def pin_sweep_folder(cfg: DictConfig, rest: list[str]) -> list[str]:
    """Make the folder a ``-m`` sweep writes its runs into, or refuse it in one line, and
    name it explicitly, as :func:`pin_run_folder` does for one run. Keys whose values hold a
    ``/`` stay out of the jobs' folder names (``<n>_<overrides>``): their slashes would
    nest the folder, and ``..`` in them lead it out of the sweep's. A sweep folder already
    holding jobs' records keeps them until each job is accepted, as a run folder does."""
    from segunet.train import run_folder

    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    with report_errors():
        run_folder.make(sweep_dir, "hydra.sweep.dir")
    overrides = [a.split("=", 1) for a in rest if "=" in a and not a.startswith("-")]
    given = {key.lstrip("+") for key, _ in overrides}
    pinned = rest if "hydra.sweep.dir" in given else [*rest, f"hydra.sweep.dir={sweep_dir}"]
    if "hydra.output_subdir" not in given and any(map(run_folder.holds_record,
                                                       sweep_dir.iterdir())):
        pinned = [*pinned, run_folder.DEFER_RECORD]
    naming = "hydra.job.config.override_dirname.exclude_keys"
    slashed = [key.lstrip("+~") for key, value in overrides
               if "/" in value and not key.lstrip("+~").startswith("hydra.")]
    if not slashed or naming in given or "hydra.sweep.subdir" in given:
        return pinned
    excluded = [*cfg.hydra.job.config.override_dirname.exclude_keys, *slashed]
    return [*pinned, f"{naming}=[{','.join(dict.fromkeys(excluded))}]"]


def launch_ddp(cfg: DictConfig, overrides: list[str]) -> int:
    """Re-run ``segunet train`` as ``trainer.devices`` processes under torchrun, all training
    into the one run folder resolved here (each rank's own clock could name another)."""
    from segunet.train import distributed

    n = int(cfg.trainer.devices)
    if any(a in ("-m", "--multirun") for a in overrides):
        print(
            f"segunet: error: trainer.devices={n} trains one configuration at a time: "
            "run the sweep's configurations one by one, without -m",
            file=sys.stderr,
        )
        return 2
    import torch

    from segunet.train.trainer import check_launch

    # Refuse here, not in every rank.
    if distributed.uses_cuda(str(cfg.trainer.device)) and torch.cuda.device_count() < n:
        print(
            f"segunet: error: trainer.devices={n} but {torch.cuda.device_count()} GPUs are "
            f"visible: set trainer.devices={max(torch.cuda.device_count(), 1)}",
            file=sys.stderr,
        )
        return 2
    with report_errors():
        check_launch(cfg, n)
    overrides = pin_run_folder(cfg, overrides)  # the folder torchrun's ranks will share
    run_dir = Path(str(cfg.hydra.run.dir))
    command = distributed.launch_command(n, overrides, run_dir)
    print(f"segunet: launching {n} processes: torchrun {' '.join(command[3:])}", file=sys.stderr)
    return wait_for_ranks(subprocess.Popen(command))


def wait_for_ranks(launcher: subprocess.Popen) -> int:
    """The exit status of ``segunet train`` once the launcher and its ranks ended: 0, or 2
    like a single process, with one line when no rank reported the error itself."""
    interrupted = False
    while True:
        try:
            code = launcher.wait()
            break
        except KeyboardInterrupt:
            # The terminal's Ctrl-C reached torchrun too, which passes it on and waits while
            # rank 0 saves a checkpoint and says how to resume: leaving now orphans them.
            interrupted = True
    if code not in (0, 2) and not interrupted:
        signals = {int(s) + 128: s.name for s in signal.Signals}  # torchrun's 128 + N
        how = f"by {signals[code]}" if code in signals else f"with exit status {code}"
        print(
            f"segunet: error: training stopped: a process ended {how} (see its output above)",
            file=sys.stderr,
        )
    return 0 if code == 0 else 2


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except BrokenPipeError:
        # `segunet predict --help | head`: the reader left; no traceback about it. Python's
        # own flush at exit would raise again, so stdout goes to devnull first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version", "version"):
        from segunet import __version__

        print(f"segunet {__version__}")
        sys.exit(0)
    command, rest = argv[0], argv[1:]
    if command == "data":
        from segunet.data.download import main as data_main

        sys.exit(data_main(rest))
    if command in ("evaluate", "predict", "export", "tune"):
        # Plain key=value commands (no Hydra run folder): each returns its exit status.
        module = {"evaluate": "eval.evaluate", "predict": "cli.predict",
                  "export": "export.command", "tune": "postprocess.tune"}[command]
        sys.exit(importlib.import_module(f"segunet.{module}").main(rest))
    if command == "train":
        from segunet import interrupts

        with interrupts.ctrl_c_interrupts():
            try:
                _hydra_command("train", rest)
            except KeyboardInterrupt:  # before training takes Ctrl-C over: loading, composing
                sweep = any(a in ("-m", "--multirun") for a in rest)
                print("segunet: error: " + (
                    "interrupted: the sweep stopped; its finished jobs keep their run folders"
                    if sweep else "interrupted before training started; no checkpoint was saved"
                ), file=sys.stderr)
                sys.exit(2)
        return
    if command == "weightmaps":
        _hydra_command(command, rest)
        return
    print(f"segunet: error: unknown command '{command}'{close_command(command)}\n\n{USAGE}",
          file=sys.stderr)
    sys.exit(2)


def _hydra_command(command: str, rest: list[str]) -> None:
    """``segunet train`` or ``segunet weightmaps``: check the overrides and the run folder,
    then hand over to the Hydra app."""
    if command == "train":
        from segunet.train.trainer import main as app
    else:
        from segunet.data.precompute import main as app
    args = hydra_args(rest)
    rest = rest if args is None else flags_first(rest, args)
    informs = args is None or args.help or args.hydra_help or args.info or args.shell_completion
    if not informs and args.config_path is None:
        with report_errors():
            check_modes(args)
            readable = readable_overrides(args)
        rest = [*rest[: len(rest) - len(readable)], *readable]  # flags_first: overrides last
        args.overrides = readable
        cfg = check_overrides(args)
        devices = cfg.trainer.get("devices", 1) if command == "train" else 1
        if command == "train" and not args.cfg:
            if isinstance(devices, int) and devices > 1:
                from segunet.train.distributed import launched_by_torchrun

                if not launched_by_torchrun():  # else this process is already one of the ranks
                    sys.exit(launch_ddp(cfg, rest))
            rest = pin_sweep_folder(cfg, rest) if args.multirun else pin_run_folder(cfg, rest)
    # Hydra parses sys.argv itself; hand it the overrides under the command's name.
    sys.argv = [f"segunet-{command}", *rest]
    app()


if __name__ == "__main__":
    main()
