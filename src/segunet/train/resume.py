"""Resuming a run with settings changed since its checkpoint.

An unchanged run continues exactly (the optimiser's and scheduler's saved states load as they
are). Changed optimiser or schedule settings (``optim.lr``, ``trainer.max_steps`` behind a
cosine or poly schedule, another scheduler) apply from the resumed step on, as if the run had
been configured with them from the start: the optimiser keeps its moments and takes the new
hyperparameters, and a fresh scheduler of the new settings is stepped to the resumed step. A
decaying schedule extended to a new end therefore keeps decaying towards it; it never starts
again from the top. Another optimiser class cannot take the saved moments and is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from segunet.errors import SegunetError

#: Keys whose change is the point of resuming (or never matters): not reported.
IGNORED = ("trainer.resume",)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def config_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
    """``{dotted key: (stored value, current value)}`` of every setting that differs."""
    old, new = flatten(stored), flatten(current)
    missing = object()
    return {
        key: (old.get(key, missing), new.get(key, missing))
        for key in sorted(old.keys() | new.keys())
        if key not in IGNORED and old.get(key, missing) != new.get(key, missing)
    }


def schedule_changed(changes: Mapping[str, tuple]) -> bool:
    return any(key.split(".")[0] in ("optim", "scheduler") for key in changes)


def check_optimizer(changes: Mapping[str, tuple], source: str) -> None:
    """Refuse another optimiser class: its state (moments, momentum buffers) has other keys."""
    if "optim._target_" in changes:
        old, new = changes["optim._target_"]
        raise SegunetError(
            f"{source} was trained with {old}, not {new}: resume with that run's optimiser "
            f"(optim={str(old).rsplit('.', 1)[-1].lower()}), or start a new run"
        )


def apply_new_schedule(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    saved_optimizer: Mapping[str, Any],
    step: int,
) -> None:
    """Load the saved optimiser state but keep the hyperparameters of ``optimizer`` (built
    from the current config), then step the fresh ``scheduler`` (built on it, at step 0) to
    ``step``: the learning rate the current settings give at that step."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(saved_optimizer)
    for group, settings in zip(optimizer.param_groups, fresh):
        group.update(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(step):
            scheduler.step()


def describe_changes(changes: Mapping[str, tuple], limit: int = 6) -> str:
    """``optim.lr 0.001 -> 0.0005, trainer.max_steps 30 -> 40`` (the first ``limit``)."""
    parts = [f"{key} {show(old)} -> {show(new)}" for key, (old, new) in changes.items()]
    more = len(parts) - limit
    return ", ".join(parts[:limit]) + (f" and {more} more" if more > 0 else "")


def show(value: Any) -> str:
    return "(unset)" if not isinstance(value, (str, int, float, list, tuple, type(None))) else (
        str(value)
    )
