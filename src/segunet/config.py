"""Where the Hydra configs live, what they may build, and how config errors become one-line
messages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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


#: The constructors each config group may name as its ``_target_``. Configs and the configs
#: stored in checkpoints name what to build by a string, and Hydra would import and call any
#: importable callable (``pathlib.Path.touch``, ``os.system``): a file a user was sent must
#: never run code, so only these are built.
ALLOWED_TARGETS: dict[str, tuple[str, ...]] = {
    "model": tuple(
        f"segunet.models.{name}"
        for name in ("UNet", "AttentionUNet", "UNetPlusPlus", "UNet3Plus", "ResUNet")
    ),
    "data": tuple(
        f"segunet.data.sources.{name}"
        for name in ("synthetic", "folder", "tiff_stack", "volume_file")
    ),
    "augment": ("segunet.data.augment.AugmentConfig",),
    "loss": ("segunet.losses.WeightedCrossEntropy", "segunet.losses.DiceCrossEntropy"),
    "trainer": ("segunet.train.TrainerConfig",),
    "logging": ("segunet.logger.LoggingConfig",),
    "postprocess": ("segunet.tune.TuneConfig",),
}
#: Groups whose targets are any class of a torch module deriving from the given base.
TORCH_TARGETS = {
    "optim": ("torch.optim", "Optimizer"),
    "scheduler": ("torch.optim.lr_scheduler", "LRScheduler"),
}


def check_targets(node: Any, group: str, source: str) -> None:
    """Refuse a config ``node`` of ``group`` that would build anything but segunet's own
    classes (:data:`ALLOWED_TARGETS`) or torch's optimisers and schedulers: a top-level
    ``_target_`` outside the list, or any nested ``_target_`` (no group needs one, and Hydra
    would call it while building the arguments). ``source`` names the file or config in the
    one-line error. Nothing is imported or called to decide."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from segunet.errors import SegunetError

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        return
    target = node.get("_target_")
    if target is not None and not allowed_target(group, target):
        raise SegunetError(
            f"{source}: {group}._target_={target!r} is not one of segunet's {group} "
            f"constructors ({', '.join(allowed_names(group))}); refusing to build it"
        )
    for path, nested in _nested_targets(node):
        raise SegunetError(
            f"{source}: {group}.{path}._target_={nested!r} would be called to build the "
            f"{group}; segunet builds no nested _target_, refusing it"
        )


def check_all_targets(config: Any, source: str) -> None:
    """:func:`check_targets` on every group of a whole config (a training config, or the one
    a checkpoint stores); a ``_target_`` in a group segunet never builds is refused too.
    (``hydra``, Hydra's own settings, is Hydra's to build.)"""
    from omegaconf import DictConfig, OmegaConf

    from segunet.errors import SegunetError

    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    for group, node in config.items():
        if group in ALLOWED_TARGETS or group in TORCH_TARGETS:
            check_targets(node, group, source)
            continue
        for path, target in _nested_targets({group: node}) if group != "hydra" else ():
            raise SegunetError(
                f"{source}: {path}._target_={target!r}: segunet builds nothing from "
                f"'{group}', refusing it"
            )


def allowed_target(group: str, target: object) -> bool:
    """Whether ``target`` (a dotted name) may be built for ``group``."""
    if not isinstance(target, str):
        return False
    if group in TORCH_TARGETS:
        import importlib
        import inspect

        module_name, base = TORCH_TARGETS[group]
        module, _, name = target.rpartition(".")
        if module != module_name or not name.isidentifier() or name.startswith("_"):
            return False
        module = importlib.import_module(module_name)  # torch's own, already imported
        cls = getattr(module, name, None)
        return inspect.isclass(cls) and issubclass(cls, getattr(module, base))
    return target in ALLOWED_TARGETS.get(group, ())


def allowed_names(group: str) -> list[str]:
    if group in TORCH_TARGETS:
        return [f"{TORCH_TARGETS[group][0]}.<any {TORCH_TARGETS[group][1]}>"]
    return [t.rpartition(".")[2] for t in ALLOWED_TARGETS.get(group, ())]


def _nested_targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, target)`` of every ``_target_`` below the top level of ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if not isinstance(value, (dict, list)):
            continue
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict) and "_target_" in value:
            yield where, value["_target_"]
        yield from _nested_targets(value, where)


def instantiate_group(cfg: Any, group: str, source: str = "the config") -> Any:
    """``hydra.utils.instantiate(cfg[group])`` once :func:`check_targets` allows it."""
    from hydra.utils import instantiate

    check_targets(cfg[group], group, source)
    return instantiate(cfg[group])
