"""A plan written as an ordinary experiment config: one key per line under its group, the
reason on the line above, the data source's own keys as given, and the fingerprint under
``plan:``, which training keeps in the run's config and in every checkpoint. The user reads
it, edits it, and trains with ``segunet train experiment=<file>``."""

from __future__ import annotations

import datetime
import json
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from segunet.plan.fingerprint import Fingerprint
from segunet.plan.rules import Plan

#: Groups in the order they are written.
ORDER = ("model", "data", "augment", "trainer", "postprocess")


def _value(value: Any) -> str:
    """One YAML value on one line (flow style for lists and mappings; JSON is YAML)."""
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value)
        return text.replace('"', "") if _numbers(value) else text
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix(
        "\n").removesuffix("\n...").strip()


def _numbers(value: Any) -> bool:
    if isinstance(value, dict):
        return all(str(k).isidentifier() and _numbers(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_numbers(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tree(entries: Sequence[tuple[str, Any, str]]) -> dict:
    """Nested ``{key: (value, why)}`` of dotted keys."""
    tree: dict = {}
    for key, value, why in entries:
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = (value, why)
    return tree


def _lines(tree: Mapping[str, Any], indent: int) -> list[str]:
    out = []
    pad = " " * indent
    for key, item in tree.items():
        if isinstance(item, dict):
            out.append(f"{pad}{key}:")
            out += _lines(item, indent + 2)
            continue
        value, why = item
        if why:
            out += [f"{pad}# {line}" for line in textwrap.wrap(why, 92 - indent - 2)]
        out.append(f"{pad}{key}: {_value(value)}")
    return out


def write_recipe(result: Plan, fp: Fingerprint, data_group: str, data_given: Mapping[str, Any],
                 command: str) -> str:
    """The text of the experiment config of ``result``: ``data_group`` is the data config it
    starts from, ``data_given`` the data keys the user set (``path``...), ``command`` the
    command line that planned it."""
    planned = {c.key for c in result.choices}
    given = [(f"data.{k}", v, "") for k, v in _flat(data_given)
             if f"data.{k}" not in planned]
    entries = given + [(c.key, c.value, c.why) for c in result.choices]
    tree = _tree(entries)
    today = datetime.date.today().isoformat()
    lines = [
        "# @package _global_",
        f"# Planned by `{command}` on {today} from the fingerprint at the end;",
        "# every setting says why. Edit freely, then: segunet train experiment=<this file>",
        "defaults:",
        f"  - override /data: {data_group}",
        f"  - override /model: {result.model}",
        "  - override /scheduler: cosine",
        "",
    ]
    for group in [*ORDER, *(g for g in tree if g not in ORDER)]:
        if group in tree:
            lines += [f"{group}:", *_lines(tree[group], 2), ""]
    info = {**result.info, "fingerprint": fp.as_dict()}
    lines += ["# What the plan measured (kept in the run's config and its checkpoints).",
              yaml.safe_dump({"plan": info}, sort_keys=False, width=88).rstrip()]
    return "\n".join(lines) + "\n"


def _flat(node: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in node.items():
        if isinstance(v, Mapping):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out
