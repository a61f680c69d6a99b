"""``key=value`` arguments of the commands that run outside Hydra (``predict``, ``export``,
``evaluate``, ``tune``).

Those commands take a checkpoint whose stored config already says what the model is, or no
model at all, so they compose nothing: their arguments are one dataclass each (e.g.
:class:`segunet.cli.predict.PredictConfig`), read as
``OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(argv))`` with its
schema from :mod:`segunet.config.schema`. Wrong types, unknown, repeated and missing keys and values
that are not allowed are therefore the same one-line errors as ``segunet train``'s, and
``--help`` lists every key with its default (:func:`usage`). Values are YAML, except that a key
that takes text keeps the text as typed (``input=*.tif``, ``output=2025-01-01``,
``input=/x/a,b``) or quoted as ``segunet train`` needs it (``"input='/x/a,b'"``: the quotes
go), and a key that takes a list also takes ``a,b`` or one value (``tile=572,572``,
``tile=572``).
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import textwrap
import threading
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from segunet.config.schema import check_choices, nested_dataclass, schema_of
from segunet.errors import (
    SegunetError,
    bad_value,
    describe_field,
    explain,
    report_errors,
    unknown_key,
)
from segunet.interrupts import Interrupted

T = TypeVar("T")


def option(default: Any, help: str) -> Any:
    """A field of a command's arguments: its default (``MISSING``: required) and what it
    does, for ``--help``."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def parse(cls: type[T], argv: Sequence[str], command: str) -> T:
    """``argv`` (``key=value`` strings) as a ``cls``, built after its schema accepted them
    (its ``__post_init__`` then checks the ranges)."""
    from omegaconf import OmegaConf

    fields = leaf_fields(schema_of(cls))
    cfg = merged(schema_of(cls), key_values(argv, fields, command), fields, command)
    missing = [k for k in fields if k in OmegaConf.missing_keys(cfg)]
    if missing:
        raise SegunetError(f"segunet {command}: missing {', '.join(f'{k}=...' for k in missing)}")
    try:
        check_choices(cfg, schema_of(cls))
        return build(cls, OmegaConf.to_container(cfg))  # its __post_init__ checks ranges
    except SegunetError as e:
        raise SegunetError(f"segunet {command}: {e}") from None


def key_values(argv: Sequence[str], fields: dict, command: str) -> dict[str, str]:
    """``{key: value}`` of ``key=value`` arguments, each a key of ``fields``, once."""
    given: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("+")  # Hydra habit: +key=value
        if not sep or not key:
            raise SegunetError(
                f"segunet {command}: expected key=value, got '{arg}'; keys: {', '.join(fields)}"
            )
        if key not in fields:
            raise SegunetError(f"segunet {command}: {unknown_key(key, list(fields))}")
        if key in given:
            raise SegunetError(f"segunet {command}: '{key}' given twice")
        given[key] = value.strip()
    return given


def merged(schema: type, given: dict[str, str], fields: dict, command: str) -> Any:
    """``OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(...))``, one
    argument at a time, so that a value YAML cannot read names its key too."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    cfg = OmegaConf.structured(schema)
    for key, value in given.items():
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(
                [f"{key}={as_yaml(fields[key], value)}"]))
        except YAMLError:
            expected = describe_field(fields[key])
            raise SegunetError(f"segunet {command}: {bad_value(key, value, expected)}") from None
        except OmegaConfBaseException as e:
            raise SegunetError(f"segunet {command}: {explain(e) or e}") from None
    return cfg


def as_yaml(field: dataclasses.Field, value: str) -> str:
    """The YAML of ``value`` for ``field``: text as typed (quoted), a bare ``a,b`` or
    single value as a list where the field takes a list, anything else as it is."""
    kind = _unoptional(field.type)
    if kind is str and value != "null":
        return "'" + unquoted(value).replace("'", "''") + "'"
    if typing.get_origin(kind) is list and value not in ("", "null") and not value.startswith("["):
        return f"[{value}]"
    return value


def unquoted(value: str) -> str:
    """Text quoted as ``segunet train`` needs it (Hydra's override grammar: ``'/x/a,b'``,
    ``"/x/q'uote"``) without its quotes, so both commands take the same command line; text
    not wholly inside a pair of quotes as it is."""
    if len(value) < 2 or value[0] not in "'\"" or value[-1] != value[0]:
        return value
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        text = OverridesParser.create().parse_override(f"key={value}").value()
    except HydraException:
        return value
    return text if isinstance(text, str) else value


def build(cls: type[T], values: dict[str, Any]) -> T:
    """``cls(**values)``, nested dataclasses built from their dicts."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        nested = nested_dataclass(hints[name])
        kwargs[name] = build(nested, value) if nested and isinstance(value, dict) else value
    return cls(**kwargs)


def leaf_fields(schema: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Dotted key -> schema field of every key a command takes (``instances.method``)."""
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(schema):
        nested = nested_dataclass(f.type)
        if nested is not None:
            out |= leaf_fields(nested, f"{prefix}{f.name}.")
        else:
            out[f"{prefix}{f.name}"] = f
    return out


def _unoptional(kind: Any) -> Any:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind


def usage(cls: type, head: str, width: int = 92) -> str:
    """``head``, then every key of ``cls`` with its default, allowed values and help."""
    from omegaconf import MISSING

    lines = [head.rstrip(), "", "keys (default):"]
    for key, f in leaf_fields(schema_of(cls)).items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else (
            f.default)
        shown = "required" if default == MISSING else _yaml_word(default)
        choices = f.metadata.get("choices")
        text = (f"one of {', '.join(map(_yaml_word, choices))}; " if choices else "") + (
            f.metadata.get("help", ""))
        left = f"  {key} ({shown})"
        indent = 34
        wrapped = textwrap.wrap(text, width - indent) or [""]
        if len(left) >= indent - 1:
            lines.append(left)
            lines += [" " * indent + w for w in wrapped]
        else:
            lines.append(left.ljust(indent) + wrapped[0])
            lines += [" " * indent + w for w in wrapped[1:]]
    return "\n".join(lines)


def _yaml_word(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list):
        return ",".join(map(_yaml_word, value))
    return str(value)


def check_range(key: str, value: Any, ok: bool, expected: str) -> None:
    """A value of the right type but out of range: the same one line as a wrong type."""
    if not ok:
        raise SegunetError(bad_value(key, value, expected))


def run_command(body: Callable[[], None], usage: str, argv: Sequence[str]) -> int:
    """Print ``usage`` for -h/--help; else run ``body`` with segunet's error reporting (one
    line on stderr, exit status 2, Ctrl-C included) and return the exit status instead of
    exiting."""
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage)
        return 0
    try:
        with report_errors(), _first_interrupt_only() as interrupted:
            try:
                body()
                if interrupted:  # raised where Python swallows it: a __del__, a weakref callback
                    raise Interrupted
            except KeyboardInterrupt:
                raise SegunetError(
                    "interrupted: nothing half-written is left (outputs are renamed into "
                    "place only when complete)"
                ) from None
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


@contextmanager
def _first_interrupt_only() -> Iterator[list[int]]:
    """Ctrl-C raises KeyboardInterrupt once; a second one while the clean-up runs (temp
    files being removed, threads joined) is ignored instead of cutting it short. After an
    interrupt, the reads and writes zarr's I/O thread still runs are waited for. Yields the
    signals taken: the raise can land where Python only prints it and goes on."""
    interrupted: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield interrupted  # SIGINT ignored (a background job) or handled by the caller
        return

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        interrupted.append(signum)
        raise Interrupted

    def unraisable(info: Any) -> None:  # the raise swallowed: told once, by run_command
        if not isinstance(info.exc_value, Interrupted):
            previous_hook(info)

    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    signal.signal(signal.SIGINT, interrupt)
    try:
        yield interrupted
    finally:
        sys.unraisablehook = previous_hook
        if interrupted:
            from segunet.data.io import finish_zarr_io

            finish_zarr_io()
        signal.signal(signal.SIGINT, signal.default_int_handler)
