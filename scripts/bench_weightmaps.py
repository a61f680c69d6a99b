"""Benchmark ``border_weight_map`` against the implementation it replaced, side by side.

Issue 19: a 600x600 label image with 90,000 one-pixel cells took 528 s, the windowed
implementation comparing every pair of instances to size its windows. The old one is read
from git (``--old``, the commit before the fix) and run in this process next to the new
one on

- ``crowd``: a cell on every other pixel of a ``--side`` x ``--side`` image (600: 90,000);
- ``dsb``: ``--images`` synthetic DSB-like 512x512 images of touching nuclei (the gaps
  opened as training does), where the direct formula (one full distance transform per
  instance) runs too, as the independent reference.

Each result is checked: the new map equals the old one and (``dsb``) the direct one within
1e-4 (the border term is cut where it falls below ``BORDER_TOL`` = 1e-6). Times are the best
of ``--repeats`` runs; on a shared machine only the ratios mean much::

    python scripts/bench_weightmaps.py [--side 600] [--images 4] [--old af70073] [--skip-old]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from segunet.data.synthetic import synthetic_cells
from segunet.data.weightmaps import border_weight_map, border_weight_map_direct, separate_touching

ROOT = Path(__file__).resolve().parents[1]
MODULE = "src/segunet/data/weightmaps.py"
ATOL = 1e-4


def old_module(rev: str) -> ModuleType:
    """``segunet.data.weightmaps`` as it was at ``rev``, imported from ``git show``."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{MODULE}"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "weightmaps_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("weightmaps_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crowd(side: int) -> list[np.ndarray]:
    cells = np.zeros((side, side), np.int32)
    half = (side + 1) // 2
    cells[::2, ::2] = np.arange(1, half * half + 1).reshape(half, half)
    return [cells]


def dsb_like(images: int) -> list[np.ndarray]:
    return [separate_touching(synthetic_cells((512, 512), seed=i)[1]) for i in range(images)]


def timed(fn: Callable[[np.ndarray], np.ndarray], images: list[np.ndarray],
          repeats: int) -> tuple[float, list[np.ndarray]]:
    """Best time of ``repeats`` runs over all images, and the maps."""
    best, maps = np.inf, []
    for _ in range(repeats):
        start = time.perf_counter()
        maps = [fn(x) for x in images]
        best = min(best, time.perf_counter() - start)
    return best, maps


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def run_case(name: str, images: list[np.ndarray], contenders: dict[str, Callable],
             repeats: int) -> None:
    cells = sum(len(np.unique(x)) - 1 for x in images)
    print(f"{name}: {len(images)} image(s) {images[0].shape}, {cells} cells", flush=True)
    new_time, new_maps = timed(border_weight_map, images, repeats)
    print(f"  new        {new_time:9.2f} s", flush=True)
    for label, fn in contenders.items():
        their_time, maps = timed(fn, images, 1 if label == "direct" else repeats)
        diff = max_difference(new_maps, maps)
        verdict = "equal" if diff <= ATOL else "DIFFERENT"
        print(f"  {label:10} {their_time:9.2f} s   {label}/new = {their_time / new_time:6.1f}x; "
              f"max |new - {label}| = {diff:.1e} ({verdict})", flush=True)
        if diff > ATOL:
            sys.exit(f"{name}: the new map differs from {label} by {diff}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=600, help="crowd image side (600: 90,000)")
    parser.add_argument("--images", type=int, default=4, help="DSB-like images")
    parser.add_argument("--old", default="af70073", help="git revision of the old code")
    parser.add_argument("--skip-old", action="store_true", help="new (and direct) only")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    old = {} if args.skip_old else {"old": old_module(args.old).border_weight_map}
    run_case("dsb", dsb_like(args.images), {**old, "direct": border_weight_map_direct},
             args.repeats)
    run_case("crowd", crowd(args.side), old, args.repeats)


if __name__ == "__main__":
    main()
