"""User-facing errors: one line that names the problem and what to change."""


class SegunetError(Exception):
    """Bad input or configuration; the CLI prints the message alone, without a traceback."""
