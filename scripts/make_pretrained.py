"""Make a model that ships with segunet from a training run: its best checkpoint stripped to
what prediction, export and fine-tuning read (weights, config, tuned post-processing, pixel
size, validation scores), written into ``src/segunet/pretrained/``.

The shipped ``nuclei`` model is the ``boundary`` run of the equal-wall-clock DSB bench
(``experiment=dsb2018_cpu`` for 4000 steps, about 14 minutes on 2 CPU cores, trained on the
trainval part of ``scripts/quality_data.py``'s split, whose 60 test images were never trained
or tuned on), so that bench's row is this file's held-out score::

    python scripts/bench_quality.py --dataset dsb2018 --preset cpu --budget time --steps 4000 \
        --methods monai,monai_tuned,boundary --workdir outputs/bq
    python scripts/make_pretrained.py --run outputs/bq/boundary --name nuclei

Checkpoints record the typical size of their training objects (``object_size``, what
``segunet predict scale=auto`` scales inputs to). The shipped ``nuclei`` model predates that,
so its entry was measured from the label files it was trained on, the grey DSB images less
the 60 held out (``quality_data.dsb_test_names`` over the grey names)::

    python scripts/make_pretrained.py --run src/segunet/pretrained/nuclei.pt --name nuclei \
        --labels '<folder of those masks>/*.tif'

Optimiser, scheduler and RNG states are left out (a fine-tune starts them anew), which keeps
the file a third of a checkpoint's size.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import torch

from segunet.checkpoint import load_checkpoint, resolve_checkpoint, save_atomic
from segunet.data.io import read_array
from segunet.data.objectsize import object_size_record, typical_diameters
from segunet.train.run_folder import recorded_overrides

KEEP = ("model", "config", "postprocess", "pixel_size", "object_size", "metrics",
        "best_metric", "step")
TARGET = Path(__file__).resolve().parents[1] / "src" / "segunet" / "pretrained"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder (its best.pt) or a checkpoint")
    p.add_argument("--name", required=True, help="the shipped model's name, e.g. nuclei")
    p.add_argument("--labels", help="a glob of the training label files, to measure the "
                   "object size of a checkpoint that records none")
    args = p.parse_args()
    file = resolve_checkpoint(args.run, prefer="best")
    ckpt = load_checkpoint(file)
    if not ckpt.get("postprocess"):
        raise SystemExit(f"{file} has no tuned post-processing: run segunet tune on it first")
    shipped = {k: ckpt[k] for k in KEEP if k in ckpt}
    # The training command, which the bioimage.io README of the shipped model shows.
    shipped["source"] = ckpt.get("source") or {"overrides": recorded_overrides(file) or []}
    if args.labels:
        files = sorted(glob.glob(args.labels))
        if not files:
            raise SystemExit(f"--labels {args.labels} matches no file")
        quartiles = typical_diameters(read_array(f) for f in files)
        shipped["object_size"] = object_size_record(quartiles)
        print(f"object size: {shipped['object_size']}, measured over {len(files)} label files")
    out = TARGET / f"{args.name}.pt"
    save_atomic(shipped, out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) from {file} "
          f"(step {ckpt.get('step')}, {ckpt['postprocess']['metric']} "
          f"{ckpt['postprocess']['score']:.4f} on its validation images)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
