"""Benchmark tiled prediction: segunet's predict_tiled against MONAI's sliding_window_inference.

Same model (the paper's U-Net with padding="same"), image, tile, overlap and Gaussian blending;
output in host memory. Methods, each in its own process, so its peak host RSS
(``resource.getrusage``) and peak GPU memory are its own:

  segunet          predict_tiled, image in memory (on CUDA: kept on the GPU, tiles cut there);
                   its process also times the bare forward pass over as many batches of
                   resident tiles (the line ``forward``): the ceiling for any tiling
  segunet-host     the same, tiles cut on the host and copied per batch (resident=False)
  monai            sliding_window_inference, tiles on the device, output blended on the host
  segunet-stream   a tiled TIFF on disk read lazily (zarr view, band by band) into a zarr store
                   (float16): host memory holds the tiles in flight and a band of rows

On CUDA all run under bf16 autocast on channels-last inputs. The TIFF is written tile by tile
from a few random tiles, so even a 32768 x 32768 one takes seconds and little memory.

    python scripts/bench_predict.py                       # GPU: 8192 x 8192, paper widths
    python scripts/bench_predict.py --compile --methods segunet,monai   # the issue's goal
    python scripts/bench_predict.py --size 1024 --channels 8,16,32,64,128   # CPU default
    python scripts/bench_predict.py --tile 256,512,1024 --methods segunet,monai   # tile sweep
    python scripts/bench_predict.py --methods segunet-stream --size 32768 --dtype uint8
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ("segunet", "segunet-host", "monai", "segunet-stream")
DEFAULT_METHODS = ("segunet", "monai", "segunet-stream")
TIFF_TILE = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=8192 if cuda else 1024, help="image edge")
    p.add_argument("--dtype", choices=("float32", "uint8"), default="float32",
                   help="of the image on disk (in-memory methods get it as float32)")
    p.add_argument("--channels", default="64,128,256,512,1024" if cuda else "8,16,32,64,128",
                   help="U-Net level widths")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--tile", default="512", help="tile edge, or several for a sweep: 256,512")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=8 if cuda else 2)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile segunet's model; MONAI keeps the eager one, the\n"
                        "issue's anchor (compiled, it recompiled and ran slower here)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, of {','.join(METHODS)}")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--workdir", type=Path, help="for the TIFF and zarr files (default: a temp dir)")
    p.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)  # the child's method
    p.add_argument("--tiff", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.tiles = [int(t) for t in str(args.tile).split(",")]
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}: choose from {','.join(METHODS)}")
    return args


def make_model(args: argparse.Namespace) -> torch.nn.Module:
    from segunet.models.unet import UNet

    torch.manual_seed(0)
    channels = [int(c) for c in args.channels.split(",")]
    model = UNet(1, args.classes, 2, channels, padding="same").to(args.device).eval()
    if args.device.startswith("cuda"):  # the fast layout for everyone, MONAI included
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if args.compile and args.only != "monai" else model


def write_tiff(path: Path, size: int, dtype: str) -> None:
    """A ``size`` x ``size`` tiled TIFF, written tile by tile from 61 random tiles (content is
    irrelevant to the speed), so it never exists whole in memory."""
    import tifffile

    rng = np.random.default_rng(0)
    shape = (TIFF_TILE, TIFF_TILE)
    if dtype == "uint8":
        pool = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(61)]
    else:
        pool = [rng.standard_normal(shape, dtype=np.float32) for _ in range(61)]
    count = math.ceil(size / TIFF_TILE) ** 2
    tiles = (pool[i % len(pool)] for i in range(count))
    tifffile.imwrite(path, tiles, shape=(size, size), dtype=dtype, tile=shape,
                     bigtiff=size * size * np.dtype(dtype).itemsize > 2**31)


class ChannelFirst:
    """A lazily read ``(Y, X)`` array seen as ``(1, Y, X)``."""

    def __init__(self, array) -> None:
        self.array, self.dtype = array, array.dtype
        self.shape, self.ndim = (1, *array.shape), array.ndim + 1

    def __getitem__(self, index):
        return np.asarray(self.array[index[1:]])[None]


def open_lazy(path: Path):
    """The TIFF through tifffile's zarr view: reads only the TIFF tiles asked for, with file
    reads rather than a memory map, so pages read do not count as this process's memory."""
    import tifffile
    import zarr

    return ChannelFirst(zarr.open(tifffile.imread(path, aszarr=True), mode="r"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def forward_only(model, args, tile: tuple[int, int], batches: int, size: int) -> float:
    """Seconds for ``batches`` bare forward passes on one resident batch of ``size`` tiles (no
    reading, cropping, softmax or merging): the ceiling for tiled prediction."""
    cuda = args.device.startswith("cuda")
    x = torch.randn(size, 1, *tile, device=args.device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda):
        model(x)  # warm
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(batches):
            model(x)
        if cuda:
            torch.cuda.synchronize()
    return time.perf_counter() - started


def run_one(args: argparse.Namespace) -> list[dict]:
    """Time one method in this process; the parent reads the JSON line it prints."""
    from segunet.checkpoint import unwrap
    from segunet.data.tiling import plan_tiles, tile_shapes
    from segunet.infer.merger import ZarrMerger
    from segunet.infer.predict import predict_tiled

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = make_model(args)
    tile = args.tiles[0]
    stream = args.only == "segunet-stream"
    lazy = open_lazy(args.tiff)
    image = lazy if stream else np.asarray(lazy[:, :, :], np.float32)  # in memory for the rest
    layout = torch.channels_last

    def monai_predict(img: np.ndarray) -> np.ndarray:
        from monai.inferers import sliding_window_inference

        def predictor(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                x = x.contiguous(memory_format=layout) if cuda else x
                return torch.softmax(model(x).float(), 1)

        with torch.inference_mode():
            out = sliding_window_inference(
                torch.from_numpy(img)[None], (tile, tile), args.batch_size, predictor,
                overlap=args.overlap, mode="gaussian", sw_device=device, device="cpu",
            )
        return out[0].numpy()

    def predict(img, out=None):
        if args.only == "monai":
            return monai_predict(np.asarray(img, np.float32))
        resident = False if args.only == "segunet-host" else None
        return predict_tiled(model, img, tile, args.batch_size, "gaussian", args.overlap,
                             device=device, out=out, resident=resident)

    # Warm up (cuDNN autotuning, compilation) on a few batches' worth of tiles, untimed, and
    # on the last, smaller batch of the timed run, so no autotuning falls in the timing.
    warm = min(args.size, tile * 2)
    predict(np.asarray(lazy[:, :warm, :warm], np.float32))
    spatial = (args.size, args.size)
    in_tile, out_tile = tile_shapes(unwrap(model), spatial, tile)  # as predict_tiled
    tiles = plan_tiles(spatial, in_tile, out_tile, "same", 1, args.overlap)
    batches = math.ceil(len(tiles) / args.batch_size)
    if len(tiles) % args.batch_size:
        forward_only(model, args, in_tile, 1, len(tiles) % args.batch_size)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = peak_rss_mib()
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        out = None
        if stream:
            shape = (args.classes, args.size, args.size)
            out = ZarrMerger(Path(folder) / "probabilities.zarr", shape, chunks=(512, 512))
        started = time.perf_counter()
        predict(image, out)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    result = {
        "method": args.only, "tile": tile, "seconds": seconds,
        "MP/s": args.size**2 / seconds / 1e6, "peak_rss_MiB": peak_rss_mib(),
        "rss_before_MiB": rss_before,
        "peak_gpu_MiB": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    results = [result]
    if args.only == "segunet":
        seconds = forward_only(model, args, in_tile, batches, args.batch_size)
        results.append({
            "method": "forward", "tile": tile, "seconds": seconds,
            "MP/s": args.size**2 / seconds / 1e6, "peak_rss_MiB": None,
            "rss_before_MiB": None, "peak_gpu_MiB": None, "batches": batches,
        })
    return results


def report(args: argparse.Namespace, results: list[dict], device_name: str) -> None:
    print(f"{args.size}x{args.size} {args.dtype}, overlap {args.overlap}, channels "
          f"{args.channels}, batch {args.batch_size}, {device_name}"
          + (", segunet compiled (MONAI eager)" if args.compile else ""))
    print(f"{'method':16} {'tile':>5} {'seconds':>8} {'MP/s':>8} {'peak RSS MiB':>13} "
          f"{'peak GPU MiB':>13}")
    for r in results:
        rss = f"{r['peak_rss_MiB']:.0f}" if r["peak_rss_MiB"] is not None else "-"
        gpu = f"{r['peak_gpu_MiB']:.0f}" if r["peak_gpu_MiB"] is not None else "-"
        print(f"{r['method']:16} {r['tile']:5d} {r['seconds']:8.2f} {r['MP/s']:8.2f} "
              f"{rss:>13} {gpu:>13}")
    for tile in args.tiles:
        speed = {r["method"]: r["MP/s"] for r in results if r["tile"] == tile}
        ours = speed.get("segunet")
        for other, label in (("monai", "MONAI"), ("forward", "forward only (ceiling)"),
                             ("segunet-host", "segunet-host")):
            if ours is not None and other in speed:
                print(f"tile {tile}: segunet / {label}: {ours / speed[other]:.2f}x")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        print(json.dumps(run_one(args)))
        return
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results = []
    forwarded = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        tiff = Path(folder) / "image.tif"
        started = time.perf_counter()
        write_tiff(tiff, args.size, args.dtype)
        print(f"wrote {tiff.stat().st_size / 2**20:.0f} MiB TIFF in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        for tile, method in itertools.product(args.tiles, args.methods.split(",")):
            child = [sys.executable, __file__, *forwarded, "--tile", str(tile),
                     "--only", method, "--tiff", str(tiff)]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{method} (tile {tile}) failed:\n{done.stderr[-3000:]}")
            rows = json.loads(done.stdout.strip().splitlines()[-1])
            for r in rows:
                print(f"{r['method']} tile {tile}: {r['MP/s']:.2f} MP/s", file=sys.stderr)
            results += rows
    report(args, results, device_name)
    if args.json:
        settings = {k: str(v) for k, v in vars(args).items() if k not in ("only", "tiff")}
        args.json.write_text(json.dumps(
            {"device": device_name, "settings": settings, "results": results}, indent=2
        ))


if __name__ == "__main__":
    main()
