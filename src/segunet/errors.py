"""User-facing errors: one line that names the problem and what to change."""


class SegunetError(Exception):
    """Bad input or configuration; the CLI prints the message alone, without a traceback."""


def first_line(e: BaseException) -> str:
    """``Type: first line`` of the innermost error (dynamo wraps a compiler's own in
    ``BackendCompilerFailed.inner_exception``)."""
    while (inner := getattr(e, "inner_exception", None) or e.__cause__) is not None:
        e = inner
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
