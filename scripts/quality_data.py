"""The held-out splits of ``../shared/data`` that ``bench_quality.py`` scores on.

One seeded split per dataset, fixed here so every method and every session sees the same:
the *test* part is never trained or tuned on; the rest (*trainval*) is what a recipe trains
on, its data source keeping its own validation share for checkpoint selection and the
post-processing search.

- DSB 2018: 60 test images, a seed-0 permutation of the sorted names (stratified sizes are
  already mixed in the subset).
- ISBI 2012: the last 5 of the 30 slices.
- Lucchi++: the last 8 of the 32 slices of the crop.

``materialise(dataset, root, out)`` writes the parts where segunet's data sources read
them: symlinks to the DSB files, sub-stacks of the TIFF volumes (zlib, as the originals).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = ("dsb2018", "isbi2012", "lucchi")
FOLDER = {"dsb2018": "dsb2018/train", "isbi2012": "isbi2012", "lucchi": "lucchi_pp"}
DSB_TEST = 60
STACK_TEST = {"isbi2012": 5, "lucchi": 8}


def source(dataset: str, shared: Path = SHARED) -> Path:
    return shared / FOLDER[dataset]


def dsb_test_names(names: list[str], n_test: int = DSB_TEST, seed: int = 0) -> list[str]:
    """The held-out DSB images: the first ``n_test`` of a ``seed`` permutation of the names."""
    ordered = sorted(names)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return sorted(ordered[i] for i in order[:n_test])


def materialise(dataset: str, out: Path, shared: Path = SHARED) -> dict[str, Path]:
    """Write ``out/trainval`` and ``out/test`` for ``dataset``; returns both paths."""
    root = source(dataset, shared)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} not found: pass --shared <the folder that holds {FOLDER[dataset]}>"
        )
    parts = {"trainval": out / "trainval", "test": out / "test"}
    if dataset == "dsb2018":
        stems = [p.stem for p in sorted((root / "images").glob("*.png"))]
        test = set(dsb_test_names(stems))
        for part, path in parts.items():
            for sub, ext in (("images", ".png"), ("masks", ".tif")):
                (path / sub).mkdir(parents=True, exist_ok=True)
                for stem in stems:
                    if (stem in test) == (part == "test"):
                        link = path / sub / f"{stem}{ext}"
                        if not link.exists():
                            link.symlink_to(root / sub / f"{stem}{ext}")
        return parts
    import tifffile

    n_test = STACK_TEST[dataset]
    for name in ("train-volume.tif", "train-labels.tif"):
        stack = tifffile.imread(root / name)
        for part, path in parts.items():
            path.mkdir(parents=True, exist_ok=True)
            piece = stack[-n_test:] if part == "test" else stack[:-n_test]
            tifffile.imwrite(path / name, piece, compression="zlib")
    return parts


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Write the held-out split of one dataset: "
                                "<out>/trainval (train on it) and <out>/test (score on it).")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("out", type=Path, help="folder for trainval/ and test/")
    p.add_argument("--shared", type=Path, default=SHARED,
                   help=f"the shared data folder (default {SHARED})")
    args = p.parse_args(argv)
    try:
        parts = materialise(args.dataset, args.out, args.shared)
    except FileNotFoundError as e:
        raise SystemExit(f"quality_data: {e}") from None
    for part, path in parts.items():
        print(f"{part}: {path}")


if __name__ == "__main__":
    main()
