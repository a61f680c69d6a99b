"""One plan, start to end: measure the data, time the device, apply the rules, write the
recipe. ``segunet plan`` and ``segunet train experiment=auto`` both call :func:`make_plan`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from segunet.errors import SegunetError
from segunet.plan.fingerprint import Fingerprint, fingerprint
from segunet.plan.recipe import write_recipe
from segunet.plan.rules import Plan, plan

#: ``budget``'s units.
UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}


def parse_budget(budget: str | float | int) -> float:
    """Seconds of a budget written ``600``, ``90s``, ``10m`` or ``1.5h``."""
    text = str(budget).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h)?", text)
    seconds = float(match[1]) * UNITS[match[2] or "s"] if match else 0.0
    if seconds < 60:
        raise SegunetError(
            f"budget={budget}: give the training time as 600, 90s, 10m or 1.5h, at least a "
            "minute"
        )
    return seconds


@dataclass(frozen=True)
class Planned:
    """A plan made: the recipe's text, the fingerprint and the rules' choices."""

    text: str
    fingerprint: Fingerprint
    plan: Plan


def make_plan(data: Mapping[str, Any], data_group: str, given: Mapping[str, Any],
              budget: str | float, device: str = "auto", limit: int = 100,
              command: str = "segunet plan", progress: Callable | None = None) -> Planned:
    """Plan training on the data of the resolved ``data`` config (the config
    ``data_group`` with the keys ``given``) for ``budget`` on ``device``, measuring at most
    ``limit`` of its images."""
    from segunet.plan.timing import this_device, time_step

    seconds = parse_budget(budget)
    fp = fingerprint(data, limit, progress=progress)
    result = plan(fp, data, this_device(device), seconds,
                  lambda model, patch, batch: time_step(model, patch, batch, device))
    return Planned(write_recipe(result, fp, data_group, given, command), fp, result)
