"""Where segunet's configs live, what they may build, and how a config node is built.

Every group of a config names the constructor that builds it (``_target_``). Before anything
is built, a node is checked against the allow-list of its group (:data:`ALLOWED_TARGETS`) and
typed by the schema of its constructor (:mod:`segunet.config.schema`): :func:`instantiate_group`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segunet.config.schema import locate, schema_for, validate
from segunet.errors import SegunetError

#: The installed package of the YAML configs: the repository's ``configs/`` (pyproject.toml
#: maps it there), so Hydra also finds them as ``pkg://segunet.conf``.
CONFIG_PACKAGE = "segunet.conf"


def config_dir() -> Path:
    """The folder of the YAML configs: ``$SEGUNET_CONFIG_DIR`` if set, else the installed
    package :data:`CONFIG_PACKAGE`, else ``configs/`` of a source checkout used without
    installing it (``PYTHONPATH=src``). The schemas the YAML files extend are registered in
    Hydra's ConfigStore first (:func:`register_schemas`), so whoever composes them can."""
    register_schemas()
    env = os.environ.get("SEGUNET_CONFIG_DIR")
    if env:
        return Path(env).expanduser().resolve()
    spec = importlib.util.find_spec(CONFIG_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if checkout.is_dir():
        return checkout
    raise SegunetError(
        f"segunet's configs are missing (no package {CONFIG_PACKAGE}): reinstall segunet, or "
        "set SEGUNET_CONFIG_DIR to a copy of its configs folder"
    )


@functools.cache
def register_schemas() -> None:
    """Store the schema of every constructor a group may build in Hydra's ConfigStore as
    ``schema/<group>/<name>`` (e.g. ``schema/model/UNet``): the YAML files of the group
    extend it in their defaults list (``- /schema/model/UNet@_here_``)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, target in schema_targets():
        store.store(group=f"schema/{group}", name=target.rpartition(".")[2],
                    node=group_schema(group, target))


def schema_targets() -> Iterator[tuple[str, str]]:
    """``(group, target)`` of every constructor a group may build; torch's optimisers and
    schedulers are every public subclass of their base."""
    for group, targets in ALLOWED_TARGETS.items():
        for target in targets:
            yield group, target
    for group, (module_name, _) in TORCH_TARGETS.items():
        module = importlib.import_module(module_name)
        for name, _value in inspect.getmembers(module, inspect.isclass):
            if allowed_target(group, f"{module_name}.{name}"):
                yield group, f"{module_name}.{name}"


def group_schema(group: str, target: str) -> type:
    """The schema of a ``group`` node that builds ``target``: torch's optimisers and
    schedulers are built partially (the parameters, the optimiser come later)."""
    return schema_for(target, partial=group in TORCH_TARGETS)


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
    "loss": ("segunet.train.losses.WeightedCrossEntropy", "segunet.train.losses.DiceCrossEntropy"),
    "trainer": ("segunet.train.settings.TrainerConfig",),
    "logging": ("segunet.train.logger.LoggingConfig",),
    "postprocess": ("segunet.postprocess.tune.TuneConfig",),
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
    from omegaconf import Container, OmegaConf

    for group in config:
        if group == "hydra":
            continue
        node = config[group]
        if isinstance(node, Container):
            node = OmegaConf.to_container(node, resolve=True)
        if group in ALLOWED_TARGETS or group in TORCH_TARGETS:
            check_targets(node, group, source)
            continue
        for path, target in _nested_targets({group: node}):
            raise SegunetError(
                f"{source}: {path}._target_={target!r}: segunet builds nothing from "
                f"'{group}', refusing it"
            )


def allowed_target(group: str, target: object) -> bool:
    """Whether ``target`` (a dotted name) may be built for ``group``."""
    if not isinstance(target, str):
        return False
    if group in TORCH_TARGETS:
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


def checked(cfg: Any, group: str, source: str | None = None) -> Any:
    """``cfg[group]`` resolved and typed by the schema of its ``_target_``, once
    :func:`check_targets` allows that; ``source`` (a file) starts the one-line errors."""
    node = cfg[group]
    check_targets(node, group, source or "the config")
    target = node.get("_target_") if hasattr(node, "get") else None
    if target is None:
        raise SegunetError(f"{source + ': ' if source else ''}{group} names no _target_ to build")
    try:
        return validate(node, group_schema(group, target), group)
    except SegunetError as e:
        raise SegunetError(f"{source}: {e}" if source else str(e)) from None


def check_config(cfg: Any, source: str | None = None) -> None:
    """Every group of a whole config allowed (:func:`check_all_targets`), typed by its
    schema and within its ranges, before anything is built; a group that is a plain
    dataclass (``trainer``, ``augment``...) is built too, for the checks across its keys."""
    check_all_targets(cfg, source or "the config")
    # trainer first: other groups take its values (scheduler.T_max: ${trainer.max_steps}),
    # and a bad one is the key the user set.
    for group in sorted(cfg, key=lambda g: g != "trainer"):
        if group in ALLOWED_TARGETS or group in TORCH_TARGETS:
            node = checked(cfg, group, source)
            if dataclasses.is_dataclass(locate(node._target_)):
                _build_dataclass(node, source)


def _build_dataclass(node: Any, source: str | None) -> None:
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node)
    try:
        locate(values.pop("_target_"))(**values)
    except SegunetError as e:
        raise SegunetError(f"{source}: {e}" if source else str(e)) from None


def instantiate_group(cfg: Any, group: str, source: str | None = None) -> Any:
    """``hydra.utils.instantiate(cfg[group])`` of the :func:`checked` node, with plain lists
    and dicts as arguments."""
    from hydra.utils import instantiate

    return instantiate(checked(cfg, group, source), _convert_="all")


def stored_data(config: dict, source: str, fix: str, path: str | None = None) -> Any:
    """The training data of a checkpoint's stored ``config``, rebuilt (``segunet tune``, a
    bioimage.io package's test image): from ``path`` instead of its ``data.path`` when given,
    and with no weight-map cache (its ``cache_dir`` is a folder of the machine that trained
    it: nothing is written there). One-line errors name ``source`` and end in ``fix``, an
    option of the command that reads the checkpoint."""
    from hydra.errors import InstantiationException

    from segunet.data.io import split_key
    from segunet.errors import one_line

    data = dict(config.get("data") or {})
    if path is not None:
        data["path"] = path
    if isinstance(data.get("targets"), dict):
        data["targets"] = {**data["targets"], "cache_dir": None}
    where = data.get("path")
    if isinstance(where, str) and not split_key(where)[0].exists():
        raise SegunetError(
            f"{source}: its training data {where} (data.path) is not there; {fix}"
        )
    try:
        return instantiate_group({**config, "data": data}, "data", source)
    except (SegunetError, InstantiationException) as e:
        raise SegunetError(
            f"{source}: rebuilding its training data failed ({one_line(e)}); {fix}"
        ) from None


def check_literal(config: Any, source: str, where: str = "config") -> None:
    """Refuse a stored config (a checkpoint's) that holds an OmegaConf interpolation or
    resolver call (``${...}``) anywhere: segunet stores its configs resolved, so one is
    foreign, and resolving it would read the user's environment or other keys
    (``${oc.env:TOKEN}``). The one-line error names the key, never a value."""
    if isinstance(config, str):
        if "${" in config:
            raise SegunetError(
                f"{source}: {where} holds an interpolation (${{...}}); segunet stores its "
                "configs resolved, so this file was edited: refusing to resolve it (use a "
                "checkpoint written by segunet train)"
            )
        return
    items = config.items() if isinstance(config, dict) else (
        enumerate(config) if isinstance(config, (list, tuple)) else ())
    for key, value in items:
        check_literal(value, source, f"{where}.{key}")


#: ``_target_`` names of constructors that moved into packages by role (issue 20), as
#: checkpoints written before the move store them (the shipped nuclei model among them).
MOVED_TARGETS = {
    "segunet.losses.WeightedCrossEntropy": "segunet.train.losses.WeightedCrossEntropy",
    "segunet.losses.DiceCrossEntropy": "segunet.train.losses.DiceCrossEntropy",
    "segunet.train.TrainerConfig": "segunet.train.settings.TrainerConfig",
    "segunet.train.trainer.TrainerConfig": "segunet.train.settings.TrainerConfig",
    "segunet.logger.LoggingConfig": "segunet.train.logger.LoggingConfig",
    "segunet.tune.TuneConfig": "segunet.postprocess.tune.TuneConfig",
}


def upgrade(config: dict) -> dict:
    """A config stored (in a checkpoint) by an older segunet as today's: a group's
    ``_target_`` of a constructor that moved is renamed (:data:`MOVED_TARGETS`), and the
    label and weight-map keys of ``data`` moved into ``data.targets``."""
    config = {group: _moved(node) for group, node in config.items()}
    return _targets_nested(config)


def _moved(node: Any) -> Any:
    """A group's ``node`` with its ``_target_`` renamed where that constructor moved."""
    if not isinstance(node, dict) or node.get("_target_") not in MOVED_TARGETS:
        return node
    return {**node, "_target_": MOVED_TARGETS[node["_target_"]]}


def _targets_nested(config: dict) -> dict:
    """``config`` with the flat label and weight-map keys of ``data`` in ``data.targets``."""
    from segunet.data.labels import Targets

    data = config.get("data")
    if not isinstance(data, dict) or "targets" in data:
        return config
    names = {f.name for f in dataclasses.fields(Targets)}
    targets = {k: v for k, v in data.items() if k in names}
    rest = {k: v for k, v in data.items() if k not in names}
    return {**config, "data": {**rest, "targets": targets}} if targets else config
