"""The ``segunet`` command: its one ``main()`` (``dispatch``), and a module per command with its
arguments, usage and ``run(argv)`` (``train``, ``weightmaps``, ``data``, ``predict``, ``export``,
``evaluate``, ``tune``; ``overrides`` checks the Hydra commands'). May import every other
package; nothing imports it."""

from segunet.cli.dispatch import main

__all__ = ["main"]
