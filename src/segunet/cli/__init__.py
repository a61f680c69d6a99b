"""The ``segunet`` command: the dispatcher (``dispatch``) and each command's ``main()``.
May import every other package; nothing imports it."""

from segunet.cli.dispatch import main

__all__ = ["main"]
