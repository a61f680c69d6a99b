"""Where the Hydra configs live and how config errors become one-line messages."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """``$SEGUNET_CONFIG_DIR`` if set, else the repository's ``configs/`` (editable install)."""
    env = os.environ.get("SEGUNET_CONFIG_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "configs"


def check_fields(obj: object, group: str) -> None:
    """Type-check a config dataclass after Hydra filled it: ``trainer.max_steps=abc`` should
    fail here, naming the key, not deep inside the training loop."""
    import dataclasses
    import types
    import typing

    from segunet.errors import SegunetError

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in allowed:
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not any(isinstance(value, t) and not (t is int and isinstance(value, bool))
                   for t in allowed if isinstance(t, type)):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise SegunetError(f"{group}.{f.name}={value!r} is not valid: expected {names}")
