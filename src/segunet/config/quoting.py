"""Override text a user can type: a value quoted for Hydra's override grammar, then for a
POSIX shell, where it holds characters either gives a meaning (a sweep's run folder, named
after its overrides, holds ``=``, ``,`` and brackets)."""

from __future__ import annotations

import re

#: Characters that Hydra's grammar or a shell read as more than text.
SPECIAL = re.compile(r"[^A-Za-z0-9_./@%+-]")


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


def typed(key: str, value: str) -> str:
    """``key=value`` as a user types it: as it is where nothing in ``value`` is special,
    else :func:`shell_quoted`."""
    return f"{key}={value}" if not SPECIAL.search(value) else shell_quoted(key, value)
