"""Where tiled prediction spends its time: predict_tiled against the bare forward pass over
the same tiles, then one prediction under torch.profiler, its kernels by GPU time.

    python scripts/profile_predict.py                  # GPU: 8192 x 8192, paper widths, eager
    python scripts/profile_predict.py --compile
    python scripts/profile_predict.py --size 1024 --channels 4,8,16,32,64 --device cpu

On an H200 (eager) this showed that the conv bias adds (``aten::add_``, a non-vectorised
elementwise kernel on channels-last output) take about a third of the forward pass; compiled,
they fuse with the ReLU.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from segunet.data.tiling import sliding_starts
from segunet.infer.predict import predict_tiled
from segunet.models.unet import UNet


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=8192 if cuda else 1024)
    p.add_argument("--channels", default="64,128,256,512,1024" if cuda else "4,8,16,32,64")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--rows", type=int, default=20, help="kernels listed")
    args = p.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    channels = [int(c) for c in args.channels.split(",")]
    model = UNet(1, 2, 2, channels, padding="same").to(device).eval()
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    model = torch.compile(model) if args.compile else model
    image = np.random.default_rng(0).standard_normal((1, args.size, args.size), np.float32)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    def best_of(fn, repeats: int = 2) -> float:
        fn()  # warm: autotuning, compilation
        sync()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - started)
        return min(times)

    def ours() -> None:
        predict_tiled(model, image, args.tile, args.batch_size, device=device)

    tiles = len(sliding_starts(args.size, args.tile, 0.25)) ** 2
    x = torch.randn(args.batch_size, 1, args.tile, args.tile, device=device)
    if on_gpu:
        x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=on_gpu):
            for _ in range(math.ceil(tiles / args.batch_size)):
                model(x)

    seconds = {"predict_tiled": best_of(ours), "bare forward": best_of(forward)}
    for name, s in seconds.items():
        print(f"{name:14} {s:7.3f} s {args.size**2 / s / 1e6:8.1f} MP/s")
    print(f"predict_tiled / forward: {seconds['bare forward'] / seconds['predict_tiled']:.2f}")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        ours()
        sync()
    key = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
