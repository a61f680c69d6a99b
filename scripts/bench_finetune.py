"""Fine-tuning ``model=nuclei`` on a few images of a user's: what the learning rate does.

    python scripts/bench_finetune.py --images 3 --steps 20 --scales 1,0.1

The user's images are the first ``--images`` of the 60 grey DSB images held out when the
nuclei model was trained (``bench_scale_auto.held_out``), the test images the next
``--test``: neither was trained or tuned on by the model. With ``--colour``, DSB's colour
images instead (brightfield and H&E), a modality the model never saw. Each ``--scales`` value trains
``segunet train experiment=dsb2018_cpu data.path=<those images> trainer.init_from=nuclei
trainer.finetune_lr_scale=<scale>`` for ``--steps`` steps, as a user would, then predicts
the test images with the run (its best.pt and tuned decoding) and scores mean AP .5:.95 with
``bench_quality.py``'s code; the nuclei model as shipped is the first row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality  # noqa: E402
import bench_scale_auto  # noqa: E402
import quality_data  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--test", type=int, default=20)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scales", default="1,0.1")
    p.add_argument("--colour", action="store_true",
                   help="DSB's colour images (brightfield, H&E), which nuclei never saw")
    p.add_argument("--shared", type=Path, default=quality_data.SHARED)
    args = p.parse_args(argv)
    import tifffile

    held = bench_scale_auto.held_out(args.shared, args.images + args.test, args.colour)
    mine, test = held[:args.images], held[args.images:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("images", "masks", "test"):
            (root / sub).mkdir()
        for name, image, labels in mine:
            tifffile.imwrite(root / "images" / f"{name}.tif", image)
            tifffile.imwrite(root / "masks" / f"{name}.tif", labels)
        for name, image, _ in test:
            tifffile.imwrite(root / "test" / f"{name}.tif", image)
        runs: list[tuple[str, list[str]]] = [("shipped", ["model=nuclei"])]
        for scale in args.scales.split(","):
            run = root / f"run_{scale}"
            command = [sys.executable, "-m", "segunet.cli", "train", "experiment=dsb2018_cpu",
                       f"data.path={root}", "data.image_glob=*.tif",
                       "trainer.init_from=nuclei", f"trainer.finetune_lr_scale={scale}",
                       f"trainer.max_steps={args.steps}", f"trainer.val_every={args.steps}",
                       f"hydra.run.dir={run}"]
            subprocess.run(command, check=True, env=bench_quality.segunet_env(),
                           stdout=subprocess.DEVNULL)
            runs.append((f"lr x {scale}", [f"checkpoint={run}"]))
        for label, source in runs:
            out = root / f"pred_{len(rows)}"
            subprocess.run([sys.executable, "-m", "segunet.cli", "predict", *source,
                            f"input={root / 'test'}", f"output={out}", "outputs=instances"],
                           check=True, env=bench_quality.segunet_env(),
                           stderr=subprocess.DEVNULL)
            scores = [bench_quality.image_scores(
                "ap", tifffile.imread(out / f"{name}_instances.tif"), labels)["mean_ap"]
                for name, _, labels in test]
            rows.append({"model": label, "mean_ap": float(np.mean(scores))})
            print(json.dumps(rows[-1]), flush=True)
    print(f"{args.images} {'colour' if args.colour else 'grey'} images, {args.steps} steps, "
          f"{len(test)} test images")
    print("| model | mean AP .5:.95 |\n|---|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['mean_ap']:.3f} |")
    return rows


if __name__ == "__main__":
    main()
