"""User-facing errors: one line that names the problem and what to change.

Library code raises :class:`SegunetError`; the commands wrap their work in
:func:`report_errors`, which prints expected failures (bad config, bad data, missing files)
as ``segunet: error: <one line>`` and exits with status 2. ``HYDRA_FULL_ERROR=1`` shows the
full traceback instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

# How long a rank other than 0 holds back its error: every rank meets the same bad setting,
# rank 0 reports it, and torchrun then stops the others; only an error of one rank's own
# outlasts the wait. Without it torchrun could stop rank 0 before it says anything.
OTHER_RANKS_REPORT_AFTER_S = 10.0


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
    """The most specific message in an exception chain, on one line."""
    from hydra.errors import InstantiationException

    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    # Hydra lists the available options on indented lines: keep them, on the same line.
    text = str(e).replace("\n\t", ", ").replace(":,", ":")
    text = " ".join(text.split())
    if isinstance(e, (ValueError, TypeError)) and not text.startswith(type(e).__name__):
        return text
    return text or type(e).__name__


@contextmanager
def report_errors() -> Iterator[None]:
    """Turn expected failures into ``segunet: error: <message>`` and exit status 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    expected = (SegunetError, HydraException, OmegaConfBaseException, FileNotFoundError)
    try:
        yield
    except expected as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if int(os.environ.get("RANK", 0)) > 0:  # torchrun's rank (distributed.env_world)
            time.sleep(OTHER_RANKS_REPORT_AFTER_S)
        print(f"segunet: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
