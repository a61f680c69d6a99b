"""Configs: composing them, the Hydra config folder, the allow-list of ``_target_``
constructors and the upgrade of old stored configs (``compose``), the typed schemas
(``schema``) and the ``key=value`` option parser of the plain commands (``args``). Imports
only errors and interrupts at module level; what a ``_target_`` names is imported when built."""
