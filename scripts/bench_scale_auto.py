"""``segunet predict scale=auto`` on nuclei of another scale: the shipped ``nuclei`` model on
held-out DSB images resampled by ``--scales``, predicted as they are, with ``scale=auto``,
and with ``diameter=`` the true median object width of each image (the best an estimate
can do; capped at the 8x that resampling allows).

    python scripts/bench_scale_auto.py --scales 0.5,1,2,3 --limit 60

The images are the 60 grey DSB images held out when ``model=nuclei`` was trained (never
trained or tuned on): ``quality_data.dsb_test_names`` over the grey names of
``../shared/data/dsb2018/train``. Each is resampled by ``s`` (linear, anti-aliased when
shrinking; its labels by nearest neighbour) and written as a float32 TIFF that records no
pixel size. Every method runs the code of ``segunet predict`` in this process, with TTA
off for all of them (the time of a 3x image), and is scored with ``bench_quality.py``'s
mean AP .5:.95.

``--methods ...,trained`` also trains a model on the data itself at each scale: the grey
DSB images ``nuclei`` trained on (all grey ones less the 60), resampled alike, trained as
``nuclei`` was (``experiment=dsb2018_cpu``, ``--train-steps`` 4000 steps, its decoding
tuned on its validation images), then predicted as they are. That is a training per scale
(52 minutes for 2x on 2 cores, most of it training and the decoding search)::

    python scripts/bench_scale_auto.py --scales 2 --methods as_is,auto,trained

The table gives each row's ratio to the images at ``s=1`` predicted as they are, where the
model works at the scale it was trained at, and where ``trained`` ran, to it as well.
The estimate's error is the median of ``|log2(estimated / true width)|`` over images.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality  # noqa: E402
import quality_data  # noqa: E402

METHODS = ("as_is", "auto", "diameter")  # and "trained", on request
FOUND = re.compile(r"objects about ([0-9.]+) px across")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", default="0.5,1,2,3", help="resampling factors of the images")
    p.add_argument("--limit", type=int, default=60, help="held-out images used (at most 60)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--train-steps", type=int, default=4000, help="steps of the trained method "
                   "(nuclei's)")
    p.add_argument("--train-images", type=int, default=10**6, help="train on the first N only")
    p.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                   help="more overrides of the trained method's segunet train")
    p.add_argument("--shared", type=Path, default=quality_data.SHARED)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


def held_out(shared: Path, limit: int, colour: bool = False, trained_on: bool = False
             ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, instance labels) of DSB images nuclei never trained on: the grey ones
    held out, or (``colour``) the colour ones, which it never saw at all; ``trained_on``:
    the grey ones it did train on instead."""
    from segunet.data.io import read_array

    root = shared / quality_data.FOLDER["dsb2018"]
    if not root.is_dir():
        raise SystemExit(f"{root} not found: pass --shared <the folder that holds dsb2018>")
    images = {p.stem: p for p in sorted((root / "images").glob("*.png"))}
    kind = {stem: read_array(p).ndim == 3 for stem, p in images.items()}
    grey = [s for s, c in kind.items() if not c]
    if colour:
        names = quality_data.dsb_test_names([s for s, c in kind.items() if c], len(kind))
    elif trained_on:
        names = sorted(set(grey) - set(quality_data.dsb_test_names(grey)))
    else:
        names = quality_data.dsb_test_names(grey)
    names = names[:limit]
    return [(n, read_array(images[n]), read_array(root / "masks" / f"{n}.tif")) for n in names]


def train_at(s: float, folder: Path, args: argparse.Namespace) -> Path:
    """A model trained as ``nuclei`` was, on its training images resampled by ``s``; its
    best checkpoint."""
    import tifffile

    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name, image, labels in held_out(args.shared, args.train_images, trained_on=True):
        img, lab = resampled(image, labels, s)
        tifffile.imwrite(folder / "images" / f"{name}.tif", img)
        tifffile.imwrite(folder / "masks" / f"{name}.tif", lab)
    run = folder / "run"
    bench_quality.train_segunet(
        ["experiment=dsb2018_cpu", f"data.path='{folder}'", "data.image_glob='*.tif'",
         f"trainer.max_steps={args.train_steps}", f"data.targets.cache_dir='{folder / 'cache'}'",
         *args.train_override], run)
    return run / "checkpoints" / "best.pt"


def resampled(image: np.ndarray, labels: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    from skimage.transform import resize

    shape = [max(1, round(n * s)) for n in image.shape]
    img = resize(image.astype(np.float32), shape, order=1, anti_aliasing=s < 1,
                 preserve_range=True).astype(np.float32)
    lab = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True)
    return img, lab.astype(labels.dtype)


def true_width(labels: np.ndarray) -> float:
    from segunet.data.objectsize import equivalent_diameters

    return float(np.median(equivalent_diameters(labels)))


def predict(file: Path, out: Path, method: str, width: float, checkpoint: Path | None = None
            ) -> tuple[np.ndarray, float | None]:
    """Instances of ``file`` by ``segunet predict``'s code (``checkpoint``, else nuclei);
    the width scale=auto found."""
    from segunet.data.io import read_array
    from segunet.infer.run import predict_files
    from segunet.infer.settings import Batch, Settings, Tiling
    from segunet.postprocess.decoding import InstancesConfig
    from segunet.pretrained import checkpoint_or_model

    settings = Settings(
        checkpoint_or_model(str(checkpoint) if checkpoint else None,
                            None if checkpoint else "nuclei"), "cpu", False,
        Tiling(None, 8, "gaussian", 0.25, False), True, None, InstancesConfig(),
        scale="auto" if method == "auto" else "none",
        diameter=width if method == "diameter" else None,
    )
    batch = Batch(str(file), out, ("instances",), "tif", True, False)
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        written = predict_files(batch, settings)
    found = FOUND.search(said.getvalue())
    return read_array(written[0]), float(found.group(1)) if found else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    scales = [float(s) for s in args.scales.split(",")]
    methods = args.methods.split(",")
    images = held_out(args.shared, args.limit)
    from segunet.checkpoint import load_trained, object_sizes_of
    from segunet.infer.resample import MAX_FACTOR
    from segunet.pretrained import checkpoint_or_model

    trained = object_sizes_of(load_trained(checkpoint_or_model(None, "nuclei")))
    results: dict[str, Any] = {"images": len(images), "scales": scales, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for s in scales:
            for method in methods:
                start, scores, errors, per_image = time.perf_counter(), [], [], []
                own = (train_at(s, Path(tmp) / f"train{s:g}", args) if method == "trained"
                       else None)
                for name, image, labels in images:
                    img, lab = resampled(image, labels, s)
                    file = Path(tmp) / f"{name}.tif"
                    import tifffile

                    tifffile.imwrite(file, img)
                    # The true width, where resampling allows it (8x the model's median).
                    width = min(true_width(lab), 0.99 * MAX_FACTOR * trained[1])
                    pred, found = predict(file, Path(tmp) / "out", method, width, own)
                    scores.append(bench_quality.image_scores("ap", pred, lab)["mean_ap"])
                    if found:
                        errors.append(abs(math.log2(found / width)))
                    per_image.append({"name": name, "mean_ap": scores[-1], "width": width,
                                      "found": found})
                row = {"scale": s, "method": method, "mean_ap": float(np.mean(scores)),
                       "seconds": round(time.perf_counter() - start, 1),
                       "log2_error": float(np.median(errors)) if errors else None}
                print(json.dumps(row), flush=True)
                results["rows"].append({**row, "images": per_image})
    reference = next((r["mean_ap"] for r in results["rows"]
                      if r["scale"] == 1 and r["method"] == "as_is"), None)
    print(table(results["rows"], reference))
    for r in results["rows"]:
        own = next((t["mean_ap"] for t in results["rows"]
                    if t["scale"] == r["scale"] and t["method"] == "trained"), None)
        if own and r["method"] != "trained":
            print(f"{r['scale']:g}x: {r['method']} / trained on that scale: "
                  f"{r['mean_ap'] / own:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


def table(rows: list[dict[str, Any]], reference: float | None) -> str:
    lines = ["| scale | method | mean AP .5:.95 | / as_is at 1x | median abs log2 width error "
             "| s |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['mean_ap'] / reference:.2f}" if reference else "-"
        err = f"{r['log2_error']:.2f}" if r["log2_error"] is not None else "-"
        lines.append(f"| {r['scale']:g}x | {r['method']} | {r['mean_ap']:.3f} | {ratio} | {err} "
                     f"| {r['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
