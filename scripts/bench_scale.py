"""Instances of images beyond memory: ``segunet predict format=zarr`` with and without
``instances``, at growing sizes, each in a child process of its own: its wall time and its
peak RSS (``getrusage`` of the child itself), and the number of objects.

The image is a tiled uint8 TIFF of synthetic nuclei (a pool of 16 tiles of 512 px, never
whole in memory). The model is a tiny 2-level valid U-Net whose weights make it a known
detector (four box filters and a threshold on the input: foreground where the blurred
image is bright), so the objects are the nuclei, as a trained model's would be, at the cost
of a tiny net: the measurement is of the streaming, not of the network.

    python scripts/bench_scale.py --sizes 8192,16384,32768     # about 40 min on 2 cores
    python scripts/bench_scale.py --sizes "" --folder 200       # a folder on Dask workers

``--folder N``: N images of 512 px (synthetic nuclei) predicted with ``model=nuclei`` (TTA
off) by one process with 2 torch threads, and on a Dask LocalCluster of 1 and of 2
workers of 1 thread each: wall time of each and the speed-up of 2 workers over 1.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TILE = 512
CHILD = """
import json, resource, sys, time
from segunet.cli.dispatch import main
start = time.perf_counter()
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = e.code or 0
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8192,16384,32768", help="image edges, px")
    p.add_argument("--workdir", type=Path, help="for the TIFFs and stores (default: temp)")
    p.add_argument("--folder", type=int, default=0, help="images of the folder bench (0: none)")
    return p.parse_args(argv)


def write_tiff(path: Path, size: int) -> None:
    """A tiled uint8 TIFF of ``size``² px from a pool of synthetic nuclei tiles."""
    import tifffile

    from segunet.data.synthetic import synthetic_cells

    pool = [(synthetic_cells((TILE, TILE), seed=s)[0] * 200 + 20).astype(np.uint8)
            for s in range(16)]
    tiles = (pool[i % len(pool)] for i in range(math.ceil(size / TILE) ** 2))
    tifffile.imwrite(path, tiles, shape=(size, size), dtype=np.uint8, tile=(TILE, TILE),
                     bigtiff=size * size > 2**31)


def write_checkpoint(path: Path) -> None:
    """A 2-level valid U-Net of width 2 that thresholds the box-filtered input."""
    import torch

    from segunet.checkpoint import save_atomic
    from segunet.models import UNet

    cfg = {"_target_": "segunet.models.UNet", "in_channels": 1, "out_channels": 2,
           "spatial_dims": 2, "channels": [2, 2], "padding": "valid", "norm": None,
           "dropout": 0.0}
    model = UNet(1, 2, 2, [2, 2], padding="valid", norm=None)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for conv in (model.encoders[0][0], model.encoders[0][2], model.decoders[0][0],
                     model.decoders[0][2]):
            conv.weight[0, 0] = 1 / 9
        model.head.weight[1, 0], model.head.bias[1] = 50.0, -25.0
    save_atomic({"model": model.state_dict(), "step": 0,
                 "config": {"model": cfg, "data": {"percentiles": [1.0, 99.8]}}}, path)


def run(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True,
                          text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        raise SystemExit(f"segunet {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    found = re.search(r"(\d+) objects", done.stderr)
    return json.loads(lines[-1]) | ({"objects": int(found.group(1))} if found else {})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.folder:
        folder_bench(args.folder, args.workdir)
    if not sizes:
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        ckpt = work / "detector.pt"
        write_checkpoint(ckpt)
        rows = []
        for size in sizes:
            image = work / f"nuclei_{size}.tif"
            write_tiff(image, size)
            base = ["predict", f"checkpoint={ckpt}", f"input={image}", "format=zarr"]
            probs = run([*base, f"output={work / 'p'}", "outputs=probabilities",
                         "overwrite=true"])
            both = run([*base, f"output={work / 'i'}", "outputs=probabilities,instances",
                        "overwrite=true"])
            rows.append((size, probs, both, both.get("objects")))
            print(f"{size}: probabilities {probs['seconds']:.0f} s {probs['rss_mib']:.0f} MiB; "
                  f"with instances {both['seconds']:.0f} s {both['rss_mib']:.0f} MiB",
                  file=sys.stderr)
            image.unlink()
    print("| image | objects | probabilities: time, peak RSS | + instances: time, peak RSS "
          "| time ratio |")
    print("|---|---:|---|---|---:|")
    for size, probs, both, count in rows:
        print(f"| {size}² ({size * size / 1e9:.2f} Gpx) | {count:,} | "
              f"{probs['seconds']:.0f} s, {probs['rss_mib']:,.0f} MiB | "
              f"{both['seconds']:.0f} s, {both['rss_mib']:,.0f} MiB | "
              f"{both['seconds'] / probs['seconds']:.2f} |")


def folder_bench(count: int, workdir: Path | None) -> None:
    """A folder of ``count`` images by one process and by 1 and 2 Dask workers."""
    import tifffile

    from segunet.data.synthetic import synthetic_cells

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in range(count):
            image = synthetic_cells((TILE, TILE), seed=i)[0]
            tifffile.imwrite(folder / f"n{i:03}.tif", (image * 200 + 20).astype(np.uint8))
        base = ["predict", "model=nuclei", f"input={folder}", "tta=false", "overwrite=true"]
        cases = {"one process, 2 threads": [],
                 "Dask, 1 worker x 1 thread": ["dask.workers=1"],
                 "Dask, 2 workers x 1 thread": ["dask.workers=2"]}
        times = {}
        for name, extra in cases.items():
            times[name] = run([*base, f"output={Path(tmp) / 'out'}", *extra])["seconds"]
            print(f"{name}: {times[name]:.0f} s", file=sys.stderr)
    print(f"| {count} images of {TILE}² px, model=nuclei | wall time |")
    print("|---|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.0f} s |")
    one, two = times["Dask, 1 worker x 1 thread"], times["Dask, 2 workers x 1 thread"]
    print(f"\n2 workers / 1 worker: {one / two:.2f}x faster; 2 workers / one process: "
          f"{times['one process, 2 threads'] / two:.2f}x")


if __name__ == "__main__":
    main()
