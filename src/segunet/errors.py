"""User-facing errors: one line that names the problem and what to change."""


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
