"""Segmentation quality on held-out data: segunet's recipes against a plain MONAI baseline,
at the same training budget, scored on a test part that no method trains or tunes on.

    python scripts/bench_quality.py --dataset dsb2018 --preset cpu --out dsb_cpu.json
    python scripts/bench_quality.py --dataset isbi2012 --preset gpu
    python scripts/bench_quality.py --dataset dsb2018 --preset tiny --workdir /tmp/bq   # smoke

Data: ``../shared/data`` split by ``scripts/quality_data.py`` (DSB 2018: 60 test images;
ISBI 2012: the last 5 slices; Lucchi++: the last 8 slices of the crop). The rest
(*trainval*) is what every method sees; segunet's data source keeps its validation share of
it (checkpoint selection, the post-processing search), and the MONAI baseline trains on the
same training images and tunes on the same validation images: both shares come from the very
data source ``segunet train`` builds, composed through Hydra with the same overrides.

Methods (``--methods``, default all):

- ``monai``: what a MONAI user writes: ``BasicUNet`` (MONAI's defaults, 2 output channels),
  ``DiceCELoss(to_onehot_y=True, softmax=True)`` on the foreground mask (label > 0), Adam
  1e-3, dictionary transforms (random crop of segunet's patch size rounded to a multiple of
  16, random flips and quarter turns), images normalised as segunet's (percentiles 1/99.8,
  by segunet's data source); ``sliding_window_inference`` (overlap 0.25, MONAI's default
  constant blending); argmax, then ``scipy.ndimage.label`` (face connectivity).
- ``monai_tuned``: the same network; its foreground probabilities decoded with the settings
  that segunet's post-processing search (``segunet.postprocess.tune.tune_on``, target
  ``foreground``, gap growth included) chose on the validation images.
- ``foreground``, ``foreground_grow``: ``segunet train`` with ``data.target=foreground``; one
  run, decoded with the search restricted to ``grow=0`` (rerun here on the validation
  images) and with the run's own search (gap growth allowed: what ``segunet train`` stores).
- ``boundary``: ``segunet train`` with ``data.target=boundary`` and its own search.

segunet's recipes are ``experiment=<dataset>_cpu`` (``--preset cpu`` and ``tiny``) or
``experiment=<dataset>`` (``gpu``) plus the method's overrides and ``data.metric`` of the
dataset, trained by the real command line in a subprocess, so the bench measures what a user
gets; ``--preset tiny`` shrinks the CPU recipe to a smoke test (3-level net of 4-16 channels,
a few steps, 6 trainval images (20 slices in 3D) and 4 test images, a tiny BasicUNet). A
segunet run is used as ``segunet predict checkpoint=<run>`` uses it: its ``best.pt`` (the
validation score's best; ``--checkpoint last`` for its final weights, the MONAI baseline's
protocol: a plain loop selects nothing), decoded with that checkpoint's tuned settings; test
images are predicted with ``segunet.infer.predict.predict_tiled`` (test-time augmentation where
the search chose it).

Budget (``--budget``): ``steps``, the default: every method trains the same number of steps
at the same batch size (the recipe's ``trainer.max_steps`` and ``trainer.batch_size``;
``--preset cpu`` caps the steps so that the whole bench takes about 30 minutes on 2 cores;
``--steps`` sets them); each training's wall-clock is reported, not capped. ``time``: the
recipes train their own steps, and the MONAI loop trains for as long as the default recipe's
``segunet train`` took (the question a user asks: what do the same minutes buy?).

``train s`` is, for segunet, the whole ``segunet train`` process (data preparation with
weight maps, training, its periodic validation and the post-processing search at the end);
for MONAI the training loop alone (its data come ready from segunet's source; it neither
validates nor searches during training). ``tune s`` is a search run here (``monai_tuned``,
``foreground``).

Scores on the test part: DSB 2018 AP@0.5 and mean AP over IoU 0.5:0.95 (the DSB definition,
mean of per-image scores); ISBI 2012 V_Rand and V_Info (the challenge's foreground-restricted
definitions) and the Rand error, means over test slices; Lucchi++ foreground IoU and Dice
pooled over the test voxels; all from :mod:`segunet.eval.metrics`. ``lucchi3d`` is Lucchi++ as one
volume: ``experiment=lucchi3d[_cpu]`` and a 3D BasicUNet.

Output: a table (one row per method: test scores, steps, wall-clock, post-processing), the
ratio of the default recipe's headline score (the target the experiment config trains) to
the plain MONAI baseline's, and ``--out`` JSON with every number, per-image scores, the
split, the preset, the exact overrides, the hardware and versions. Each method's decoded test
predictions are kept in ``<workdir>/predictions/<method>/<name>.tif``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # quality_data beside this script
try:
    import segunet  # noqa: F401
except ImportError:  # not installed: run from the checkout
    sys.path.insert(0, str(ROOT / "src"))

import quality_data  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from segunet.atomic import write_atomic  # noqa: E402
from segunet.config.compose import config_dir, instantiate_group  # noqa: E402
from segunet.data.datasets import SegmentationData, Volume  # noqa: E402
from segunet.postprocess.decoding import PostProcess, decode  # noqa: E402
from segunet.postprocess.tune import TuneConfig, tune_on  # noqa: E402

METHODS = ("monai", "monai_tuned", "foreground", "foreground_grow", "boundary")
#: The training run each method decodes: two methods share a run.
RUN_OF = {"monai": "monai", "monai_tuned": "monai", "foreground": "foreground",
          "foreground_grow": "foreground", "boundary": "boundary"}
#: What turns the experiment config into each segunet recipe.
RECIPES = {
    "foreground": ["data.target=foreground", "model.out_channels=2"],
    "boundary": ["data.target=boundary", "model.out_channels=3"],
}
PRESETS = ("cpu", "gpu", "tiny")
#: Steps of every method with --preset cpu (at most the experiment's own). Measured on DSB
#: 2018 at 800 steps: MONAI's BasicUNet trained at 2.6 steps/s on 2 cores with 192 px
#: patches, segunet's CPU net at about 15, and the whole bench took 553 s; at 1200 steps with
#: 252/256 px patches it is about 30 minutes (the bench prints its total time).
CPU_STEPS = {"dsb2018": 1200, "isbi2012": 1200, "lucchi": 1200, "lucchi3d": 300}
TINY_STEPS = 30
TINY_TEST_IMAGES = 4
TINY_FEATURES = (4, 4, 8, 16, 32, 4)  # BasicUNet's features for the smoke test
LABELS = {"ap50": "AP@0.5", "mean_ap": "mAP.5:.95", "vrand": "V_Rand", "vinfo": "V_Info",
          "rand_error": "Rand err", "iou": "IoU", "dice": "Dice"}


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    split: str  # quality_data's name of the split
    dims: int
    metric: str  # data.metric: what every search tunes for
    scores: tuple[str, ...]  # test scores reported; the first is the headline


DATASETS = {
    "dsb2018": Dataset("dsb2018", "dsb2018", 2, "ap", ("mean_ap", "ap50")),
    "isbi2012": Dataset("isbi2012", "isbi2012", 2, "vrand", ("vrand", "vinfo", "rand_error")),
    "lucchi": Dataset("lucchi", "lucchi", 2, "iou", ("iou", "dice")),
    "lucchi3d": Dataset("lucchi3d", "lucchi", 3, "iou", ("iou", "dice")),
}


def feature_counts(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give comma-separated integers, e.g. 16,16,32,64,128,16") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--preset", default="cpu", choices=PRESETS)
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--out", type=Path, help="JSON results file (default <workdir>/results.json)")
    p.add_argument("--workdir", type=Path,
                   help="split, runs and predictions (default outputs/bench_quality/"
                        "<dataset>_<preset>); its earlier runs are replaced")
    p.add_argument("--budget", default="steps", choices=("steps", "time"),
                   help="steps: every method trains the same steps (default); time: the "
                        "MONAI loop trains for the seconds the default recipe's segunet "
                        "train took, and the recipe keeps its own steps")
    p.add_argument("--steps", type=int, help="training steps of every method (with --budget "
                                             "time: of segunet's recipes)")
    p.add_argument("--test-images", type=int,
                   help="score only the first N test images / slices (tiny: 4)")
    p.add_argument("--experiment", help="experiment config (default <dataset>[_cpu]), or a "
                                        "file (a plan of segunet plan)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override for every recipe (repeatable)")
    p.add_argument("--monai-features", type=feature_counts,
                   help="BasicUNet's six feature counts, e.g. 16,16,32,64,128,16 (segunet's "
                        "CPU width; default MONAI's own, 32,32,64,128,256,32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"),
                   help="which checkpoint of a segunet run is scored (default best, as "
                        "segunet predict)")
    p.add_argument("--shared", type=Path, default=quality_data.SHARED,
                   help=f"the shared data folder (default {quality_data.SHARED})")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown}; use {', '.join(METHODS)}")
    if args.monai_features is not None and len(args.monai_features) != 6:
        p.error(f"--monai-features: BasicUNet takes 6 feature counts, got "
                f"{len(args.monai_features)}")
    if args.workdir is None:
        args.workdir = Path("outputs") / "bench_quality" / f"{args.dataset}_{args.preset}"
    if args.out is None:
        args.out = args.workdir / "results.json"
    if args.test_images is None and args.preset == "tiny":
        args.test_images = TINY_TEST_IMAGES
    return args


# --- recipes ---------------------------------------------------------------------------------


def compose(overrides: Sequence[str]) -> Any:
    """The training config ``segunet train <overrides>`` builds (``experiment=<file>``
    staged as ``segunet train`` stages it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from segunet.cli.experiment import staged

    overrides = list(overrides)
    if any(o.startswith("experiment=") and is_file(o.partition("=")[2]) for o in overrides):
        _, folder, *overrides = staged(overrides)
        overrides.append(f"hydra.searchpath=[file://{folder}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def is_file(experiment: str) -> bool:
    """Whether an experiment is given as a file (a plan) rather than by a config's name."""
    return experiment.endswith((".yaml", ".yml")) or "/" in experiment


def tiny_overrides(dims: int, steps: int) -> list[str]:
    """The CPU recipe shrunk to a smoke test: a 3-level net of 4-16 channels, 6 images."""
    patch = "[100,100]" if dims == 2 else "[44,44,44]"
    return ["model.channels=[4,8,16]", f"data.patch_size={patch}", "trainer.batch_size=2",
            f"trainer.max_steps={steps}", f"trainer.val_every={steps}",
            f"data.max_images={6 if dims == 2 else 20}"]


def base_overrides(args: argparse.Namespace, spec: Dataset, experiment: str,
                   trainval: Path) -> list[str]:
    """What every segunet recipe of this bench shares: the experiment, the data, the metric
    searched for, the preset's size and the budget (``--steps``; the cpu preset's cap)."""
    common = [f"experiment={experiment}", f"data.path='{trainval}'",
              f"data.metric={spec.metric}",
              f"data.targets.cache_dir='{args.workdir / 'cache'}'"]
    if args.device != "auto":
        common.append(f"trainer.device={args.device}")
    if args.preset == "tiny":
        return common + tiny_overrides(spec.dims, args.steps or TINY_STEPS) + args.override
    steps = args.steps
    if steps is None and args.preset == "cpu" and args.budget == "steps":
        own = int(compose(common + args.override).trainer.max_steps)
        steps = min(own, CPU_STEPS[spec.name])
    return common + ([f"trainer.max_steps={steps}"] if steps else []) + args.override


def check_experiment(name: str) -> None:
    if is_file(name):
        if not Path(name).is_file():
            raise SystemExit(f"bench_quality: --experiment {name}: no such file")
        return
    file = config_dir() / "experiment" / f"{name}.yaml"
    if not file.is_file():
        have = sorted(p.stem for p in file.parent.glob("*.yaml"))
        raise SystemExit(
            f"bench_quality: {file} not found: no recipe for this dataset and preset yet "
            f"(have {', '.join(have)}); pass --experiment NAME, with --override data=<name> "
            "if it trains other data"
        )


def segunet_env() -> dict[str, str]:
    """The environment of ``segunet train``: this process's segunet first on the path."""
    src = str(Path(segunet.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return os.environ | {"PYTHONPATH": src + (os.pathsep + path if path else "")}


def train_segunet(overrides: Sequence[str], run_dir: Path) -> float:
    """Run ``segunet train`` into ``run_dir`` (replacing an earlier run); its wall-clock."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "segunet.cli", "train", *overrides,
               f"hydra.run.dir='{run_dir}'"]
    print("bench_quality: segunet train " + " ".join(command[4:]), file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, env=segunet_env(), check=False)
    if done.returncode:
        raise SystemExit(f"bench_quality: segunet train failed (exit {done.returncode}); "
                         "its message is above")
    return time.perf_counter() - start


# --- test data -------------------------------------------------------------------------------


@dataclasses.dataclass
class HeldOut:
    name: str
    image: np.ndarray  # (C, *spatial), normalised as the data source normalises
    truth: np.ndarray  # ground-truth objects, ignored pixels 0
    valid: np.ndarray  # labelled pixels


def load_test(test_dir: Path, data_cfg: dict, dims: int, limit: int | None) -> list[HeldOut]:
    """The test part as the recipe's data source would read it (``data_cfg``: its resolved
    config): the same normalisation and the same objects, without training targets."""
    from segunet.data import labels as labelling
    from segunet.data import normalize, sources
    from segunet.data.io import read_array

    c = data_cfg

    def objects(labels: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
        t = c["targets"]
        inst, ignore = labelling.instances_from_labels(
            labels, t["label_kind"], t["foreground_value"], t["ignore_value"], source,
            t["connectivity"])
        return np.where(ignore, 0, inst), ~ignore

    images = []
    if c["_target_"].endswith(".folder"):
        pairs = sources.pair_files(test_dir / c["images"], test_dir / c["labels"],
                                   c["image_glob"], c["label_suffix"])
        for image_file, label_file in pairs[:limit]:
            labels = labelling.label_image(read_array(label_file), c["spatial_dims"],
                                           str(label_file))
            image = normalize.image_channels_first(read_array(image_file), labels.shape,
                                                   str(image_file), str(label_file))
            image = normalize.prepare_image(image, c["channels"], c["percentiles"],
                                            str(image_file), c.get("polarity", "as_is"))
            images.append(HeldOut(image_file.stem, image, *objects(labels, str(label_file))))
        return images
    if not c["_target_"].endswith(".tiff_stack"):
        raise SystemExit(f"bench_quality: no test reader for data source {c['_target_']}")
    image_file, label_file = test_dir / c["volume"], test_dir / c["labels"]
    labels = labelling.label_image(read_array(label_file), 3, str(label_file))
    image = normalize.image_channels_first(read_array(image_file), labels.shape,
                                           str(image_file), str(label_file))
    # The whole stack at once, as the source does: one acquisition, one intensity scale.
    image = normalize.prepare_image(image, c["channels"], c["percentiles"], str(image_file),
                                    c.get("polarity", "as_is"))
    if dims == 3:
        return [HeldOut(f"{c['name']}_test", image, *objects(labels, str(label_file)))]
    return [
        HeldOut(f"{c['name']}_test_z{z:03d}", np.ascontiguousarray(image[:, z]),
                  *objects(labels[z], f"{label_file} (slice {z})"))
        for z in range(labels.shape[0])[:limit]
    ]


def as_dict(node: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


# --- scores ----------------------------------------------------------------------------------


def image_scores(metric: str, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The test scores of one image (objects, 0 background) for the dataset's ``metric``."""
    from segunet.eval.metrics import (
        adapted_rand_error,
        average_precision,
        isbi_scores,
        semantic_scores,
    )

    if metric == "ap":
        ap = average_precision(pred, truth)
        return {"mean_ap": float(np.mean(list(ap.values()))), "ap50": ap[0.5]}
    if metric == "vrand":
        return {**isbi_scores(pred, truth), "rand_error": adapted_rand_error(pred, truth)[0]}
    scores = semantic_scores(pred != 0, truth != 0, 2)
    return {"iou": scores["iou"], "dice": scores["dice"]}


def overall(metric: str, per_image: dict[str, dict[str, float]],
            masks: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Scores over the test part: means of per-image scores (DSB, ISBI), or Dice and IoU of
    all test voxels pooled (Lucchi; ``masks``: (prediction, truth) foregrounds)."""
    if metric in ("ap", "vrand"):
        keys = next(iter(per_image.values()))
        return {k: float(np.mean([s[k] for s in per_image.values()])) for k in keys}
    pred = np.concatenate([p.ravel() for p, _ in masks])
    truth = np.concatenate([t.ravel() for _, t in masks])
    return image_scores(metric, pred, truth)


# --- the MONAI baseline ----------------------------------------------------------------------


def round16(size: int) -> int:
    """The nearest multiple of 16 (BasicUNet pools four times), at least 16."""
    return max(16, int(round(size / 16)) * 16)


def train_monai(volumes: Sequence[Volume], patch: Sequence[int], steps: int, batch: int,
                device: torch.device, features: Sequence[int] | None = None,
                seed: int = 0, seconds: float | None = None
                ) -> tuple[torch.nn.Module, float, int]:
    """A MONAI user's training loop: ``steps`` steps, or with ``seconds`` as many as start
    within that time. Returns the model, the loop's seconds and the steps it trained."""
    from monai.data import DataLoader
    from monai.data import Dataset as MonaiDataset
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet
    from monai.transforms import Compose, RandFlipd, RandRotate90d, RandSpatialCropd, SpatialPadd

    dims, keys = len(patch), ["image", "label"]
    transform = Compose([
        SpatialPadd(keys, spatial_size=patch),  # images smaller than a patch
        RandSpatialCropd(keys, roi_size=patch, random_size=False),
        *(RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(dims)),
        RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(dims - 2, dims - 1)),
    ])
    transform.set_random_state(seed)
    items = [{"image": v.image, "label": (v.instances > 0)[None].astype(np.float32)}
             for v in volumes]
    data = MonaiDataset(items, transform)
    # Exactly `steps` batches: images drawn with replacement (an epoch loop would end mid-way).
    # With a time budget the sampler is effectively endless; the clock ends the loop.
    cap = steps if seconds is None else 10**7
    sampler = torch.utils.data.RandomSampler(
        data, replacement=True, num_samples=cap * batch,
        generator=torch.Generator().manual_seed(seed))
    cuda = device.type == "cuda"
    loader = DataLoader(data, batch_size=batch, sampler=sampler, num_workers=4 if cuda else 0)
    torch.manual_seed(seed)
    extra = {} if features is None else {"features": tuple(features)}
    model = BasicUNet(spatial_dims=dims, in_channels=volumes[0].image.shape[0], out_channels=2,
                      **extra).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    done = 0
    bar = tqdm(total=steps if seconds is None else None, desc="monai: train", unit="step",
               file=sys.stderr)
    start = time.perf_counter()
    for batch_data in loader:
        if seconds is not None and time.perf_counter() - start >= seconds:
            break
        x, y = (torch.as_tensor(batch_data[k]).to(device) for k in keys)
        with autocast(device):  # bf16 on CUDA, as segunet trains there
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda and seconds is not None:
            torch.cuda.synchronize(device)  # the clock must see the work, not its queueing
        done += 1
        bar.update()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    bar.close()
    return model.eval(), elapsed, done


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def monai_predict(model: torch.nn.Module, image: np.ndarray, patch: Sequence[int],
                  device: torch.device, tta: bool = False) -> np.ndarray:
    """Softmax probabilities of a whole image by MONAI's sliding window (MONAI's defaults
    but overlap 0.25); ``tta`` averages segunet's 8 symmetries, as ``predict_tiled``."""
    from monai.inferers import sliding_window_inference

    from segunet.infer.predict import symmetries

    x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
    transforms = symmetries(len(patch)) if tta else symmetries(len(patch))[:1]
    total = None
    with torch.inference_mode(), autocast(device):
        for forward, inverse in transforms:
            logits = sliding_window_inference(forward(x), roi_size=tuple(patch),
                                              sw_batch_size=4, predictor=model, overlap=0.25)
            probs = inverse(torch.softmax(torch.as_tensor(logits).float(), 1))
            total = probs if total is None else total + probs
    return (total / len(transforms))[0].cpu().numpy()


def monai_objects(probs: np.ndarray) -> np.ndarray:
    """A MONAI user's instances: argmax, then connected components (faces)."""
    from scipy import ndimage

    return ndimage.label(probs.argmax(0) == 1)[0]


# --- evaluation ------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    method: str
    run: str
    train_steps: int
    batch_size: int
    checkpoint_step: int  # the step of the weights scored (best.pt: maybe before the last)
    train_s: float
    postprocess: dict | str  # the settings decoded with, or how the objects were made
    overrides: list[str]
    val_score: float | None = None  # the search's score on the validation images
    tune_s: float | None = None
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    per_image: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    checkpoint: str = ""
    predictions: str = ""
    notes: str = ""


def evaluate(results: Sequence[Result], decoders: dict[str, Callable[[np.ndarray], np.ndarray]],
             tta: dict[str, bool], predict: Callable[[np.ndarray, bool], np.ndarray],
             test: Sequence[HeldOut], metric: str, out_dir: Path) -> None:
    """Predict each test image once per TTA setting the run's methods use, decode it with
    every method of the run, save the objects and score them into ``results``."""
    from segunet.data.io import write_array

    masks: dict[str, list] = {r.method: [] for r in results}
    for r in results:
        folder = out_dir / r.method
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        r.predictions = str(folder)
    desc = f"{results[0].run}: test"
    for item in tqdm(test, desc=desc, unit="image", file=sys.stderr):
        probs: dict[bool, np.ndarray] = {}
        for r in results:
            use_tta = tta[r.method]
            if use_tta not in probs:
                probs[use_tta] = predict(item.image, use_tta)
            objects = np.where(item.valid, decoders[r.method](probs[use_tta]), 0)
            write_array(Path(r.predictions) / f"{item.name}.tif",
                        objects.astype(np.uint32 if objects.max() >= 2**16 else np.uint16))
            r.per_image[item.name] = image_scores(metric, objects, item.truth)
            if metric not in ("ap", "vrand"):
                masks[r.method].append((objects != 0, item.truth != 0))
    for r in results:
        r.scores = overall(metric, r.per_image, masks[r.method])


def segunet_results(run: str, methods: Sequence[str], run_dir: Path, train_s: float,
                    overrides: list[str], val: Sequence[Volume] | None,
                    data_cfg: dict | None, spec: Dataset,
                    test: Sequence[HeldOut], device: torch.device,
                    out_dir: Path, checkpoint: str = "best") -> list[Result]:
    """Score a segunet run's methods with its ``checkpoint`` (best or last): that
    checkpoint's own search's settings, and for ``foreground`` a search restricted to
    ``grow=0`` on ``val``."""
    from segunet.checkpoint import load_checkpoint, load_trained
    from segunet.infer.predict import predict_tiled

    trained = load_trained(run_dir, device, prefer=checkpoint)
    model, config, stored = trained.model, trained.config, trained.postprocess
    step = int(load_checkpoint(trained.file)["step"])
    target = config["data"]["target"]
    if data_cfg is not None and {**config["data"], "target": None} != {**data_cfg, "target": None}:
        raise SystemExit(f"bench_quality: {run_dir} trained on other data than the bench "
                         "composed (its validation images would differ)")
    steps, batch = int(config["trainer"]["max_steps"]), int(config["trainer"]["batch_size"])

    def predict(image: np.ndarray, use_tta: bool) -> np.ndarray:
        return predict_tiled(model, image, device=device, tta=use_tta)

    results, settings = [], {}
    for method in methods:
        r = Result(method, run, steps, batch, step, train_s, {}, overrides,
                   checkpoint=str(trained.file))
        if method == "foreground":  # the same search, gap growth left out
            tune_cfg = instantiate_group(config, "postprocess", str(run_dir))
            grid = {**(tune_cfg.grid or {}), "grow": [0]}
            start = time.perf_counter()
            found = tune_on(val, predict, target, spec.metric,
                            TuneConfig(tta=tune_cfg.tta, grid=grid))
            r.tune_s = time.perf_counter() - start
            post, r.val_score = PostProcess.from_dict(found["settings"]), found["score"]
        elif stored:
            post, r.val_score = PostProcess.from_dict(stored["settings"]), stored["score"]
        else:
            post, r.notes = PostProcess(), "not tuned (postprocess.enabled=false): defaults"
        r.postprocess = shown_settings(post, target)
        settings[method] = post
        results.append(r)
    decoders = {m: (lambda p, s=settings[m]: decode(p, target, s)) for m in methods}
    tta = {m: settings[m].tta for m in methods}
    evaluate(results, decoders, tta, predict, test, spec.metric, out_dir)
    return results


def shown_settings(post: PostProcess, target: str) -> dict[str, Any]:
    """The settings that act on ``target``'s decoding."""
    keys = {"foreground": ("threshold", "grow", "min_size", "tta"),
            "boundary": ("threshold", "seed_threshold", "min_size", "tta")}[target]
    return {k: getattr(post, k) for k in keys}


def monai_results(methods: Sequence[str], data: SegmentationData, recipe: Any,
                  recipe_patch: Sequence[int], features: Sequence[int] | None, spec: Dataset,
                  test: Sequence[HeldOut], device: torch.device,
                  out_dir: Path, seconds: float | None = None
                  ) -> tuple[list[Result], dict[str, Any]]:
    """Train the MONAI baseline on the recipe's training images (the recipe's steps, or
    ``seconds`` of training) and score its methods."""
    patch = [round16(p) for p in recipe_patch]
    steps, batch = int(recipe.trainer.max_steps), int(recipe.trainer.batch_size)
    seed = int(recipe.trainer.seed)
    model, train_s, steps = train_monai(data.train, patch, steps, batch, device, features,
                                        seed, seconds)
    setup = {"model": "monai.networks.nets.BasicUNet", "features": features or "MONAI default",
             "patch_size": patch, "recipe_patch_size": list(recipe_patch),
             "loss": "DiceCELoss(to_onehot_y=True, softmax=True)", "optimizer": "Adam 1e-3",
             "inferer": "sliding_window_inference(overlap=0.25)"}
    overrides = [f"steps={steps}", f"batch_size={batch}", f"patch={patch}"]

    def predict(image: np.ndarray, use_tta: bool) -> np.ndarray:
        return monai_predict(model, image, patch, device, use_tta)

    results, decoders, tta = [], {}, {}
    for method in methods:
        r = Result(method, "monai", steps, batch, steps, train_s,
                   "argmax + connected components", overrides, checkpoint="final weights")
        decoders[method], tta[method] = monai_objects, False
        if method == "monai_tuned":
            # The foreground recipe's search (its grid, its TTA choice) on the same images.
            tune_cfg = instantiate_group(recipe, "postprocess")
            start = time.perf_counter()
            found = tune_on(data.val, predict, "foreground", spec.metric,
                            TuneConfig(tta=tune_cfg.tta, grid=tune_cfg.grid))
            r.tune_s = time.perf_counter() - start
            post = PostProcess.from_dict(found["settings"])
            r.val_score, r.postprocess = found["score"], shown_settings(post, "foreground")
            decoders[method] = lambda p, s=post: decode(p, "foreground", s)
            tta[method] = post.tta
        results.append(r)
    evaluate(results, decoders, tta, predict, test, spec.metric, out_dir)
    return results, setup


# --- report ----------------------------------------------------------------------------------


def hardware(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict[str, str | None]:
    import monai

    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True,
                                capture_output=True, check=True).stdout.strip()
    return {"python": platform.python_version(), "torch": torch.__version__,
            "monai": monai.__version__, "segunet_commit": commit}


def table(results: Sequence[Result], spec: Dataset) -> str:
    heads = ["method", *(LABELS[k] for k in spec.scores), "steps", "train s", "post-processing"]
    rows = []
    for r in results:
        post = r.postprocess if isinstance(r.postprocess, str) else " ".join(
            f"{k}={v}" for k, v in r.postprocess.items())
        steps = str(r.train_steps) + (
            f" (ckpt {r.checkpoint_step})" if r.checkpoint_step != r.train_steps else "")
        rows.append([r.method, *(f"{r.scores[k]:.4f}" for k in spec.scores), steps,
                     f"{r.train_s:.0f}" if r.train_s >= 100 else f"{r.train_s:.1f}", post])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def budget(kind: str, recipe: Any, seconds: float | None) -> dict[str, Any]:
    """What every method was given: the same steps, or the same training seconds."""
    steps, batch = int(recipe.trainer.max_steps), int(recipe.trainer.batch_size)
    if kind == "steps":
        return {"kind": kind, "steps": steps, "batch_size": batch,
                "cap": f"{steps} steps x batch {batch} per method (wall-clock reported, not "
                       "capped)"}
    shown = "the default recipe's" if seconds is None else f"{seconds:.0f} s,"
    return {"kind": kind, "steps": steps, "batch_size": batch, "seconds": seconds,
            "cap": f"equal wall-clock ({shown} the whole segunet train of the default "
                   f"recipe; the MONAI loop alone), batch {batch}"}


def default_method(target: str) -> str:
    """The method that is the experiment's own recipe: its target, decoded by its search."""
    return "boundary" if target == "boundary" else "foreground_grow"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    spec = DATASETS[args.dataset]
    started = time.perf_counter()
    experiment = args.experiment or spec.name + ("" if args.preset == "gpu" else "_cpu")
    check_experiment(experiment)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    workdir = args.workdir.resolve()
    args.workdir = workdir
    parts = quality_data.materialise(spec.split, workdir / "split", args.shared)
    base = base_overrides(args, spec, experiment, parts["trainval"])
    own = compose(base)  # the experiment as it is: which target is its default
    recipes = {run: base + RECIPES[run] for run in RECIPES}
    runs = {RUN_OF[m] for m in args.methods}
    default = default_method(str(own.data.target))
    if args.budget == "time" and "monai" in runs and RUN_OF[default] not in runs:
        raise SystemExit(f"bench_quality: --budget time gives MONAI the wall-clock of the "
                         f"default recipe ({default}): add it to --methods")
    fg = compose(recipes["foreground"])  # the data, budget and search MONAI shares

    train_s = {}
    for run in ("foreground", "boundary"):
        if run in runs:
            train_s[run] = train_segunet(recipes[run], workdir / run)

    data_cfg = as_dict(fg.data)
    test = load_test(parts["test"], data_cfg, spec.dims, args.test_images)
    # MONAI as a user runs it: segunet's normalisation, but not its polarity inversion.
    inverted = data_cfg.get("polarity", "as_is") != "as_is"
    plain = fg.copy()
    if inverted:
        plain.data.polarity = "as_is"
    plain_test = load_test(parts["test"], as_dict(plain.data), spec.dims,
                           args.test_images) if inverted and "monai" in runs else test
    data: SegmentationData | None = None
    plain_data: SegmentationData | None = None
    if "monai" in runs or "foreground" in args.methods:  # these need the validation images
        print("bench_quality: preparing the trainval data (segunet's source)", file=sys.stderr)
        data = instantiate_group(fg, "data")
        plain_data = instantiate_group(plain, "data") if inverted and "monai" in runs else data

    results: list[Result] = []
    monai_setup = None
    if "monai" in runs:
        from segunet.train.settings import resolve_patch_size

        patch = resolve_patch_size(instantiate_group(fg, "model"), data)
        features = args.monai_features or (TINY_FEATURES if args.preset == "tiny" else None)
        monai_methods = [m for m in METHODS if m in args.methods and RUN_OF[m] == "monai"]
        seconds = train_s[RUN_OF[default]] if args.budget == "time" else None
        found, monai_setup = monai_results(monai_methods, plain_data, fg, patch, features,
                                           spec, plain_test, device, workdir / "predictions",
                                           seconds)
        results += found
    for run in ("foreground", "boundary"):
        if run in runs:
            methods = [m for m in METHODS if m in args.methods and RUN_OF[m] == run]
            results += segunet_results(run, methods, workdir / run, train_s[run], recipes[run],
                                       data.val if data is not None else None, data_cfg, spec,
                                       test, device, workdir / "predictions", args.checkpoint)
    results.sort(key=lambda r: METHODS.index(r.method))

    headline = spec.scores[0]
    by_method = {r.method: r for r in results}
    ratio = None
    if default in by_method and "monai" in by_method and by_method["monai"].scores[headline]:
        ratio = by_method[default].scores[headline] / by_method["monai"].scores[headline]
    report = {
        "dataset": spec.name, "preset": args.preset, "experiment": experiment,
        "spatial_dims": spec.dims, "metric": spec.metric, "headline": headline,
        "checkpoint": args.checkpoint,
        "default_method": default, "default_over_monai": ratio,
        "budget": budget(args.budget, fg, train_s.get(RUN_OF[default])),
        "split": {
            "trainval": str(parts["trainval"]), "test": str(parts["test"]),
            "train": [v.name for v in data.train] if data is not None else None,
            "val": [v.name for v in data.val] if data is not None else None,
            "test_images": [t.name for t in test], "test_limited_to": args.test_images,
        },
        "overrides": {"base": base, **{run: RECIPES[run] for run in RECIPES},
                      "extra": args.override},
        "monai": monai_setup,
        "hardware": hardware(device), "versions": versions(),
        "methods": {r.method: dataclasses.asdict(r) for r in results},
        "total_s": time.perf_counter() - started,
    }
    print(f"\nbench_quality: {spec.name}, preset {args.preset} ({experiment}), "
          f"{len(test)} test images, {report['budget']['cap']}, device {device}")
    print(table(results, spec))
    if default in by_method and "monai" in by_method:
        shown = "undefined (monai scores 0)" if ratio is None else f"{ratio:.3f}"
        print(f"{default} / monai, {LABELS[headline]}: {shown}")
    print(f"total {report['total_s']:.0f} s; predictions in {workdir / 'predictions'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(report, indent=2, default=str) + "\n").encode()
    write_atomic(args.out, lambda f: f.write(text))  # a crash leaves the old file or none
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
