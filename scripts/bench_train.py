"""Benchmark training throughput: segunet's whole training loop against its own bare step and
against a MONAI-style CPU pipeline feeding the same step.

For each case one trainer is built from segunet's own Hydra configs (``build_trainer``), and
its model, optimiser, loss, precision, channels-last layout and compilation serve all three
variants, so the compilation happens once and the comparison is of the data paths alone:

(a) bare step: ``Trainer.train_step`` on resident random tensors already on the device, at
    the network's input and output sizes: the ceiling any data pipeline can reach.
(b) segunet: ``Trainer.loader`` (the CPU only cuts patches) -> ``Trainer.prepare`` (transfer,
    elastic deformation + flips/rotation/zoom + gray values on the device, crop to the output
    tile) -> ``Trainer.train_step``; border weight maps precomputed by the data source,
    weighted cross-entropy, a host sync every ``logging.log_every`` steps as in ``fit``.
(c) MONAI: a Dataset over the same training volumes with MONAI transforms (RandSpatialCropd,
    Rand2DElasticd / Rand3DElasticd with rotation and zoom, RandFlipd, RandRotate90d, the
    gray-value transforms, CenterSpatialCropd of the targets) on image, label, weight map and
    ignore mask, in ``--workers`` DataLoader workers, then to the device and the same step.

Cases (batch sizes and shapes of the issue; SGD momentum 0.99, weighted CE):

- ``same512``:  model=unet_same, 512x512 -> 512x512, batch 8, ISBI 2012
- ``valid572``: model=unet, 572x572 -> 388x388, batch 8, ISBI 2012
- ``unet3d``:   model=unet3d channels [32,64,128,256] BatchNorm, 116x132x132 -> 28x44x44,
  batch 4, Lucchi++ as one volume (``data.slices_as=3d``)

Real data is read from ``shared/data`` inside the repository or ``../shared/data`` beside it
(``--data-root``); synthetic data stands in when a set is absent. Every variant runs
``--warmup`` untimed steps, then ``--steps`` timed ones (stopping early after
``--max-seconds``, at a whole round); for (b) and (c) both are rounded up to whole rounds of
one batch per DataLoader worker, because each worker builds a whole batch, so batches arrive
in bursts. Goals on the GPU: b >= 0.9 a in every case; b >= 2 c in 2D and b >= 10 c in 3D.

    python scripts/bench_train.py --json bench_train.json                 # GPU, all cases
    python scripts/bench_train.py --cases unet3d --steps 30 --max-seconds 30
    python scripts/bench_train.py --small --workers 1 --threads 1         # CPU smoke test

``--max-seconds`` bounds every variant's timed part only: not the warm-up, the compilation
of each case's model (in the first step of its (a)), or a round already started (in 3D,
MONAI's rounds are one 4-volume batch per worker).

Output: one table row per case (images/s of a, b, c; b/a, b/c; goals), plus peak GPU memory
per variant on CUDA; ``--json`` writes every number (after each case, so a crash keeps the
cases done).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch._dynamo

ROOT = Path(__file__).resolve().parents[1]
try:
    import segunet  # noqa: F401
except ImportError:  # not installed: run from the checkout
    sys.path.insert(0, str(ROOT / "src"))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from torch.utils.data import DataLoader, Dataset, get_worker_info  # noqa: E402

from segunet.config.compose import config_dir  # noqa: E402
from segunet.data.datasets import crop_to_output  # noqa: E402
from segunet.train.trainer import Trainer, build_trainer  # noqa: E402

CASES = ("same512", "valid572", "unet3d")
VARIANTS = ("a", "b", "c")
# MONAI's elastic strengths, matched to segunet's (grid 3, sigma 10 px) by the RMS
# displacement each applies to a coordinate image: scripts/bench_data.py measures the 2D one
# (spacing 256, magnitude 8.8 at 512x512). In 3D, Rand3DElasticd smooths a dense random field
# with a Gaussian instead; no script here calibrates sigma 8 / magnitude 2200 against
# segunet's displacement, so the 3D (c) deforms at a strength not matched to segunet's.
# A smaller sigma is the cheaper setting for MONAI (a smaller Gaussian kernel).
MONAI_MAGNITUDE_2D = 8.8
MONAI_SIGMA_3D = 8.0
MONAI_MAGNITUDE_3D = 2200.0


@dataclass
class Case:
    name: str
    spatial_dims: int
    overrides: list[str]
    batch_size: int
    data: str  # what the data overrides point at, for the report
    goal_c: float  # b >= goal_c * c
    result: dict = field(default_factory=dict)


def data_roots(given: Path | None) -> list[Path]:
    """Where the real data sets are looked for: ``--data-root``, else ``shared/data`` inside
    the checkout (a copy made to travel with it) or beside it."""
    return [given] if given else [ROOT / "shared" / "data", ROOT.parent / "shared" / "data"]


def find_data(name: str, files: tuple[str, ...], extra: Path | None) -> Path | None:
    for root in data_roots(extra):
        if all((root / name / f).is_file() for f in files):
            return root / name
    return None


def make_case(name: str, args: argparse.Namespace) -> Case:
    """The Hydra overrides of one case (``--small``: tiny widths and patches for the CPU)."""
    small = args.small
    stack = ("train-volume.tif", "train-labels.tif")
    if name in ("same512", "valid572"):
        model = "unet_same" if name == "same512" else "unet"
        channels = "[8,16,32]" if small else "[64,128,256,512,1024]"
        patch = {"same512": 64 if small else 512, "valid572": 100 if small else 572}[name]
        isbi = find_data("isbi2012", stack, args.data_root)
        if isbi is not None:
            data = ["data=isbi2012", f"data.path='{isbi}'"]
            data += ["data.max_images=4"] if small else []  # 3 training slices
            source = str(isbi)
        else:
            shape = 128 if small else 512
            data = ["data=synthetic", f"data.shape=[{shape},{shape}]",
                    f"data.n_train={2 if small else 8}", "data.n_val=1"]
            source = f"synthetic {shape}x{shape} (ISBI 2012 not found)"
        overrides = [f"model={model}", f"model.channels={channels}",
                     f"data.patch_size=[{patch},{patch}]", *data]
        return Case(name, 2, overrides, args.batch_size or (2 if small else 8), source, 2.0)
    if name == "unet3d":
        channels = "[4,8,16]" if small else "[32,64,128,256]"
        patch = "[44,44,44]" if small else "[116,132,132]"
        lucchi = find_data("lucchi_pp", stack, args.data_root)
        if lucchi is not None:
            data = ["data=lucchi", f"data.path='{lucchi}'", "data.slices_as=3d"]
            source = f"{lucchi} as one volume"
        else:
            shape = "[48,64,64]" if small else "[64,160,160]"
            data = ["data=synthetic3d", f"data.shape={shape}", "data.n_train=2", "data.n_val=1"]
            source = f"synthetic3d {shape} (Lucchi++ not found)"
        overrides = ["model=unet3d", f"model.channels={channels}", "model.norm=batch",
                     f"data.patch_size={patch}", *data]
        return Case(name, 3, overrides, args.batch_size or (2 if small else 4), source, 10.0)
    raise SystemExit(f"unknown case {name!r}: choose from {', '.join(CASES)}")


def compose_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def case_config(case: Case, args: argparse.Namespace):
    """The composed config of one case, with the trainer's own settings from the arguments."""
    steps_b = args.warmup + args.steps
    overrides = [
        *case.overrides,
        "augment=default", "loss=weighted_ce", "optim=sgd", "scheduler=constant",
        f"trainer.batch_size={case.batch_size}", f"trainer.max_steps={steps_b}",
        f"trainer.num_workers={args.loader_workers}", f"trainer.device={args.device}",
        f"trainer.precision={args.precision}",
        f"trainer.channels_last={str(args.channels_last).lower()}",
        f"trainer.compile={args.compile}",
        "data.targets.cache_dir=null", "logging.tensorboard=false", "logging.progress=false",
    ]
    return compose_config(overrides)


# --------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    step: Callable[[], None],
    device: torch.device,
    batch_size: int,
    warmup: int,
    steps: int,
    max_seconds: float | None,
    multiple: int = 1,
) -> dict:
    """Run ``warmup`` untimed then up to ``steps`` timed calls of ``step`` (one batch each);
    after ``max_seconds`` it stops at the next multiple of ``multiple`` steps."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done, start = 0, time.perf_counter()
    while done < steps:
        step()
        done += 1
        if (max_seconds and done % multiple == 0
                and time.perf_counter() - start > max_seconds):
            break
    synchronize(device)
    seconds = time.perf_counter() - start
    out = {"warmup_steps": warmup, "steps": done, "seconds": seconds,
           "images_per_s": done * batch_size / seconds}
    if device.type == "cuda":
        out["peak_gpu_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def whole_rounds(warmup: int, steps: int, workers: int) -> tuple[int, int]:
    """Warm-up and timed steps rounded up to whole rounds of ``workers`` batches: each
    DataLoader worker builds a whole batch, so while the workers are the bottleneck batches
    arrive in bursts of one per worker; timing whole bursts measures their steady rate, and the
    (first) warm-up round also waits for the workers to start."""
    if workers < 1:
        return warmup, steps
    return workers * max(math.ceil(warmup / workers), 1), workers * math.ceil(steps / workers)


def synced_every(trainer: Trainer) -> Callable[[torch.Tensor], None]:
    """A host sync every ``logging.log_every`` steps, as ``Trainer.fit`` does for its scalars."""
    every, count = max(int(trainer.log_cfg.log_every), 1), [0]

    def after(loss: torch.Tensor) -> None:
        count[0] += 1
        if count[0] % every == 0:
            loss.item()

    return after


# ------------------------------------------------------------------------- variants
def resident_batch(trainer: Trainer, batch_size: int) -> dict[str, torch.Tensor]:
    """Random tensors at input/output size on the device, in the trainer's layout."""
    g = torch.Generator().manual_seed(0)
    data, dev = trainer.data, trainer.device
    image = torch.randn(batch_size, data.in_channels, *trainer.in_shape, generator=g)
    out = (batch_size, *trainer.out_shape)
    batch = {
        "image": image.to(dev).contiguous(memory_format=trainer.memory_format),
        "label": torch.randint(0, data.num_classes, out, generator=g).to(dev),
        "weight": (0.5 + torch.rand(out, generator=g)).to(dev),
        "ignore": torch.zeros(out, dtype=torch.bool).to(dev),
    }
    return batch


def bench_bare(trainer: Trainer, case: Case, args: argparse.Namespace) -> dict:
    batch = resident_batch(trainer, case.batch_size)

    def step() -> None:
        trainer.train_step(batch)

    step()  # the first step compiles (the trainer falls back to eager by itself)
    if case.result["compile"]["compiled"] and not trainer.compiling:
        case.result["compile"]["compiled"] = False
        case.result["compile"]["error"] = "the trainer fell back to eager (see its warning)"
    result = measure(step, trainer.device, case.batch_size, max(args.warmup - 1, 0),
                     args.steps, args.max_seconds)
    result["warmup_steps"] += 1  # the first, compiling step
    return result


def bench_segunet(trainer: Trainer, case: Case, args: argparse.Namespace) -> dict:
    workers = trainer.cfg.num_workers
    warmup, steps = whole_rounds(args.warmup, args.steps, workers)
    trainer.step = 0
    trainer.cfg.max_steps = warmup + steps  # the loader's sampler draws exactly these
    batches = [iter(trainer.loader())]
    after = synced_every(trainer)

    def step() -> None:
        batch = trainer.prepare(next(batches[0]))
        loss, _ = trainer.train_step(batch)  # counts trainer.step
        after(loss)

    try:
        result = measure(step, trainer.device, case.batch_size, warmup, steps,
                         args.max_seconds, multiple=max(workers, 1))
    finally:
        batches.clear()  # shuts the loader's workers down
    result["loader_workers"] = workers
    return result


class MonaiPatches(Dataset):
    """MONAI-style training samples from segunet's volumes: each item a random patch at the
    network input size, augmented by MONAI transforms on image, label, weight and ignore,
    targets centre-cropped to the output size. The volumes are mirror-padded once, up front,
    by at least the context margin, so RandSpatialCropd always fits (segunet mirrors per
    patch instead)."""

    def __init__(self, volumes, in_shape, out_shape, seed: int = 0, length: int = 2**40):
        from monai.data import set_track_meta

        set_track_meta(False)  # plain tensors: MONAI's fastest mode
        self.in_shape, self.out_shape, self.length = tuple(in_shape), tuple(out_shape), length
        self.arrays = []
        for v in volumes:
            pad = [max((i - o) // 2, math.ceil((i - n) / 2), 0)
                   for i, o, n in zip(in_shape, out_shape, v.spatial_shape)]
            width = [(0, 0)] + [(p, p) for p in pad]
            arrays = {"image": v.image.astype(np.float32), "label": v.label[None],
                      "weight": v.weight[None], "ignore": v.ignore[None]}
            self.arrays.append({
                k: torch.from_numpy(np.pad(a.astype(np.float32), width, mode="reflect"))
                for k, a in arrays.items()
            })
        sizes = np.array([np.prod(v.spatial_shape) for v in volumes], dtype=float)
        self.p = sizes / sizes.sum()
        self.rng = np.random.default_rng(seed)
        self.transform = monai_transform(self.in_shape, self.out_shape)
        self.transform.set_random_state(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k = int(self.rng.choice(len(self.arrays), p=self.p))
        out = self.transform(dict(self.arrays[k]))
        return {
            "image": torch.as_tensor(out["image"]).float().contiguous(),
            "label": torch.as_tensor(out["label"])[0].long(),
            "weight": torch.as_tensor(out["weight"])[0].float().contiguous(),
            "ignore": torch.as_tensor(out["ignore"])[0] > 0.5,
        }


def monai_transform(in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
    """The augmentation of segunet's ``augment=default`` in MONAI's transforms."""
    from monai.transforms import (
        CenterSpatialCropd,
        Compose,
        Rand2DElasticd,
        Rand3DElasticd,
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
    )

    keys = ["image", "label", "weight", "ignore"]
    modes = ["bilinear", "nearest", "bilinear", "nearest"]
    dims = len(in_shape)
    angle = math.radians(15.0)
    if dims == 2:
        elastic = Rand2DElasticd(
            keys, spacing=tuple(max((n - 1) // 2, 1) for n in in_shape),
            magnitude_range=(MONAI_MAGNITUDE_2D, MONAI_MAGNITUDE_2D), prob=1.0,
            rotate_range=(angle,), scale_range=(0.1, 0.1), mode=modes,
            padding_mode="reflection",
        )
    else:
        elastic = Rand3DElasticd(
            keys, sigma_range=(MONAI_SIGMA_3D, MONAI_SIGMA_3D),
            magnitude_range=(MONAI_MAGNITUDE_3D, MONAI_MAGNITUDE_3D), prob=1.0,
            rotate_range=(angle, 0.0, 0.0), scale_range=(0.1, 0.1, 0.1), mode=modes,
            padding_mode="reflection",
        )
    transforms = [RandSpatialCropd(keys, roi_size=in_shape, random_size=False), elastic]
    transforms += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(dims)]
    if in_shape[-1] == in_shape[-2]:  # uniform over 0..3 quarter turns, like segunet
        transforms.append(RandRotate90d(keys, prob=0.75, max_k=3,
                                        spatial_axes=(dims - 2, dims - 1)))
    transforms += [
        RandAdjustContrastd("image", prob=0.5, gamma=(0.7, 1.5)),
        RandScaleIntensityd("image", factors=0.2, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        RandGaussianSmoothd("image", sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0),
                            sigma_z=(0.25, 1.0), prob=0.5),
        RandGaussianNoised("image", prob=0.5, std=0.05),
        CenterSpatialCropd(["label", "weight", "ignore"], roi_size=out_shape),
    ]
    return Compose(transforms)


def seed_worker(worker_id: int) -> None:
    """Each worker its own MONAI and numpy random streams, MONAI in its plain-tensor mode."""
    from monai.data import set_track_meta

    set_track_meta(False)
    info = get_worker_info()
    seed = info.seed % 2**32
    info.dataset.transform.set_random_state(seed)
    info.dataset.rng = np.random.default_rng(seed)


def bench_monai(trainer: Trainer, case: Case, args: argparse.Namespace) -> dict:
    workers = args.workers
    dataset = MonaiPatches(trainer.data.train, trainer.in_shape, trainer.out_shape,
                           seed=trainer.cfg.seed)
    loader = DataLoader(
        dataset, batch_size=case.batch_size, num_workers=workers,
        pin_memory=trainer.device.type == "cuda", persistent_workers=workers > 0,
        worker_init_fn=seed_worker if workers > 0 else None, drop_last=True,
    )
    batches = [iter(loader)]
    after = synced_every(trainer)

    def step() -> None:
        batch = crop_to_output(trainer.to_device(next(batches[0])), trainer.out_shape)
        loss, _ = trainer.train_step(batch)
        after(loss)

    warmup, steps = whole_rounds(args.warmup, args.steps, workers)
    try:
        result = measure(step, trainer.device, case.batch_size, warmup, steps,
                         args.max_seconds, multiple=max(workers, 1))
    finally:
        batches.clear()  # with the loader below, shuts the workers down
        del loader
    result["workers"] = workers
    return result


BENCHES = {"a": bench_bare, "b": bench_segunet, "c": bench_monai}


# --------------------------------------------------------------------------- driver
def run_case(case: Case, args: argparse.Namespace) -> dict:
    res = case.result
    res.update({"case": case.name, "data": case.data, "batch_size": case.batch_size,
                "overrides": case.overrides})
    cfg = case_config(case, args)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(cfg, Path(run_dir))
        res.update({
            "model": cfg.model._target_.split(".")[-1],
            "channels": list(cfg.model.channels), "padding": cfg.model.padding,
            "in_shape": list(trainer.in_shape), "out_shape": list(trainer.out_shape),
            "train_volumes": len(trainer.data.train),
            "device": str(trainer.device),
            "precision": str(trainer.amp_dtype or torch.float32).replace("torch.", ""),
            "memory_format": str(trainer.memory_format).replace("torch.", ""),
        })
        res["compile"] = {"setting": args.compile, "compiled": trainer.compiling}
        print(f"\n{case.name}: {res['model']} {res['channels']} {res['padding']}, "
              f"{'x'.join(map(str, trainer.in_shape))} -> "
              f"{'x'.join(map(str, trainer.out_shape))}, batch {case.batch_size}, "
              f"{res['precision']}, {res['memory_format']}, compiled "
              f"{res['compile']['compiled']}; data: {case.data} "
              f"({res['train_volumes']} training volumes)", flush=True)
        for variant in args.variants:
            started = time.perf_counter()
            try:
                res[variant] = BENCHES[variant](trainer, case, args)
            except Exception as e:  # noqa: BLE001 - report it, go on with the others
                res[variant] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                traceback.print_exc()
                if trainer.device.type == "cuda":
                    torch.cuda.empty_cache()
            r = res[variant]
            wall = time.perf_counter() - started
            r["wall_s"] = wall
            shown = (f"{r['images_per_s']:.1f} img/s over {r['steps']} steps "
                     f"({r['seconds']:.1f} s)" if "images_per_s" in r else r["error"])
            memory = f", peak {r['peak_gpu_GiB']:.1f} GiB" if "peak_gpu_GiB" in r else ""
            print(f"  ({variant}) {shown}{memory}; {wall:.0f} s with warm-up", flush=True)
        del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # the next case's model starts with fresh compile caches

    rate = {v: res.get(v, {}).get("images_per_s") for v in VARIANTS}
    res["b_over_a"] = rate["b"] / rate["a"] if rate["a"] and rate["b"] else None
    res["b_over_c"] = rate["b"] / rate["c"] if rate["c"] and rate["b"] else None
    res["goal"] = {
        "b>=0.9a": None if res["b_over_a"] is None else res["b_over_a"] >= 0.9,
        f"b>={case.goal_c:g}c": None if res["b_over_c"] is None else
        res["b_over_c"] >= case.goal_c,
    }
    return res


def fmt(x: float | None, spec: str) -> str:
    """``format(x, spec)``, or a dash as wide for a missing number."""
    return format("-", f">{spec.split('.')[0]}") if x is None else format(x, spec)


def print_table(results: list[dict], header: dict) -> None:
    shm = header.get("shm_free_GiB")
    print(f"\n{header['device']}, torch {header['torch']}, monai {header.get('monai')}; "
          f"c: {header['workers']} MONAI workers, b: {header['loader_workers']} loader workers, "
          f"{header['cpus']} CPUs" + (f", /dev/shm {shm:.0f} GiB free" if shm is not None else "")
          + f"; {header.get('total_s', 0):.0f} s in all")
    print(f"{'case':9} {'in -> out':24} {'batch':>5} {'a img/s':>8} {'b img/s':>8} "
          f"{'c img/s':>8} {'b/a':>5} {'b/c':>6}  {'precision':9} {'compiled':8} goals")
    for r in results:
        shapes = ("x".join(map(str, r.get("in_shape", []))) + " -> "
                  + "x".join(map(str, r.get("out_shape", []))))
        rate = {v: r.get(v, {}).get("images_per_s") for v in VARIANTS}
        goals = ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in r["goal"].items()
                          if ok is not None) or "-"
        compiled = r.get("compile", {}).get("compiled")
        print(f"{r['case']:9} {shapes:24} {r['batch_size']:>5} {fmt(rate['a'], '8.1f')} "
              f"{fmt(rate['b'], '8.1f')} {fmt(rate['c'], '8.1f')} {fmt(r['b_over_a'], '5.2f')} "
              f"{fmt(r['b_over_c'], '6.2f')}  {r.get('precision', '-'):9} {str(compiled):8} "
              f"{goals}")
        memory = [f"{v} {r[v]['peak_gpu_GiB']:.1f}" for v in VARIANTS
                  if "peak_gpu_GiB" in r.get(v, {})]
        if memory:
            print(f"{'':9} peak GPU GiB: {', '.join(memory)}")
        if "error" in r:
            print(f"{'':9} failed: {r['error'].splitlines()[0][:200]}")
        for v in VARIANTS:
            if "error" in r.get(v, {}):
                print(f"{'':9} ({v}) failed: {r[v]['error'].splitlines()[0][:200]}")


def shm_free_gib() -> float | None:
    """Free space of /dev/shm, through which DataLoader workers hand their batches over."""
    try:
        return shutil.disk_usage("/dev/shm").free / 2**30
    except OSError:
        return None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of "
                   + ", ".join(CASES))
    p.add_argument("--variants", default="a,b,c", help="comma-separated subset of a,b,c")
    # None: unset, so --small can pick its own count without overriding an explicit one.
    p.add_argument("--steps", type=int, help="timed steps per variant (default 50; --small: 3)")
    p.add_argument("--warmup", type=int,
                   help="untimed steps before each variant (each case's (a) compiles in its "
                   "first; default 5; --small: 1)")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="stop a variant's timed steps after this long (0: run all --steps)")
    p.add_argument("--workers", type=int, default=max(cpu_count() - 1, 0),
                   help="DataLoader workers of the MONAI pipeline (c) (default: CPUs - 1)")
    p.add_argument("--loader-workers", type=int, default=4 if cuda else 0,
                   help="trainer.num_workers of segunet's loader (b), which only cuts patches")
    p.add_argument("--batch-size", type=int, help="override every case's batch size")
    p.add_argument("--device", default="auto", help="trainer.device: auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", help="trainer.precision")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="trainer.channels_last (CUDA only)")
    p.add_argument("--compile", choices=["auto", "true", "false"], default="auto",
                   help="trainer.compile (auto: on CUDA)")
    p.add_argument("--threads", type=int,
                   help="torch.set_num_threads of the main process (default: torch's)")
    p.add_argument("--small", action="store_true",
                   help="tiny widths, patches and batches (CPU smoke test)")
    p.add_argument("--data-root", type=Path,
                   help="folder holding isbi2012/ and lucchi_pp/ (default: shared/data in or "
                   "beside the checkout); a folder without them gives synthetic data")
    p.add_argument("--json", type=Path, help="write all numbers here")
    args = p.parse_args(argv)
    defaults = {"steps": 3, "warmup": 1} if args.small else {"steps": 50, "warmup": 5}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if bad := [v for v in args.variants if v not in VARIANTS]:
        p.error(f"unknown variants {bad}: choose from a, b, c")
    if args.steps < 1 or args.warmup < 0 or args.workers < 0 or args.loader_workers < 0:
        p.error("--steps must be >= 1; --warmup, --workers, --loader-workers >= 0")
    args.max_seconds = args.max_seconds or None
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    cases = [make_case(name, args) for name in args.cases]
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    started = time.perf_counter()
    header = {
        "device": (torch.cuda.get_device_name() if cuda
                   else f"CPU ({platform.processor() or platform.machine()})"),
        "torch": torch.__version__, "python": platform.python_version(), "cpus": cpu_count(),
        "workers": args.workers, "loader_workers": args.loader_workers,
        "shm_free_GiB": shm_free_gib(),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        import monai

        header["monai"] = monai.__version__
    except ImportError:
        header["monai"] = None
        print("monai is not installed: variant (c) will fail", file=sys.stderr)
    results = []
    for case in cases:
        try:
            results.append(run_case(case, args))
        except Exception as e:  # noqa: BLE001 - the next case may still run
            traceback.print_exc()
            case.result.update({"case": case.name, "batch_size": case.batch_size,
                                "error": f"{type(e).__name__}: {e}"[:2000],
                                "b_over_a": None, "b_over_c": None, "goal": {}})
            results.append(case.result)
        header["total_s"] = time.perf_counter() - started
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**header, "cases": results}, indent=2) + "\n")
    print_table(results, header)
    if args.json:
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
