"""Benchmark the data pipeline's two hot spots against the obvious alternatives, side by side.

(a) Border weight maps (Ronneberger et al. 2015, Eq. 2): the windowed exact
    ``border_weight_map`` against ``border_weight_map_direct`` (one full distance transform per
    instance) on ISBI 2012 slice 0 and the DSB 2018 image 0ea221716cf1, read from
    ../shared/data (a synthetic 512x512 image stands in when absent; ``--volume`` adds a
    synthetic 64x128x128 volume).
(b) Elastic deformation of one 512x512 sample (image, label, weight), CPU, one thread:
    ``elastic_displacement`` + ``deform`` against MONAI ``Rand2DElasticd`` and albumentations
    ``ElasticTransform``, their strengths matched to ours by measuring the displacement each
    applies to a coordinate image.
(c) GPU samples/s of ``deform`` on a batch of 8, when CUDA is there.

Times are the best of ``--repeats`` runs in one process; on a shared machine only the ratios
mean much. Prints a table and writes JSON::

    python scripts/bench_data.py [--repeats 3] [--json data/bench_data.json] [--volume]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from segunet.data.synthetic import synthetic_cells
from segunet.data.weightmaps import border_weight_map, border_weight_map_direct, separate_touching

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SHAPE = (512, 512)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` calls, seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# ------------------------------------------------------------------------- weight maps
def weightmap_cases(volume: bool) -> list[tuple[str, np.ndarray, str]]:
    """(name, instances, note) of the benchmark images; synthetic stand-ins when absent."""
    cases = []
    isbi = DATA / "isbi2012" / "train-labels.tif"
    dsb = sorted((DATA / "dsb2018" / "train" / "masks").glob("0ea221716cf1*.tif"))
    if isbi.is_file() and dsb:
        import tifffile

        cases.append(("ISBI 2012 slice 0", ndi.label(tifffile.imread(isbi, key=0) == 255)[0], ""))
        cases.append(("DSB 2018 0ea221716cf1", tifffile.imread(dsb[0]), ""))
    else:
        note = f"real data not found in {DATA}: synthetic stand-in"
        instances = separate_touching(synthetic_cells(SHAPE, seed=0)[1])
        cases.append(("synthetic 512x512", instances, note))
    if volume:
        instances = separate_touching(synthetic_cells((64, 128, 128), seed=0)[1])
        cases.append(("synthetic 64x128x128", instances, ""))
    return cases


def bench_weightmaps(repeats: int, volume: bool) -> list[dict]:
    rows = []
    for name, instances, note in weightmap_cases(volume):
        ours = border_weight_map(instances)
        direct = border_weight_map_direct(instances)
        rows.append({
            "image": name,
            "shape": list(instances.shape),
            "instances": int(len(np.unique(instances)) - 1),
            "direct_s": best_of(lambda x=instances: border_weight_map_direct(x), repeats),
            "ours_s": best_of(lambda x=instances: border_weight_map(x), repeats),
            "max_abs_diff": float(np.abs(ours - direct).max()),
            "note": note,
        })
        rows[-1]["speedup"] = rows[-1]["direct_s"] / rows[-1]["ours_s"]
    return rows


# ------------------------------------------------------------------ elastic deformation
def sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A 512x512 image, binary label and weight map, as the training loop sees them."""
    image, instances = synthetic_cells(SHAPE, seed=int(rng.integers(1000)))
    instances = separate_touching(instances)
    return {"image": image, "label": (instances > 0).astype(np.uint8),
            "weight": border_weight_map(instances)}


def coordinates() -> np.ndarray:
    """(2, H, W) float32: each pixel's row and column; warped, it shows the displacement."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE],
                                indexing="ij"))


def rms_displacement(
    warp: Callable[[np.ndarray], np.ndarray], draws: int = 24, reference: np.ndarray | None = None
) -> float:
    """RMS displacement (pixels) a warp of (2, H, W) float arrays applies relative to
    ``reference`` (default: the identity), away from the edges where mirroring folds it."""
    grid = coordinates()
    reference = grid if reference is None else reference
    inner = (slice(None), slice(96, -96), slice(96, -96))
    squares = [np.mean((warp(grid) - reference)[inner] ** 2) * 2 for _ in range(draws)]
    return float(np.sqrt(np.mean(squares)))


def segunet_elastic(generator: torch.Generator):
    from segunet.data.augment import deform, elastic_displacement

    def apply(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        displacement = elastic_displacement(1, SHAPE, grid=3, sigma=10.0, generator=generator)
        return deform(batch, displacement)

    def warp(x: np.ndarray) -> np.ndarray:
        return apply({"image": torch.from_numpy(x)[None]})["image"][0].numpy()

    return apply, warp


def monai_elastic(magnitude: float):
    from monai.transforms import Rand2DElasticd

    # Control points 256 px apart: a coarse grid, like the paper's 3x3.
    spacing = (256, 256)
    transform = Rand2DElasticd(
        keys=["image", "label", "weight"], spacing=spacing, magnitude_range=(magnitude, magnitude),
        prob=1.0, mode=["bilinear", "nearest", "bilinear"], padding_mode="reflection",
    )
    transform.set_random_state(0)
    coords = Rand2DElasticd(keys=["image"], spacing=spacing, magnitude_range=(magnitude,) * 2,
                            prob=1.0, mode="bilinear", padding_mode="reflection")
    coords.set_random_state(1)

    def warp(x: np.ndarray) -> np.ndarray:
        return np.asarray(coords({"image": torch.from_numpy(x)})["image"])

    return transform, warp


def albumentations_elastic(alpha: float, sigma: float = 50.0):
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no online version check
    import albumentations as A

    transform = A.Compose([A.ElasticTransform(alpha=alpha, sigma=sigma, p=1.0)],
                          additional_targets={"weight": "image"}, seed=0)

    def warp(x: np.ndarray) -> np.ndarray:
        out = transform(image=np.ascontiguousarray(x.transpose(1, 2, 0)), weight=x[0],
                        mask=np.zeros(SHAPE, np.uint8))
        return out["image"].transpose(2, 0, 1)

    return transform, warp


def bench_elastic(repeats: int) -> dict:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    s = sample(rng)
    result: dict = {"shape": list(SHAPE), "threads": 1, "ms_per_sample": {}, "rms_px": {},
                    "settings": {}}
    try:
        apply, warp = segunet_elastic(torch.Generator().manual_seed(0))
    except ImportError as e:
        result["skipped"] = f"segunet.data.augment lacks elastic_displacement/deform: {e}"
        return result
    batch = {"image": torch.from_numpy(s["image"])[None, None],
             "label": torch.from_numpy(s["label"].astype(np.int64))[None],
             "weight": torch.from_numpy(s["weight"])[None]}
    target = rms_displacement(warp)
    result["rms_px"]["segunet"] = target
    result["settings"]["segunet"] = "elastic_displacement(grid=3, sigma=10) + deform"
    result["ms_per_sample"]["segunet"] = 1e3 * best_of(lambda: apply(batch), repeats * 5)

    try:
        # At magnitude 0 MONAI's warp is not the identity but a fixed zoom (its control grid
        # is resized with bicubic, align_corners=False): match the random part beyond it.
        zoom = monai_elastic(0.0)[1](coordinates())
        result["monai_zero_magnitude_rms_px"] = rms_displacement(monai_elastic(0.0)[1], 1)
        probe = 10.0
        magnitude = probe * target / rms_displacement(monai_elastic(probe)[1], reference=zoom)
        transform, warp_m = monai_elastic(magnitude)
        result["rms_px"]["monai"] = rms_displacement(warp_m, reference=zoom)
        result["settings"]["monai"] = (
            f"Rand2DElasticd(spacing=256, magnitude={magnitude:.2f}); at magnitude 0 it still "
            f"zooms, {result['monai_zero_magnitude_rms_px']:.0f} px rms"
        )
        data = {"image": torch.from_numpy(s["image"])[None],
                "label": torch.from_numpy(s["label"])[None].float(),
                "weight": torch.from_numpy(s["weight"])[None]}
        result["ms_per_sample"]["monai"] = 1e3 * best_of(lambda: transform(data), repeats * 5)
    except ImportError as e:
        result["settings"]["monai"] = f"skipped: {e}"

    try:
        import cv2

        cv2.setNumThreads(1)
        probe = 1000.0
        _, warp_a = albumentations_elastic(probe)
        alpha = probe * target / rms_displacement(warp_a)
        transform, warp_a = albumentations_elastic(alpha)
        result["rms_px"]["albumentations"] = rms_displacement(warp_a)
        result["settings"]["albumentations"] = f"ElasticTransform(alpha={alpha:.0f}, sigma=50)"
        image = np.ascontiguousarray(s["image"][..., None])
        result["ms_per_sample"]["albumentations"] = 1e3 * best_of(
            lambda: transform(image=image, mask=s["label"], weight=s["weight"]), repeats * 5
        )
    except ImportError as e:
        result["settings"]["albumentations"] = f"skipped: {e}"

    ours = result["ms_per_sample"]["segunet"]
    result["speedup"] = {k: v / ours for k, v in result["ms_per_sample"].items() if k != "segunet"}
    return result


def bench_gpu(repeats: int, batch_size: int = 8) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    from segunet.data.augment import deform, elastic_displacement

    device = torch.device("cuda")
    generator = torch.Generator(device).manual_seed(0)
    s = sample(np.random.default_rng(1))
    batch = {"image": torch.from_numpy(s["image"])[None, None].repeat(batch_size, 1, 1, 1),
             "label": torch.from_numpy(s["label"].astype(np.int64))[None].repeat(batch_size, 1, 1),
             "weight": torch.from_numpy(s["weight"])[None].repeat(batch_size, 1, 1)}
    batch = {k: v.to(device) for k, v in batch.items()}

    def step() -> None:
        displacement = elastic_displacement(batch_size, SHAPE, generator=generator)
        deform(batch, displacement)

    for _ in range(5):  # warm-up: kernels, allocator
        step()
    torch.cuda.synchronize()
    iterations = 20 * repeats
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"device": torch.cuda.get_device_name(), "batch": batch_size,
            "samples_per_s": iterations * batch_size / seconds,
            "ms_per_batch": 1e3 * seconds / iterations}


# ---------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="best of N (the direct weight map costs ~10 s per DSB run)")
    parser.add_argument("--json", type=Path, default=ROOT / "data" / "bench_data.json")
    parser.add_argument("--volume", action="store_true", help="add a 3D synthetic volume")
    parser.add_argument("--skip", nargs="*", default=[], choices=["weightmaps", "elastic", "gpu"])
    args = parser.parse_args()
    try:  # one thread everywhere: the direct formula and MONAI use one as well
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    torch.set_num_threads(1)

    report: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                "python": platform.python_version(),
                                "torch": torch.__version__, "threads": 1}}
    if "weightmaps" not in args.skip:
        report["weightmaps"] = rows = bench_weightmaps(args.repeats, args.volume)
        print("\n(a) border weight maps, best of", args.repeats)
        print(f"{'image':24} {'shape':>14} {'inst':>5} {'direct s':>9} {'ours ms':>8} "
              f"{'speedup':>8} {'max diff':>9}")
        for r in rows:
            print(f"{r['image']:24} {'x'.join(map(str, r['shape'])):>14} {r['instances']:>5} "
                  f"{r['direct_s']:>9.2f} {1e3 * r['ours_s']:>8.1f} {r['speedup']:>7.0f}x "
                  f"{r['max_abs_diff']:>9.1e}" + (f"  ({r['note']})" if r["note"] else ""))
    if "elastic" not in args.skip:
        report["elastic"] = e = bench_elastic(args.repeats)
        print("\n(b) elastic deformation of one 512x512 sample (image, label, weight), "
              "CPU, 1 thread")
        if "skipped" in e:
            print("   skipped:", e["skipped"])
        for name, ms in e["ms_per_sample"].items():
            ratio = "" if name == "segunet" else f"{e['speedup'][name]:>6.1f}x slower than ours"
            print(f"   {name:15} {ms:8.1f} ms/sample   rms displacement "
                  f"{e['rms_px'][name]:5.1f} px   {ratio}   {e['settings'][name]}")
    if "gpu" not in args.skip:
        report["gpu"] = g = bench_gpu(args.repeats)
        print("\n(c) GPU, ours, batch of 8 512x512 samples:",
              g.get("skipped") or f"{g['samples_per_s']:.0f} samples/s on {g['device']} "
              f"({g['ms_per_batch']:.2f} ms per batch)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
