"""``segunet plan data=<source> data.path=<folder> [budget=15m] [out=<file.yaml>]``: measure
a labelled dataset and write the recipe that trains on it (:mod:`segunet.plan`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from segunet.errors import SegunetError, report_errors

USAGE = """usage: segunet plan data=<folder|tiff_stack|volume|...> data.path=<your data>
                    [data.<key>=...] [budget=15m] [out=<plan.yaml>] [device=auto] [limit=100]

Measures the dataset (image sizes, channels, colour, intensities, pixel size, the label kind,
the objects: sizes, touching, gaps) from at most `limit` of its images, times a few training
steps on the device, and derives the recipe: target and metric, net depth and width, patch,
batch, steps for the `budget` of training time, border-weight sigma, the decoding search,
channels and augmentation. Each choice is written with its reason as an experiment config:
to `out`, or to stdout. Then: segunet train experiment=<plan.yaml>
(or plan and train at once: segunet train data=... data.path=... experiment=auto plan.budget=15m)

example:
  segunet plan data=folder data.path=/data/cells budget=10m out=plans/cells.yaml
"""

#: The keys of the plan itself; every other argument is an override of the data config.
OPTIONS = {"budget": "15m", "out": None, "device": "auto", "limit": "100"}


def run(argv: Sequence[str]) -> int:
    """``segunet plan key=value ...``; returns the exit status."""
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    with report_errors():
        options, overrides = split_options(argv, OPTIONS)
        text = plan_command(overrides, options)
    if options["out"] is None:
        sys.stdout.write(text)
    return 0


def split_options(argv: Sequence[str], defaults: dict[str, str | None], prefix: str = ""
                  ) -> tuple[dict[str, str | None], list[str]]:
    """``argv`` as the plan's own options (``<prefix>key=value``) and the rest."""
    options, rest = dict(defaults), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.startswith(prefix) and key[len(prefix):] in defaults:
            options[key[len(prefix):]] = value
        else:
            rest.append(arg)
    return options, rest


def plan_command(overrides: list[str], options: dict[str, str | None]) -> str:
    """Plan from the data config ``overrides`` compose; print the fingerprint and write the
    recipe to ``options['out']`` if given. Returns the recipe's text."""
    from segunet.atomic import write_atomic

    planned = plan_overrides(overrides, options, "segunet plan " + " ".join(overrides))
    out = options["out"]
    if out:
        path = Path(out)
        if path.suffix not in (".yaml", ".yml"):
            raise SegunetError(f"out={out}: name a .yaml file for the plan")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = planned.text.encode()
        write_atomic(path, lambda f: f.write(data))
        print(f"segunet: wrote {path}; train with: segunet train experiment={path}",
              file=sys.stderr)
    return planned.text


def plan_overrides(overrides: list[str], options: dict[str, str | None], command: str):
    """The :class:`~segunet.plan.make.Planned` of the data that ``overrides`` (Hydra
    overrides, ``data=...`` and ``data.*``) compose; the fingerprint and the plan's choices
    are printed on stderr."""
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from segunet.cli.overrides import check_overrides
    from segunet.plan.fingerprint import describe
    from segunet.plan.make import make_plan

    foreign = [o for o in overrides if not o.lstrip("+~").startswith("data")]
    if foreign:
        raise SegunetError(
            f"segunet plan takes data=..., data.<key>=... and {', '.join(OPTIONS)}; got "
            f"{foreign[0]}"
        )
    cfg = check_overrides(overrides)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    group = str(cfg.hydra.runtime.choices.get("data"))
    given = {}
    for o in overrides:
        key = o.lstrip("+~").partition("=")[0]
        if key.startswith("data."):
            given[key[5:]] = OmegaConf.to_container(OmegaConf.create(
                {"v": OmegaConf.select(cfg, key)}), resolve=True)["v"]
    try:
        limit = int(options["limit"] or 100)
    except ValueError:
        raise SegunetError(f"limit={options['limit']}: give a whole number of images") from None
    print(f"segunet: measuring {data.get('path', group)}", file=sys.stderr)
    planned = make_plan(data, group, _nested(given), options["budget"] or "15m",
                        options["device"] or "auto", limit, command,
                        progress=lambda it, total: tqdm(it, total=total, unit="image",
                                                        file=sys.stderr, leave=False))
    print(describe(planned.fingerprint), file=sys.stderr)
    print("segunet: the plan:", file=sys.stderr)
    for c in planned.plan.choices:
        print(f"  {c.key} = {c.value}", file=sys.stderr)
    return planned


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
