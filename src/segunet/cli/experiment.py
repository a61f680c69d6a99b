"""``segunet train experiment=<file.yaml>`` and ``experiment=auto``: an experiment that is
not one of segunet's configs. Hydra finds experiments only as ``experiment/<name>.yaml`` of
a config folder, so the file (or the plan made on the spot) is staged as one, under a name
holding its content's hash, in the per-user cache folder, and ``--config-dir`` points Hydra
there; torchrun's ranks and a sweep's jobs get the staged name and read the same file."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from segunet.errors import SegunetError

#: ``experiment=auto``'s own options, ``plan.<key>=<value>`` on the command line.
AUTO_OPTIONS = {"budget": "15m", "device": None, "limit": "100"}


def staged(argv: list[str]) -> list[str]:
    """``argv`` with ``experiment=<file>`` or ``experiment=auto`` replaced by a staged
    experiment Hydra can find; any other ``argv`` as it is."""
    where = [i for i, a in enumerate(argv) if a.partition("=")[0].lstrip("+") == "experiment"]
    value = argv[where[-1]].partition("=")[2].strip("'\"") if where else None
    if value != "auto" and any(a.partition("=")[0].startswith("plan.") for a in argv):
        raise SegunetError("plan.<key>=... goes with experiment=auto (segunet plans the "
                           "recipe from the data, then trains it)")
    if not where:
        return argv
    i = where[-1]
    if value == "auto":
        rest = argv[:i] + argv[i + 1:]
        text, rest = _auto(rest)
        name = "auto"
    elif value.endswith((".yaml", ".yml")) or "/" in value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise SegunetError(f"experiment={value}: no such file (a plan written by "
                               "segunet plan out=..., or any experiment config)")
        text, rest, name = path.read_text(), argv[:i] + argv[i + 1:], path.stem
    else:
        return argv
    if any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in rest):
        raise SegunetError(f"experiment={value} and --config-dir together: put the file "
                           "into <dir>/experiment/ and give experiment=<its name>")
    folder, name = stage(text, name)
    return ["--config-dir", str(folder), *rest, f"experiment={name}"]


def stage(text: str, stem: str) -> tuple[Path, str]:
    """``(config folder, experiment name)`` of ``text`` staged as an experiment config."""
    from segunet.atomic import write_atomic
    from segunet.data.weightmaps_cache import cache_folder

    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    name = f"{stem}-{digest}"
    folder = cache_folder("auto") / "experiments" / digest
    file = folder / "experiment" / f"{name}.yaml"
    if not file.is_file():
        file.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode()
        write_atomic(file, lambda f: f.write(data))
    return folder, name


def _auto(argv: list[str]) -> tuple[str, list[str]]:
    """The recipe planned for the data that ``argv`` names, and ``argv`` without the plan's
    options."""
    from segunet.cli.overrides import hydra_args
    from segunet.cli.plan import plan_overrides, split_options

    options, rest = split_options(argv, AUTO_OPTIONS, prefix="plan.")
    args = hydra_args(rest)
    if args is None:
        raise SegunetError("experiment=auto: cannot read the other arguments")
    data = [o for o in args.overrides if o.lstrip("+~").startswith("data")]
    if not data:
        raise SegunetError("experiment=auto plans from your data: give data=<source> and "
                           "data.path=<folder> (e.g. data=folder data.path=/data/cells)")
    device = options["device"] or _device(args.overrides)
    options = {**options, "device": device}
    print("segunet: experiment=auto: planning the recipe", file=sys.stderr)
    planned = plan_overrides(data, options, "segunet train " + " ".join(args.overrides)
                             + " experiment=auto")
    return planned.text, rest


def _device(overrides: list[str]) -> str:
    """``trainer.device`` as given, for timing the steps where training will run."""
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "trainer.device":
            return value
    return "auto"
