"""``python -m segunet.cli``: the ``segunet`` command."""

from segunet.cli.dispatch import main

main()
