"""The typed config layer: a dataclass schema per thing a config builds, checked by OmegaConf.

Every config node is merged onto the schema of what it builds before anything is built: a
``segunet train`` group (its YAML files extend these schemas, which
:func:`segunet.config.compose.register_schemas` stores in Hydra's ConfigStore), a config stored in a
checkpoint, and the ``key=value`` arguments of predict, export, evaluate and tune
(:mod:`segunet.config.args`). A schema is derived from a constructor's signature or a dataclass's
fields, so each key, its default and its type are declared once, where they are used:

- ``int``, ``float``, ``bool``, ``str``, lists (``Sequence[int]``, tuples), dicts, nested
  dataclasses and their ``| None`` become OmegaConf's own types: it refuses a wrong type, an
  unknown key and a missing value, naming the key;
- ``Literal[...]`` (and ``bool | Literal[...]``) lists the allowed values, which
  :func:`validate` checks after the merge (OmegaConf has no Literal);
- other unions take their one plain type (``float | Tensor`` is a float), else anything;
- ``Annotated[float, Range(gt=0)]`` (or a dataclass field's ``metadata={"range": ...}``)
  bounds a number, or every number of a list, which :func:`validate` checks with the
  allowed values; torch's optimisers and schedulers, whose signatures are not segunet's,
  take theirs by parameter name from :data:`TORCH_RANGES`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segunet.errors import (
    PLAIN,
    SegunetError,
    bad_value,
    describe_field,
    dotted,
    explain,
    plain_value,
)

#: Constructors whose ``**kwargs`` are another's keyword arguments (their schema has both).
FORWARDS = {
    "segunet.models.attention.AttentionUNet": "segunet.models.unet.UNet",
    "segunet.data.sources.tiff_stack": "segunet.data.sources.stack",
    "segunet.data.sources.volume_file": "segunet.data.sources.stack",
}
#: Options of ``hydra.utils.instantiate`` that a node may carry; the builder sets its own.
INSTANTIATE_OPTIONS = ("_convert_", "_recursive_")


# --- ranges --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Range:
    """The numbers a key takes: ``Annotated[float, Range(gt=0)]``; ``words`` replaces the
    default wording of the message (``must be > 0``)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    words: str | None = None

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # a wrong type is OmegaConf's to refuse
        return not (
            not math.isfinite(value)  # no key takes inf: it diverges or freezes a run
            or (self.gt is not None and value <= self.gt)
            or (self.ge is not None and value < self.ge)
            or (self.lt is not None and value >= self.lt)
            or (self.le is not None and value > self.le)
        )

    def phrase(self, each: bool = False, optional: bool = False, finite: bool = False) -> str:
        """``must be > 0``, ``must all be at least 1``, ``must be in [0, 1) (or null)``,
        with ``finite``: ``must be finite and > 0``..."""
        if self.words:
            return self.words
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        if low is not None and high is not None:
            left, right = "([" [self.gt is None], ")]" [self.lt is None]
            bound = f"in {left}{_number(low)}, {_number(high)}{right}"
        elif low is not None:
            bound = f"> {_number(low)}" if self.gt is not None else f"at least {_number(low)}"
        else:
            bound = f"< {_number(high)}" if self.lt is not None else f"at most {_number(high)}"
        return (f"must {'all ' if each else ''}be {'finite and ' if finite else ''}{bound}"
                + (" (or null)" if optional else ""))


def _number(value: Any) -> str:
    """A number as a user would type it: ``1`` for 1.0, else Python's shortest form."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


#: Common ranges, for hints: ``n: Count = 1``, ``sizes: Sequence[Positive]``.
Count = Annotated[int, Range(ge=1)]
Positive = Annotated[float, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]
SpatialDims = Annotated[int, Range(ge=2, le=3)]
Dropout = Annotated[float, Range(ge=0, lt=1)]

#: Ranges of the keyword arguments of torch's optimisers and schedulers, by name (where
#: torch itself would refuse the value with a traceback, or train on nonsense).
TORCH_RANGES: dict[str, Range] = {
    "lr": Range(gt=0),
    "max_lr": Range(gt=0),
    "eps": Range(ge=0),
    "weight_decay": Range(ge=0),
    "momentum": Range(ge=0, lt=1),
    "dampening": Range(ge=0, le=1),
    "betas": Range(ge=0, lt=1),
    "alpha": Range(ge=0),
    "rho": Range(ge=0, le=1),
    "lr_decay": Range(ge=0),
    "gamma": Range(gt=0),
    "step_size": Range(ge=1),
    "T_max": Range(ge=1),
    "T_0": Range(ge=1),
    "T_mult": Range(ge=1),
    "total_iters": Range(ge=0),
    "total_steps": Range(ge=1),
    "eta_min": Range(ge=0),
    "factor": Range(gt=0, le=1),  # ConstantLR: 0 would train nothing for total_iters steps
    "start_factor": Range(gt=0, le=1),
    "end_factor": Range(ge=0, le=1),
    "power": Range(ge=0),
    "milestones": Range(ge=1),
    "patience": Range(ge=0),
    "min_lr": Range(ge=0),
}


# --- schemas -------------------------------------------------------------------------------


def locate(target: str) -> Any:
    """The object a dotted ``_target_`` names (imported; check it is allowed first)."""
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise SegunetError(f"cannot find {target}: {e}") from e


@functools.cache
def schema_for(target: str, partial: bool = False) -> type:
    """The schema of a config node whose ``_target_`` is ``target``; ``partial``: the node
    builds a ``functools.partial`` that leaves the first argument (an optimiser's
    parameters, a scheduler's optimiser) to the caller."""
    extra = [("_target_", str, dataclasses.field(default=target))]
    if partial:
        extra.append(("_partial_", bool, dataclasses.field(default=True)))
    ranges = TORCH_RANGES if partial else None
    return _schema(locate(target), extra, skip=1 if partial else 0, ranges=ranges)


@functools.cache
def schema_of(cls: type) -> type:
    """The schema of a dataclass (a config group's own, or a command's arguments)."""
    return _schema(cls, [], 0)


def _schema(obj: Any, extra: list, skip: int, ranges: Mapping[str, Range] | None = None) -> type:
    """The schema of ``obj``'s parameters; ``ranges``: those of parameters by name, where
    their hints have none (torch's)."""
    fields = []
    for name, hint, default, metadata in _parameters(obj, skip):
        kind, choices = translate(hint)
        bounds = metadata.get("range") or range_of(hint) or (ranges or {}).get(name)
        fields.append((name, kind, _field(
            kind, default, {**metadata, "choices": choices, "range": bounds})))
    return dataclasses.make_dataclass(obj.__name__, [*extra, *fields])


def range_of(hint: Any) -> Range | None:
    """The :class:`Range` of a type hint: of ``Annotated[...]``, also inside ``| None`` and
    as a list's element type."""
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Range)), None)
    return next(filter(None, map(range_of, typing.get_args(hint))), None)


def _parameters(obj: Any, skip: int) -> list[tuple[str, Any, Any, Mapping]]:
    """``(name, type hint, default, metadata)`` of a dataclass's fields or a callable's
    keyword parameters (those after the first ``skip``; ``**kwargs`` as :data:`FORWARDS`
    says); a parameter without a default is required (``MISSING``)."""
    if dataclasses.is_dataclass(obj):
        hints = typing.get_type_hints(obj, include_extras=True)
        return [(f.name, hints[f.name], _default_of(f), f.metadata)
                for f in dataclasses.fields(obj) if f.init]
    hints = _hints(obj.__init__ if inspect.isclass(obj) else obj)
    out, forwarded = [], False
    for p in list(inspect.signature(obj).parameters.values())[skip:]:
        if p.kind is p.VAR_KEYWORD:
            forwarded = True
        elif p.kind is not p.VAR_POSITIONAL:
            default = MISSING if p.default is p.empty else p.default
            out.append((p.name, hints.get(p.name, Any), default, {}))
    if forwarded:
        name = f"{obj.__module__}.{obj.__qualname__}"
        if name not in FORWARDS:
            raise TypeError(f"{name} takes **kwargs: name what they go to in FORWARDS")
        own = {p[0] for p in out}
        out += [p for p in _parameters(locate(FORWARDS[name]), 0)
                if p[0] not in own and p[2] is not MISSING]
    return out


def _hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation only a type checker can resolve: typed as anything
        return {}


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def translate(hint: Any) -> tuple[Any, tuple]:
    """``(OmegaConf's type, allowed values)`` of a Python type hint (see the module doc)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:  # its Range is range_of's
        return translate(args[0])
    if hint in PLAIN:
        return hint, ()
    if hint in (Path, os.PathLike):  # a path is typed as text
        return str, ()
    if origin is Literal:
        return (str if all(isinstance(a, str) for a in args) else Any), args
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        kind, choices = translate(members[0]) if len(members) == 1 else _union(members)
        if typing.get_origin(kind) is dict:
            return Any, ()  # OmegaConf 2.3 cannot override a null typed mapping with one
        optional = len(members) < len(args) and kind is not Any
        return (Optional[kind] if optional else kind), choices  # noqa: UP045 (OmegaConf's)
    if dataclasses.is_dataclass(hint):
        return schema_of(hint), ()
    if hint in (list, tuple) or origin in (list, tuple, Sequence, typing.Sequence):
        element = args[0] if args and (len(args) == 1 or args[1] is Ellipsis
                                       or len(set(args)) == 1) else Any
        kind, choices = translate(element)
        return list[kind if kind in PLAIN else Any], choices
    if hint is dict or origin in (dict, Mapping):
        return dict[str, Any], ()
    return Any, ()


def _union(members: list) -> tuple[Any, tuple]:
    """``bool | Literal["auto"]``: anything, but only true, false or auto; ``float |
    Tensor``: float; other unions: anything."""
    if all(m is bool or typing.get_origin(m) is Literal for m in members):
        values = [v for m in members for v in ((True, False) if m is bool else typing.get_args(m))]
        return Any, tuple(values)
    plain = {k for k, _ in map(translate, members) if k in PLAIN}
    return (plain.pop(), ()) if len(plain) == 1 else (Any, ())


def _field(kind: Any, default: Any, metadata: dict) -> dataclasses.Field:
    """A dataclass field of OmegaConf's ``kind`` with ``default`` (lists, dicts and nested
    schemas by factory, as dataclasses require)."""
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        values = _plain(dataclasses.asdict(default))
        factory: Callable[[], Any] = functools.partial(nested_dataclass(kind), **values)
        return dataclasses.field(default_factory=factory, metadata=metadata)
    if isinstance(default, (list, tuple, dict)):
        value = _plain(default)
        return dataclasses.field(default_factory=lambda: _plain(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested_dataclass(kind: Any) -> type | None:
    """The dataclass a field of type ``kind`` nests (``X`` or ``X | None``), or None."""
    return next((a for a in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(a)),
                None)


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what OmegaConf holds."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- validation ----------------------------------------------------------------------------


def validate(node: Mapping | DictConfig, schema: type, where: str = "") -> DictConfig:
    """``node`` (resolved) merged onto ``schema`` with its allowed values checked; errors are
    one-line SegunetErrors naming ``where.<key>`` (``where``: the group, or empty)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    node = {k: v for k, v in node.items() if k not in INSTANTIATE_OPTIONS}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise SegunetError(
                "missing " + ", ".join(f"{dotted(where, k)}=..." for k in missing)
            )
    except OmegaConfBaseException as e:
        raise SegunetError(explain(e, where) or str(e)) from None
    check_choices(merged, schema, where)
    return merged


def check_choices(node: DictConfig, schema: type, where: str = "") -> None:
    """Every value of a key with allowed values (a ``Literal``) is one of them, and every
    number of a key with a :class:`Range` within it."""
    for f in dataclasses.fields(schema):
        value, key = node[f.name], dotted(where, f.name)
        nested = nested_dataclass(f.type)
        if nested is not None and value is not None:
            check_choices(value, nested, key)
        choices = f.metadata.get("choices")
        values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        if choices and any(v is not None and not _among(v, choices) for v in values):
            raise SegunetError(bad_value(key, plain_value(value), describe_field(f)))
        check_range(key, plain_value(value), f.metadata.get("range"),
                    optional=typing.get_origin(f.type) is Union)


def check_range(key: str, value: Any, bounds: Range | None, optional: bool = False) -> None:
    """A number (or every number of a list) within ``bounds``, else the one line
    ``key=value must be ...``."""
    each = isinstance(value, list)
    if bounds is None or all(bounds.holds(v) for v in (value if each else [value])):
        return
    shown = f"[{', '.join(map(_number, value))}]" if each else _number(value)
    infinite = any(isinstance(v, float) and math.isinf(v) for v in (value if each else [value]))
    raise SegunetError(f"{key}={shown} {bounds.phrase(each, optional, infinite)}")


def check_ranges(obj: Any, where: str) -> None:
    """:func:`check_range` of every field of a dataclass built in Python (a config group's
    own ``__post_init__``), by the ranges its hints declare."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        hint = hints[f.name]
        optional = type(None) in typing.get_args(hint)
        bounds = f.metadata.get("range") or range_of(hint)
        check_range(dotted(where, f.name), list(value) if isinstance(value, tuple) else value,
                    bounds, optional)


def _among(value: Any, choices: tuple) -> bool:
    # True == 1 in Python: a bool matches only a bool choice.
    return any(type(value) is type(c) and value == c for c in choices)
