"""``key=value`` arguments of the commands that run outside Hydra (``predict``, ``export``,
``evaluate``).

Those commands take a checkpoint whose stored config already says what the model is, or no
model at all, so they need no config composition: a flat set of keys with defaults, checked
here, is enough.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from segunet.errors import SegunetError, report_errors

REQUIRED = object()  # the default of a key the user must give


def parse_key_values(
    argv: Sequence[str], defaults: Mapping[str, Any], command: str
) -> dict[str, str | Any]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x", <other defaults>}``; values stay strings
    (convert with :func:`to_bool` etc.). Unknown keys, repeated keys, arguments without '='
    and missing required keys are one-line SegunetErrors that list the keys."""
    known = ", ".join(defaults)
    given: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("+")  # Hydra habit: +key=value
        if not sep or not key:
            raise SegunetError(f"segunet {command}: expected key=value, got '{arg}'; keys: {known}")
        if key not in defaults:
            raise SegunetError(f"segunet {command}: unknown key '{key}'; keys: {known}")
        if key in given:
            raise SegunetError(f"segunet {command}: '{key}' given twice")
        given[key] = value.strip()
    missing = [k for k, v in defaults.items() if v is REQUIRED and k not in given]
    if missing:
        raise SegunetError(
            f"segunet {command}: missing {', '.join(f'{k}=...' for k in missing)}"
        )
    return {**defaults, **given}


def to_bool(value: str | bool, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = value.lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise SegunetError(f"{key}={value!r} is not valid: expected true or false")


def to_number(value: str | float | None, key: str, kind: type = int) -> Any:
    """``int``/``float`` from a string; ``null``/``none`` -> None."""
    if value is None or isinstance(value, (int, float)):
        return value
    if value.lower() in ("null", "none", ""):
        return None
    try:
        return kind(value)
    except ValueError:
        raise SegunetError(f"{key}={value!r} is not valid: expected {kind.__name__}") from None


def to_ints(value: str | None, key: str) -> tuple[int, ...] | None:
    """``"572,572"``, ``"[572, 572]"`` or ``"572"`` -> a tuple; ``null``/``auto`` -> None."""
    if value is None or value.strip().lower() in ("null", "none", "auto", ""):
        return None
    parts = [p for p in value.strip().strip("[]()").replace(" ", "").split(",") if p]
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        raise SegunetError(f"{key}={value!r} is not valid: expected e.g. 572,572") from None
    if not numbers or min(numbers) < 1:
        raise SegunetError(f"{key}={value!r} is not valid: expected positive sizes")
    return numbers


def run_command(body: Callable[[], None], usage: str, argv: Sequence[str]) -> int:
    """Print ``usage`` for -h/--help; else run ``body`` with segunet's error reporting (one
    line on stderr, exit status 2, Ctrl-C included) and return the exit status instead of
    exiting."""
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage)
        return 0
    try:
        with report_errors(), _first_interrupt_only():
            try:
                body()
            except KeyboardInterrupt:
                raise SegunetError(
                    "interrupted: nothing half-written is left (outputs are renamed into "
                    "place only when complete)"
                ) from None
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


@contextmanager
def _first_interrupt_only() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt once; a second one while the clean-up runs (temp
    files being removed, threads joined) is ignored instead of cutting it short. After an
    interrupt, the reads and writes zarr's I/O thread still runs are waited for."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield  # SIGINT ignored (a background job) or handled by the caller
        return
    interrupted = []

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        if interrupted:
            from segunet.data.io import finish_zarr_io

            finish_zarr_io()
        signal.signal(signal.SIGINT, signal.default_int_handler)
