"""User-facing errors: one line that names the problem and what to change.

Library code raises :class:`SegunetError`; the commands wrap their work in
:func:`report_errors`, which prints expected failures (bad config, bad data, missing files)
as ``segunet: error: <one line>`` and exits with status 2. ``HYDRA_FULL_ERROR=1`` shows the
full traceback instead. :func:`say` shows a line on stderr and keeps it in the run's log.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf.errors import OmegaConfBaseException

# How long a rank other than 0 holds back its error: every rank meets the same bad setting,
# rank 0 reports it, and torchrun then stops the others; only an error of one rank's own
# outlasts the wait. Without it torchrun could stop rank 0 before it says anything.
OTHER_RANKS_REPORT_AFTER_S = 10.0


#: The lines segunet shows on stderr, kept for a run's log file: Hydra's job logging of
#: ``segunet train`` (configs/hydra/job_logging/segunet.yaml) gives it the file handler of
#: ``train.log``. Elsewhere it writes nowhere: not to the root logger, whose console handler
#: would show every line twice, nor to logging's last resort, which would repeat errors.
console = logging.getLogger("segunet.console")
console.propagate = False
console.addHandler(logging.NullHandler())


def say(line: str, level: int = logging.INFO) -> None:
    """Show ``line`` on stderr and keep it in the run's log file (:data:`console`)."""
    print(line, file=sys.stderr)
    console.log(level, line)


class SegunetError(Exception):
    """Bad input or configuration; the CLI prints the message alone, without a traceback."""


def short_message(e: BaseException, limit: int = 120) -> str:
    """An exception as one short line: its type and first line, cut at ``limit`` characters."""
    first = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(e: BaseException) -> str:
    """:func:`short_message` of the innermost error (dynamo wraps a compiler's own in
    ``BackendCompilerFailed.inner_exception``)."""
    while (inner := getattr(e, "inner_exception", None) or e.__cause__) is not None:
        e = inner
    return short_message(e)


def one_line(e: BaseException) -> str:
    """The most specific message in an exception chain, on one line. A value OmegaConf
    refused (a wrong type, an unknown or missing key) says ``key=value`` and what the key
    takes, from its schema (:func:`explain`)."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    cause = e
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    explained = explain(cause) if cause is not None else None
    if explained:
        return explained
    # Hydra lists the available options on indented lines: keep them, on the same line.
    text = str(e).replace("\n\t", ", ").replace(":,", ":")
    text = " ".join(text.split())
    if isinstance(e, (ValueError, TypeError)) and not text.startswith(type(e).__name__):
        return text
    return text or type(e).__name__


def expected_errors() -> tuple[type[BaseException], ...]:
    """The failures :func:`report_errors` reports in one line; anything else is a bug, and
    shows its traceback."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (SegunetError, HydraException, OmegaConfBaseException, FileNotFoundError)


@contextmanager
def report_errors() -> Iterator[None]:
    """Turn expected failures into ``segunet: error: <message>`` and exit status 2."""
    try:
        yield
    except expected_errors() as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if int(os.environ.get("RANK", 0)) > 0:  # torchrun's rank (distributed.env_world)
            time.sleep(OTHER_RANKS_REPORT_AFTER_S)
        say(f"segunet: error: {one_line(e)}", logging.ERROR)
        sys.exit(2)


# --- config values, in words (the schemas are segunet.config.schema's) -----------------------

#: OmegaConf's plain value types.
PLAIN = (int, float, bool, str)


def plain_value(value: Any) -> Any:
    """A config value as plain Python (lists and dicts, not OmegaConf's nodes)."""
    from omegaconf import Container, OmegaConf

    return OmegaConf.to_container(value) if isinstance(value, Container) else value


def dotted(where: str, key: Any) -> str:
    """``where.key``, or ``key`` at the top."""
    return f"{where}.{key}" if where else str(key)


def bad_value(key: str, value: Any, expected: str) -> str:
    """The one message of a value a key does not take."""
    shown = _show(value) if isinstance(value, (bool, type(None))) else repr(value)
    return f"{key}={shown} is not valid: expected {expected}"


def describe_field(f: dataclasses.Field) -> str:
    """What a schema field takes, in words: ``int``, ``one of a, b``, ``a list of int``..."""
    choices = f.metadata.get("choices") or ()
    kind, optional = f.type, False
    if typing.get_origin(kind) is typing.Union:
        kind, optional = typing.get_args(kind)[0], True
    if choices:
        some = "some of" if typing.get_origin(kind) is list else "one of"
        text = f"{some} " + ", ".join(_show(c) for c in choices)
    else:
        text = _type_name(kind)
    return text + (" or null" if optional else "")


def _type_name(kind: Any) -> str:
    if kind is bool:
        return "true or false"
    if kind in PLAIN:
        return kind.__name__
    if typing.get_origin(kind) is list:
        element = typing.get_args(kind)[0]
        return "a list" + (f" of {_type_name(element)}" if element in PLAIN else "")
    if typing.get_origin(kind) is dict:
        return "a mapping"
    return "any value" if kind is Any else f"the keys of {kind.__name__}"


def _show(value: Any) -> str:
    return {True: "true", False: "false", None: "null"}.get(value, str(value)) if isinstance(
        value, (bool, type(None))) else str(value)


def explain(e: OmegaConfBaseException, where: str = "") -> str | None:
    """One line for an error OmegaConf raised while merging into a schema: ``key=value`` and
    what the key takes, an unknown key and the keys there are (and a close one), or the
    missing key. None when the error names no key."""
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        ValidationError,
    )

    key = dotted(where, e.full_key) if e.full_key else None
    if key is None:
        return None
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and e.parent_node is not None:
        return unknown_key(key, _leaf_keys(e.parent_node), key.rpartition(".")[0])
    if isinstance(e, MissingMandatoryValue):
        return f"missing {key}=..."
    if isinstance(e, ValidationError):
        field = _schema_field(e)
        expected = describe_field(field) if field is not None else _expected_from(e.msg)
        return bad_value(key, plain_value(e.value), expected)
    return None


def unknown_key(key: str, known: Sequence[str], node: str = "") -> str:
    """The one message of a key no schema has, with the keys ``known`` at ``node`` (relative
    to it) and a close one (``data.w0``: did you mean ``data.targets.w0``?)."""
    import difflib

    name = key.rpartition(".")[2]
    leaves = {k.rpartition(".")[2]: k for k in reversed(known)}
    close = [leaves[n] for n in difflib.get_close_matches(name, list(leaves), n=1)]
    hint = f": did you mean {dotted(node, close[0])}?" if close else ""
    return f"unknown key '{key}'{hint} ({f'{node} has' if node else 'keys:'} {', '.join(known)})"


def _leaf_keys(node: Any) -> list[str]:
    """The keys of a config node, nested ones dotted (``targets.w0``), ``_target_`` and the
    like left out. Read from its plain, unresolved copy: OmegaConf has no public way to get a
    child node without resolving it."""
    from omegaconf import DictConfig, OmegaConf

    return _dict_keys(OmegaConf.to_container(node, resolve=False)) if isinstance(
        node, DictConfig) else []


def _dict_keys(values: dict) -> list[str]:
    keys = []
    for k, child in values.items():
        if str(k).startswith("_"):
            continue
        if isinstance(child, dict):
            keys += [f"{k}.{sub}" for sub in _dict_keys(child)]
        else:
            keys.append(str(k))
    return keys


def _schema_field(e: OmegaConfBaseException) -> dataclasses.Field | None:
    if not (isinstance(e.object_type, type) and dataclasses.is_dataclass(e.object_type)):
        return None
    return next((f for f in dataclasses.fields(e.object_type) if f.name == e.key), None)


def _expected_from(msg: str) -> str:
    """What OmegaConf's own message says a value should be (a list element, say)."""
    for word, text in (("Integer", "int"), ("Float", "float"), ("Boolean", "true or false")):
        if f"converted to {word}" in msg:
            return text
    return "another value"
