"""The overrides of the Hydra commands (``segunet train``, ``segunet weightmaps``), read and
checked before Hydra runs: Hydra's flags, the override grammar's quoting, and the composed
config (unknown keys, group options and values) as one line each instead of Hydra's
multi-line reports, before Hydra makes a run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segunet.config.quoting import hydra_quoted, shell_quoted
from segunet.errors import SegunetError, report_errors

if TYPE_CHECKING:
    from omegaconf import DictConfig

#: ``--info``'s choices in Hydra 1.3.
INFO = ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]


def hydra_parser() -> argparse.ArgumentParser:
    """The flags Hydra's own command line takes (Hydra 1.3), for reading ``argv`` as Hydra
    will: Hydra builds its parser in a private module (``hydra._internal.utils``), so this is
    a copy of its flags; ``--version`` is only noted here, Hydra prints it."""
    parser = argparse.ArgumentParser(add_help=False)
    for flags in (["--help", "-h"], ["--hydra-help"], ["--version"], ["--resolve"],
                  ["--run", "-r"], ["--multirun", "-m"], ["--shell-completion", "-sc"]):
        parser.add_argument(*flags, action="store_true")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    for flags in (["--package", "-p"], ["--config-path", "-cp"], ["--config-name", "-cn"],
                  ["--config-dir", "-cd"], ["--experimental-rerun"]):
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", const="all", nargs="?", choices=INFO)
    return parser


def hydra_args(argv: list[str]) -> argparse.Namespace | None:
    """``argv`` as Hydra itself reads it (``--cfg job``, ``--config-dir DIR``, overrides), or
    None where Hydra would refuse it (it then says why itself). Flags may come between the
    overrides here: :func:`flags_first` puts them where Hydra's own parser wants them."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return hydra_parser().parse_intermixed_args(argv)
    except SystemExit:
        return None


def informs(args: argparse.Namespace | None) -> bool:
    """Whether ``args`` is for Hydra alone: help, information, a refusal (None), or a
    ``--config-path`` only Hydra resolves. Nothing is composed or checked here then."""
    return args is None or bool(
        args.help or args.hydra_help or args.version or args.info or args.shell_completion
        or args.config_path is not None
    )


def hydra_app(command: str, argv: list[str], task: Callable[[DictConfig], Any]) -> int:
    """Run ``task`` as the Hydra app of ``segunet <command>`` on ``argv``, with segunet's
    configs: Hydra parses ``sys.argv`` itself, so it gets the overrides under the command's
    name."""
    import hydra

    from segunet.config.compose import config_dir

    sys.argv = [f"segunet-{command}", *argv]
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(task)()
    return 0


def checked(argv: list[str]) -> tuple[list[str], argparse.Namespace | None, DictConfig | None]:
    """``argv`` of a Hydra command with its flags first and its overrides as Hydra's grammar
    reads them, Hydra's reading of it, and the config it composes (checked); the config is
    None where ``argv`` only :func:`informs`."""
    args = hydra_args(argv)
    rest = argv if args is None else flags_first(argv, args)
    if informs(args):
        return rest, args, None
    with report_errors():
        check_modes(args)
        readable = readable_overrides(args)
    rest = [*rest[: len(rest) - len(readable)], *readable]  # flags_first: overrides last
    args.overrides = readable
    return rest, args, check_overrides(args)


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

