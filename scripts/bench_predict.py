"""Benchmark tiled prediction: segunet's predict_tiled against MONAI's sliding_window_inference.

Same model (the paper's U-Net with padding="same"), image, tile, overlap and Gaussian blending;
output in host memory. Plus segunet streaming from a TIFF on disk (memmapped) into a zarr
store, where host memory holds only the tiles in flight. Each method runs in its own process,
so its peak host RSS (``resource.getrusage``) and peak GPU memory are its own. On CUDA both run
under bf16 autocast on channels-last inputs.

    python scripts/bench_predict.py                       # GPU: 8192 x 8192, paper widths
    python scripts/bench_predict.py --size 1024 --channels 8,16,32,64,128   # CPU default
    python scripts/bench_predict.py --compile --json bench.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ("segunet", "monai", "segunet-stream")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=8192 if cuda else 1024, help="image edge")
    p.add_argument("--channels", default="64,128,256,512,1024" if cuda else "8,16,32,64,128",
                   help="U-Net level widths")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=8 if cuda else 2)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--workdir", type=Path, help="for the TIFF and zarr files (default: a temp dir)")
    p.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)  # the child's method
    p.add_argument("--tiff", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_model(args: argparse.Namespace) -> torch.nn.Module:
    from segunet.models.unet import UNet

    torch.manual_seed(0)
    channels = [int(c) for c in args.channels.split(",")]
    model = UNet(1, args.classes, 2, channels, padding="same").to(args.device).eval()
    if args.device.startswith("cuda"):  # the fast layout for everyone, MONAI included
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if args.compile else model


def write_tiff(path: Path, size: int) -> None:
    """A random float32 image, written band by band so the parent never holds it whole."""
    import tifffile

    image = tifffile.memmap(path, shape=(1, size, size), dtype=np.float32)
    rng = np.random.default_rng(0)
    for row in range(0, size, 1024):
        band = image[:, row : row + 1024]
        band[...] = rng.standard_normal(band.shape, dtype=np.float32)
    image.flush()
    del image


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(args: argparse.Namespace) -> dict:
    """Time one method in this process; the parent reads the JSON line it prints."""
    import tifffile

    from segunet.merger import ZarrMerger
    from segunet.predict import predict_tiled

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = make_model(args)
    mapped = tifffile.memmap(args.tiff)
    stream = args.only == "segunet-stream"
    image = mapped if stream else np.array(mapped)  # in memory, as the other two expect
    layout = torch.channels_last

    def monai_predict(img: np.ndarray) -> np.ndarray:
        from monai.inferers import sliding_window_inference

        def predictor(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                x = x.contiguous(memory_format=layout) if cuda else x
                return torch.softmax(model(x).float(), 1)

        with torch.inference_mode():
            out = sliding_window_inference(
                torch.from_numpy(img)[None], (args.tile, args.tile), args.batch_size, predictor,
                overlap=args.overlap, mode="gaussian", sw_device=device, device="cpu",
            )
        return out[0].numpy()

    def predict(img, out=None):
        if args.only == "monai":
            return monai_predict(np.asarray(img))
        return predict_tiled(model, img, args.tile, args.batch_size, "gaussian", args.overlap,
                             device=device, out=out)

    # Warm up (cuDNN autotuning, compilation) on one batch worth of tiles, untimed.
    warm = min(args.size, args.tile * 2)
    predict(np.ascontiguousarray(mapped[:, :warm, :warm]))
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
    return {
        "method": args.only,
        "seconds": seconds,
        "MP/s": args.size**2 / seconds / 1e6,
        "peak_rss_MiB": peak_rss_mib(),
        "rss_before_MiB": rss_before,
        "peak_gpu_MiB": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        print(json.dumps(run_one(args)))
        return
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        tiff = Path(folder) / "image.tif"
        write_tiff(tiff, args.size)
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
        for method in args.methods.split(","):
            child = [sys.executable, __file__, *forwarded, "--only", method, "--tiff", str(tiff)]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{method} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"{args.size}x{args.size}, tile {args.tile}, overlap {args.overlap}, "
          f"channels {args.channels}, batch {args.batch_size}, {device_name}"
          + (", compiled" if args.compile else ""))
    print(f"{'method':16} {'seconds':>8} {'MP/s':>8} {'peak RSS MiB':>13} {'peak GPU MiB':>13}")
    for r in results:
        gpu = f"{r['peak_gpu_MiB']:.0f}" if r["peak_gpu_MiB"] is not None else "-"
        print(f"{r['method']:16} {r['seconds']:8.2f} {r['MP/s']:8.2f} "
              f"{r['peak_rss_MiB']:13.0f} {gpu:>13}")
    if args.json:
        settings = {k: str(v) for k, v in vars(args).items() if k not in ("only", "tiff")}
        args.json.write_text(json.dumps(
            {"device": device_name, "settings": settings, "results": results}, indent=2
        ))


if __name__ == "__main__":
    main()
