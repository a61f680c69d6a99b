"""Configs: composing them, the allow-list of ``_target_`` constructors and the upgrade of
old stored configs (``compose``), the typed schemas (``schema``), the ``key=value`` parser of
the plain commands (``args``). Imports errors and interrupts; data only inside functions,
and what a ``_target_`` names only by name, when it is built."""
