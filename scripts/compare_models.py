"""Train every U-Net variant with the same data, budget and seed; compare them on DSB 2018.

Each model trains ``--steps`` optimiser steps on the same fixed train/val split of
``../shared/data/dsb2018/train`` (segunet's ``dsb2018`` preset: border weight maps, weighted
cross-entropy, GPU elastic augmentation), validates on the whole held-out images with the
tiled predictor, and is scored as the Data Science Bowl scored it: instance AP at IoU 0.5 and
its mean over 0.5:0.05:0.95 (connected components of the predicted foreground). Writes the
table as Markdown (and JSON).

    python scripts/compare_models.py                               # GPU: default widths
    python scripts/compare_models.py --small --steps 20 --max-images 12   # CPU smoke test

Same-padded models train on ``--patch`` tiles; the valid U-Net gets the smallest valid input
whose *output* is at least ``--patch``, so every model is supervised on as many pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODELS = ("unet", "unet_same", "attention_unet", "unetpp", "unet3plus", "resunet")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018" / "train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated config names")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DSB 2018 train folder")
    p.add_argument("--max-images", type=int, default=None, help="first N images by name")
    p.add_argument("--steps", type=int, default=1500, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch", type=int, default=256, help="output tile edge")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes for the weight maps and the loader")
    p.add_argument("--device", default="auto")
    p.add_argument("--small", action="store_true", help="channels [8,16,32,64] (CPU smoke)")
    p.add_argument("--markdown", type=Path, default=Path("compare_models.md"))
    p.add_argument("--json", type=Path)
    p.add_argument("--override", action="append", default=[], help="extra Hydra override")
    return p.parse_args(argv)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from segunet.config.compose import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def patch_for(model_name: str, base: list[str], patch: int) -> list[int]:
    """The input tile: ``patch`` for same padding, else the smallest valid input whose output
    covers ``patch`` (valid convs eat a margin)."""
    from hydra.utils import instantiate

    model = instantiate(compose([f"model={model_name}", *base]).model)
    if getattr(model, "padding", "same") == "same":
        return [patch, patch]
    size = patch
    while True:
        try:
            if model.output_shape([size, size])[0] >= patch:
                return [size, size]
        except ValueError:
            pass
        size += 1


def ground_truth(data) -> dict[str, Path]:
    """The instance label file of each image, paired by the reader that built the data."""
    from segunet.data.sources import pair_files

    root = Path(data.path)
    pairs = pair_files(root / data.images, root / data.labels, data.image_glob, data.label_suffix)
    return {image.stem: labels for image, labels in pairs}


def score(trainer, data) -> dict[str, float]:
    """Instance AP over the validation images, against their instance labels."""
    from segunet.data.io import read_array
    from segunet.data.labels import label_image
    from segunet.eval.metrics import instance_scores
    from segunet.infer.predict import predict_tiled
    from segunet.postprocess.instances import instances_from_probabilities

    labels = ground_truth(data)
    ap50, map_ = [], []
    for volume in trainer.data.val:
        probs = predict_tiled(
            trainer.model, volume.image, tile_shape=trainer.in_shape,
            batch_size=trainer.cfg.batch_size, device=trainer.device,
        )
        path = labels[volume.name]
        gt = label_image(read_array(path), data.spatial_dims, str(path))
        scores = instance_scores(instances_from_probabilities(probs), gt)
        ap50.append(scores["ap50"])
        map_.append(scores["mean_ap"])
    return {"ap50": float(np.mean(ap50)), "map": float(np.mean(map_))}


def train_one(name: str, args: argparse.Namespace, base: list[str], run_dir: Path) -> dict:
    from segunet.train.trainer import build_trainer

    patch = patch_for(name, base, args.patch)
    cfg = compose([
        f"model={name}", *base, f"data.patch_size=[{patch[0]},{patch[1]}]",
        f"trainer.max_steps={args.steps}", f"trainer.val_every={args.steps}",
    ])
    trainer = build_trainer(cfg, run_dir)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

    # Throughput over the steps after the first 10% (compilation and cuDNN autotuning are
    # warm-up), up to validation, which is not training time.
    marks: dict[str, float] = {}
    warm = max(1, args.steps // 10)
    step_fn, validate_fn = trainer.train_step, trainer.validate

    def timed_step(batch):
        out = step_fn(batch)
        if trainer.step == warm:  # train_step has counted this step
            sync()
            marks["start"] = time.perf_counter()
        return out

    def timed_validate():
        sync()
        marks.setdefault("end", time.perf_counter())
        return validate_fn()

    trainer.train_step, trainer.validate = timed_step, timed_validate
    t0 = time.perf_counter()
    final = trainer.fit()
    wall = time.perf_counter() - t0
    timed_steps = args.steps - warm
    images_per_s = timed_steps * args.batch_size / (marks["end"] - marks["start"])
    scores = score(trainer, cfg.data)
    return {
        "model": name, "params": n_params, "patch": patch, "images_per_s": images_per_s,
        "wall_s": wall, "dice": final["val/dice"], **scores,
    }


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header, "",
        "| model | parameters | input tile | train images/s | val Dice | AP@0.5 | mean AP |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['patch'][0]}x{r['patch'][1]} | "
            f"{r['images_per_s']:.0f} | {r['dice']:.3f} | {r['ap50']:.3f} | {r['map']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data / "images").is_dir():
        print(f"compare_models: {args.data}/images not found: pass --data <dsb2018/train>",
              file=sys.stderr)
        return 2
    base = [
        "data=dsb2018", f"data.path={args.data}", "optim=adam", f"optim.lr={args.lr}",
        "scheduler=cosine", f"trainer.batch_size={args.batch_size}", f"trainer.seed={args.seed}",
        f"trainer.device={args.device}", f"data.targets.workers={args.workers}",
        f"trainer.num_workers={min(args.workers, 4)}",
        "logging.tensorboard=false", "logging.progress=false",
    ]
    if args.max_images:
        base.append(f"data.max_images={args.max_images}")
    if args.small:
        base.append("model.channels=[8,16,32,64]")
    base += args.override
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            row = train_one(name, args, base, Path(tmp) / name)
            rows.append(row)
            print(f"{name}: {json.dumps(row)}", file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    extra = "".join(f", {o}" for o in base if o.startswith("model.") or o in args.override)
    header = (
        f"DSB 2018 ({args.data.name}, max_images={args.max_images}), {args.steps} steps x "
        f"batch {args.batch_size}, output tiles {args.patch}x{args.patch}, Adam lr {args.lr} "
        f"cosine, seed {args.seed}{extra}; {device}, torch {torch.__version__}"
    )
    text = markdown(rows, header)
    print(text)
    args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
