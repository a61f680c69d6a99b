"""Measure ``segunet predict format=ome-zarr`` on a large image and open the result with
ome-zarr's own reader.

Writes a tiled uint8 TIFF of ``--size`` squared pixels with a pixel size in its resolution
tags, a checkpoint of a tiny same-padded U-Net (random weights: the content is irrelevant to
time and memory) that records a training pixel size, runs ``segunet predict`` on it in a
child process, and reports the wall time, the child's peak RSS (``getrusage``), the store's
size on disk, and what ``ome_zarr.reader.Reader`` finds: the image, its labels, each level's
shape and scale.

    python scripts/bench_omezarr.py                          # 8192 x 8192, CPU
    python scripts/bench_omezarr.py --input-pixel-size 1.0   # resampled 2x to the model's 0.5
    python scripts/bench_omezarr.py --size 32768 --outputs probabilities,labels   # 1 Gpx
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=8192, help="image edge, px")
    p.add_argument("--channels", default="4,8", help="U-Net level widths")
    p.add_argument("--outputs", default="probabilities,labels,instances")
    p.add_argument("--pixel-size", type=float, default=0.5, help="the model's, um")
    p.add_argument("--input-pixel-size", type=float, default=0.5, help="the image's, um")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--workdir", type=Path, help="for the TIFF and the store (default: a temp dir)")
    return p.parse_args(argv)


def write_tiff(path: Path, size: int, pixel_size: float) -> None:
    """A tiled uint8 TIFF from 61 random tiles, never whole in memory, at ``pixel_size``."""
    import tifffile

    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (TILE, TILE), dtype=np.uint8) for _ in range(61)]
    tiles = (pool[i % len(pool)] for i in range(math.ceil(size / TILE) ** 2))
    tifffile.imwrite(path, tiles, shape=(size, size), dtype=np.uint8, tile=(TILE, TILE),
                     bigtiff=size * size > 2**31, resolution=(1e4 / pixel_size,) * 2,
                     resolutionunit="CENTIMETER")


def write_checkpoint(path: Path, channels: list[int], pixel_size: float) -> None:
    """A checkpoint as ``segunet train`` writes it, of an untrained tiny U-Net."""
    import torch

    from segunet.checkpoint import pixel_size_record, save_atomic
    from segunet.models import UNet

    torch.manual_seed(0)
    model_cfg = {"_target_": "segunet.models.UNet", "in_channels": 1, "out_channels": 2,
                 "spatial_dims": 2, "channels": channels, "padding": "same", "norm": None,
                 "dropout": 0.0}
    model = UNet(1, 2, 2, channels, padding="same")
    sizes = [pixel_size, pixel_size]
    save_atomic({
        "model": model.state_dict(), "step": 0, "pixel_size": pixel_size_record(sizes),
        "config": {"model": model_cfg, "data": {"percentiles": [1.0, 99.8], "channels": None,
                                                "pixel_size": sizes}},
    }, path)


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def inspect_store(path: Path) -> list[dict]:
    """What ome-zarr's reader finds: per node with data, its name and its levels."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    found = []
    for node in Reader(parse_url(str(path)))():
        if not node.data:
            continue
        scales = [t[0]["scale"] for t in node.metadata.get("coordinateTransformations", [])]
        found.append({
            "name": node.metadata.get("name"), "label": "image-label" in node.zarr.root_attrs,
            "levels": ["x".join(map(str, d.shape)) for d in node.data],
            "scales": [" ".join(f"{v:g}" for v in scale) for scale in scales],
            "dtype": str(node.data[0].dtype),
        })
    return found


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        work = Path(folder)
        started = time.perf_counter()
        write_tiff(work / "image.tif", args.size, args.input_pixel_size)
        print(f"wrote {folder_mib(work):.0f} MiB TIFF in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
        write_checkpoint(work / "model.pt", [int(c) for c in args.channels.split(",")],
                         args.pixel_size)
        command = [
            sys.executable, "-m", "segunet.cli", "predict", f"checkpoint={work / 'model.pt'}",
            f"input={work / 'image.tif'}", f"output={work / 'out'}", "format=ome-zarr",
            f"outputs={args.outputs}", f"device={args.device}",
        ]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
        seconds = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"predict failed:\n{done.stderr[-3000:]}")
        store = work / "out" / "image.ome.zarr"
        result = {
            "size": args.size, "channels": args.channels, "outputs": args.outputs,
            "input_pixel_size": args.input_pixel_size, "model_pixel_size": args.pixel_size,
            "seconds": round(seconds, 1), "MP/s": round(args.size**2 / seconds / 1e6, 2),
            "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "store_MiB": round(folder_mib(store), 1),
            "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "nodes": inspect_store(store),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
