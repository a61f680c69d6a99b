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
    python scripts/bench_scale.py --sizes "" --dask 32768       # one image on Dask workers
    python scripts/bench_scale.py --sizes "" --volumes 256,512  # 3D volumes, a 3D model

``--folder N``: N images of 512 px (synthetic nuclei) predicted with ``model=nuclei`` (TTA
off) by one process with 2 torch threads, and on a Dask LocalCluster of 1 and of 2
workers of 1 thread each: wall time of each and the speed-up of 2 workers over 1.

``--dask SIZE``: the image of ``SIZE``² px with probabilities and instances, by one process
with 2 torch threads and with its boxes and blocks on a LocalCluster of 1 and of 2 workers
of 1 thread each (``dask.split=blocks``): wall time, the cores kept busy (CPU time of the
process and its workers over wall time), where the time goes (the parts on the workers;
the rest is this process: opening, stitching, starting the cluster), and the speed-up of 2
workers over 1.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
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
use = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "rss_mib": use[0].ru_maxrss / 1024,
                  "cpu_s": sum(u.ru_utime + u.ru_stime for u in use)}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8192,16384,32768", help="image edges, px")
    p.add_argument("--workdir", type=Path, help="for the TIFFs and stores (default: temp)")
    p.add_argument("--folder", type=int, default=0, help="images of the folder bench (0: none)")
    p.add_argument("--dask", type=int, default=0, help="edge of the Dask image bench (0: none)")
    p.add_argument("--volumes", default="",
                   help="3D volumes: edges of cubes or ZxYxX shapes (e.g. 256,256x2048x2048)")
    p.add_argument("--instances-only", action="store_true",
                   help="volumes: skip the run of probabilities alone")
    p.add_argument("--batches", default="",
                   help="volumes: also probabilities alone at these batch_size= (e.g. 8,1)")
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


def write_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """A uint8 zarr volume of ``shape``, chunks of 64³, from a pool of 4 blocks of 128³ of
    blurred noise (bright blobs: the objects), written a slab at a time."""
    import zarr
    from scipy import ndimage as ndi

    edge = min(128, *shape)
    pool = []
    for seed in range(4):
        noise = ndi.gaussian_filter(np.random.default_rng(seed).random((edge,) * 3), 3,
                                    mode="wrap")
        pool.append(((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8))
    out = zarr.create_array(store=str(path), shape=shape, chunks=(64,) * 3, dtype=np.uint8)
    depth, height, width = shape
    for z in range(0, depth, edge):
        slab = np.empty((edge, height, width), np.uint8)
        for y in range(0, height, edge):
            for x in range(0, width, edge):
                block = pool[(z + 2 * y + 3 * x) // edge % len(pool)]
                slab[:, y:y + edge, x:x + edge] = block[:, :height - y, :width - x]
        out[z:z + edge] = slab[:depth - z]


def write_checkpoint(path: Path, dims: int = 2) -> None:
    """A 2-level valid U-Net of width 2 that thresholds the box-filtered input."""
    import torch

    from segunet.checkpoint import save_atomic
    from segunet.models import UNet

    cfg = {"_target_": "segunet.models.UNet", "in_channels": 1, "out_channels": 2,
           "spatial_dims": dims, "channels": [2, 2], "padding": "valid", "norm": None,
           "dropout": 0.0}
    model = UNet(1, 2, dims, [2, 2], padding="valid", norm=None)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for conv in (model.encoders[0][0], model.encoders[0][2], model.decoders[0][0],
                     model.decoders[0][2]):
            conv.weight[0, 0] = 1 / 3**dims
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
    phases = {m[0]: (int(m[1]), float(m[2])) for m in re.findall(
        r"segunet: Dask: (\w+): (\d+) parts in ([\d.]+) s", done.stderr)}
    return json.loads(lines[-1]) | ({"objects": int(found.group(1))} if found else {}) | {
        "phases": phases}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.folder:
        folder_bench(args.folder, args.workdir)
    if args.dask:
        dask_bench(args.dask, args.workdir)
    if args.volumes:
        volume_bench([_volume_shape(v) for v in args.volumes.split(",")], args.workdir,
                     args.instances_only, [int(b) for b in args.batches.split(",") if b])
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


def _volume_shape(text: str) -> tuple[int, int, int]:
    """``N`` (a cube) or ``ZxYxX``."""
    sizes = [int(n) for n in text.split("x")]
    return (sizes[0],) * 3 if len(sizes) == 1 else tuple(sizes)


def volume_bench(sizes: list[tuple[int, int, int]], workdir: Path | None,
                 instances_only: bool, batches: list[int]) -> None:
    """Volumes of ``sizes`` (ZYX) voxels with a 3D model: probabilities alone (unless
    ``instances_only``), and with instances, each in a child process: wall time, peak RSS,
    objects; ``batches``: probabilities alone at each of these batch sizes too."""
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        ckpt = work / "detector3d.pt"
        write_checkpoint(ckpt, dims=3)
        for size in sizes:
            volume = work / f"blobs_{'x'.join(map(str, size))}.zarr"
            write_volume(volume, size)
            base = ["predict", f"checkpoint={ckpt}", f"input={volume}", "format=zarr",
                    f"output={work / 'out'}", "overwrite=true"]
            probs = None if instances_only else run([*base, "outputs=probabilities"])
            both = run([*base, "outputs=probabilities,instances"])
            rows.append((size, probs, both))
            for batch in batches:  # what a CPU batch costs (see predict._batch_on)
                print(f"{_shape(size)}, batch_size={batch}: "
                      f"{_time_rss(run([*base, 'outputs=probabilities', f'batch_size={batch}']))}")
            print(f"{_shape(size)}: {_time_rss(probs)}; with instances {_time_rss(both)}",
                  file=sys.stderr)
            shutil.rmtree(volume)
            shutil.rmtree(work / "out", ignore_errors=True)
    print("| volume, 3D model | objects | probabilities: time, peak RSS | + instances: time, "
          "peak RSS |")
    print("|---|---:|---|---|")
    for size, probs, both in rows:
        print(f"| {_shape(size)} ({math.prod(size) / 1e9:.2f} Gvox) | "
              f"{both.get('objects', 0):,} | "
              f"{_time_rss(probs)} | {_time_rss(both)} |")


def _shape(shape: tuple[int, int, int]) -> str:
    return f"{shape[0]}³" if len(set(shape)) == 1 else "x".join(map(str, shape))


def _time_rss(result: dict | None) -> str:
    return "-" if result is None else (
        f"{result['seconds']:.0f} s, {result['rss_mib']:,.0f} MiB")


def dask_bench(size: int, workdir: Path | None) -> None:
    """One image of ``size``² px by one process and by its parts on 1 and 2 workers."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        work = Path(tmp)
        ckpt, image = work / "detector.pt", work / f"nuclei_{size}.tif"
        write_checkpoint(ckpt)
        write_tiff(image, size)
        base = ["predict", f"checkpoint={ckpt}", f"input={image}", "format=zarr",
                "outputs=probabilities,instances", f"output={work / 'out'}", "overwrite=true"]
        cases = {"one process, 2 threads": [],
                 "Dask, 1 worker x 1 thread": ["dask.workers=1", "dask.split=blocks"],
                 "Dask, 2 workers x 1 thread": ["dask.workers=2", "dask.split=blocks"]}
        results = {}
        for name, extra in cases.items():
            results[name] = run([*base, *extra])
            print(f"{name}: {results[name]['seconds']:.0f} s", file=sys.stderr)
    print(f"| {size}² ({size * size / 1e9:.2f} Gpx), probabilities + instances | wall time "
          "| cores busy | objects | peak RSS of this process | on the workers |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in results.items():
        phases = ", ".join(f"{k} {n} parts {t:.0f} s" for k, (n, t) in r["phases"].items())
        print(f"| {name} | {r['seconds']:.0f} s | {r['cpu_s'] / r['seconds']:.2f} | "
              f"{r.get('objects', 0):,} | {r['rss_mib']:,.0f} MiB | {phases or '-'} |")
    one, two = (results[f"Dask, {k}"]["seconds"] for k in ("1 worker x 1 thread",
                                                             "2 workers x 1 thread"))
    print(f"\n2 workers / 1 worker: {one / two:.2f}x faster; 2 workers / one process: "
          f"{results['one process, 2 threads']['seconds'] / two:.2f}x")


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
