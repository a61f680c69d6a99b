"""``segunet data download name=<dataset> [dest=data] [force=true] [sha256=FILE=HEX,...]``: its
arguments, usage and run; the download itself is :func:`segunet.data.download.download`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from segunet.config.args import option, parse, run_command, usage
from segunet.data.download import REGISTRY, download
from segunet.errors import SegunetError

USAGE = """usage: segunet data download name=<dataset> [dest=data] [force=true]
                             [sha256=FILE=HEX,...]

Downloads a public dataset into <dest>/<name>, checks each file against the SHA-256 pinned
for it (a file without one is refused, with the SHA-256 it has: pin it with sha256= once a
source you trust confirms it), converts it to the layout its preset reads and only then
renames it into place. dest=data, the default, is a folder of the working folder: the one
`segunet train data=<name>` reads (configs/data/<name>.yaml), so naming the dataset names it.
"""

#: The subcommands of ``segunet data``.
SUBCOMMANDS = ("download",)


@dataclass
class DownloadConfig:
    """The arguments of ``segunet data download`` (see :func:`download`)."""

    name: str = option(MISSING, f"the dataset: {', '.join(sorted(REGISTRY))}")
    dest: str = option(
        "data", "the parent folder, relative to the working folder: the dataset goes into "
        "<dest>/<name>; data is where segunet train data=<name> looks for it")
    force: bool = option(False, "replace an existing <dest>/<name> (once the new copy is whole)")
    sha256: list[str] = option(
        [], "FILE=HEX,...: the SHA-256 a file must have, from a source you trust: for a file "
        "segunet pins none for (or to replace its pin)")


def run(argv: Sequence[str]) -> int:
    """``segunet data download key=value ...`` (``argv``: the words after ``data``); returns
    the exit status, errors are one line on stderr."""
    argv = list(argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        argv = ["download", "--help"]  # its one command
    if not argv or argv[0] not in SUBCOMMANDS:
        given = f"unknown command '{argv[0]}'" if argv else "give a command"
        print(f"segunet: error: segunet data: {given}: use segunet data download name=<dataset> "
              "(see segunet data download --help)", file=sys.stderr)
        return 2
    words = argv[1:]

    def body() -> None:
        args = parse(DownloadConfig, key_values(words), "data download")
        try:
            target = download(args.name, args.dest, args.force, sha256=args.sha256)
        except KeyboardInterrupt:  # the temp folder is gone already: say so, no traceback
            raise SegunetError(
                "interrupted: the partial download was removed and nothing was kept; run the "
                "same command again"
            ) from None
        root = target / REGISTRY[args.name].root
        default = Path("data") / args.name / REGISTRY[args.name].root
        print(f"{args.name} is in {target}; train with: segunet train data={args.name}"
              + (f" data.path={root}" if root != default else ""))

    return run_command(body, usage(DownloadConfig, USAGE + datasets()), words)


def datasets() -> str:
    """The datasets ``name=`` takes, with their sources, for ``--help``."""
    return "\ndatasets:\n" + "\n".join(
        f"  {name}: {spec.cite}" for name, spec in sorted(REGISTRY.items()))


def key_values(words: list[str]) -> list[str]:
    """``words`` when they are ``key=value``; else (the flags of old: ``lucchi --dest d
    --force``) a one-line SegunetError that shows them as ``key=value``."""
    if all("=" in w and not w.startswith("-") for w in words):
        return words
    new, pins = [], []
    rest = iter(words)
    for word in rest:
        flag, eq, value = word.partition("=")
        if flag in ("--dest", "--sha256") and not eq:
            value = next(rest, "")
        if flag == "--dest":
            new.append(f"dest={value}")
        elif flag == "--sha256":
            pins.append(value)
        elif word == "--force":
            new.append("force=true")
        elif "=" in word or word.startswith("-"):
            new.append(word)
        else:
            new.append(f"name={word}")
    new += [f"sha256={','.join(pins)}"] if pins else []
    old = next(w for w in words if "=" not in w or w.startswith("-"))
    raise SegunetError(
        f"segunet data download: expected key=value, got '{old}': did you mean "
        f"{' '.join(new)}?"
    )
