"""``experiment=auto`` against the hand-written recipe and the plain MONAI baseline, at equal
wall-clock, on the held-out part of each dataset that ``bench_quality.py`` scores on.

    python scripts/bench_plan.py --datasets dsb2018 --budget 10m
    python scripts/bench_plan.py --datasets dsb2018,isbi2012,lucchi,lucchi3d --budget 10m
    python scripts/bench_plan.py --datasets dsb2018 --budget 1m --tiny   # smoke

Per dataset, in one process, on one machine:

1. ``segunet plan`` on the *trainval* part (the test part is never read) with ``--budget``;
   its wall-clock is reported (the goal: under a minute on DSB).
2. ``auto``: the plan trained by ``segunet train experiment=<plan>``, and ``monai``: the MONAI
   loop of ``bench_quality.py`` for as long as that whole ``segunet train`` took
   (``bench_quality --budget time``).
3. ``hand``: ``experiment=<dataset>_cpu``, its steps scaled so that its training takes what
   the plan's does: the plan's steps x the plan's step time / the hand recipe's step time,
   both timed here on this device by :func:`segunet.plan.timing.time_step` (at most the
   recipe's own steps). That is what a user who has ``--budget`` minutes does with it.

Every method is scored by ``bench_quality.py``'s code on the same test images with the
dataset's official metric (``data.metric`` of the dataset: DSB mean AP, ISBI V_Rand, Lucchi
IoU). For DSB the test images are also scored by modality: colour (brightfield, H&E) and
grey (fluorescence). The table and ``--out`` JSON hold the plan's key choices too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality  # noqa: E402
import quality_data  # noqa: E402

from segunet.atomic import write_atomic  # noqa: E402

#: The data config of each bench dataset, as ``segunet plan`` takes it.
DATA = {"dsb2018": ["data=dsb2018"], "isbi2012": ["data=isbi2012"], "lucchi": ["data=lucchi"],
        "lucchi3d": ["data=lucchi", "data.slices_as=3d"]}


def plan(dataset: str, trainval: Path, budget: str, out: Path) -> float:
    """Run ``segunet plan`` into ``out``; its wall-clock."""
    command = [sys.executable, "-m", "segunet.cli", "plan", *DATA[dataset],
               f"data.path={trainval}", f"budget={budget}", f"out={out}"]
    start = time.perf_counter()
    done = subprocess.run(command, env=bench_quality.segunet_env(), check=False)
    if done.returncode:
        raise SystemExit(f"bench_plan: segunet plan failed (exit {done.returncode})")
    return time.perf_counter() - start


def hand_steps(dataset: str, trainval: Path, plan_cfg: Any, tiny: bool) -> tuple[int, dict]:
    """The hand recipe's steps for the plan's training time, and the step times."""
    from segunet.plan.timing import time_step

    hand = bench_quality.compose([f"experiment={dataset}_cpu", f"data.path='{trainval}'"])

    def timed(cfg: Any) -> float:
        m = cfg.model
        model = {"in_channels": int(m.in_channels), "out_channels": int(m.out_channels),
                 "spatial_dims": int(m.spatial_dims), "channels": list(m.channels),
                 "padding": str(m.padding), "norm": m.norm,
                 "double_before_pool": bool(m.get("double_before_pool", False))}
        patch = tuple(int(p) for p in cfg.data.patch_size)
        return min(time_step(model, patch, int(cfg.trainer.batch_size))[0] for _ in range(2))

    auto_s, hand_s = timed(plan_cfg), timed(hand)
    steps = int(plan_cfg.trainer.max_steps) * auto_s / hand_s
    steps = max(10, min(int(hand.trainer.max_steps), round(steps)))
    return (4 if tiny else steps), {"auto_step_s": auto_s, "hand_step_s": hand_s,
                                    "hand_own_steps": int(hand.trainer.max_steps)}


def colour_names(test_dir: Path) -> set[str]:
    """The DSB test images whose channels differ (brightfield, H&E)."""
    from segunet.data.io import read_array

    names = set()
    for f in sorted((test_dir / "images").glob("*.png")):
        a = read_array(f)
        if a.ndim == 3 and a.shape[-1] >= 3 and np.ptp(a[..., :3].astype(int), axis=-1).mean() > 2:
            names.add(f.stem)
    return names


def by_modality(result: dict, colour: set[str], key: str) -> dict[str, float | None]:
    per = result["per_image"]
    out = {}
    for part, keep in (("colour", lambda n: n in colour), ("grey", lambda n: n not in colour)):
        values = [v[key] for n, v in per.items() if keep(n)]
        out[part] = float(np.mean(values)) if values else None
    return out


def reused(path: Path | None, dataset: str) -> dict | None:
    """The hand and MONAI rows of ``dataset`` in an earlier ``--out`` JSON (``--reuse``)."""
    if path is None:
        return None
    for report in json.loads(path.read_text()):
        if report["dataset"] == dataset:
            rows = {k: {"scores": v["scores"], "train_s": v["train_s"],
                        "train_steps": v["steps"], "per_image": v.get("per_image", {}),
                        "by_modality": v.get("by_modality")}
                    for k, v in report["methods"].items()}
            return {"rows": rows, "timing": report["timing"]}
    raise SystemExit(f"bench_plan: --reuse {path} holds no {dataset} run")


def bench(dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    work = (args.workdir / dataset).resolve()
    spec = bench_quality.DATASETS[dataset]
    parts = quality_data.materialise(spec.split, work / "split", args.shared)
    plan_file = work / "plan.yaml"
    plan_s = plan(dataset, parts["trainval"], args.budget, plan_file)
    plan_cfg = bench_quality.compose([f"experiment={plan_file}",
                                      f"data.path='{parts['trainval']}'"])
    target = str(plan_cfg.data.target)
    auto_method = bench_quality.default_method(target)
    hand_method = bench_quality.default_method(str(bench_quality.compose(
        [f"experiment={dataset}_cpu"]).data.target))
    common = ["--dataset", dataset, "--preset", "tiny" if args.tiny else "cpu",
              "--shared", str(args.shared)]
    if args.test_images:
        common += ["--test-images", str(args.test_images)]
    earlier = reused(args.reuse, dataset)
    if earlier is None:
        auto = bench_quality.main([*common, "--budget", "time", "--experiment", str(plan_file),
                                   "--methods", f"monai,{auto_method}", "--workdir",
                                   str(work / "auto")])
        steps, timing = hand_steps(dataset, parts["trainval"], plan_cfg, args.tiny)
        hand = bench_quality.main([*common, "--budget", "steps", "--steps", str(steps),
                                   "--methods", hand_method, "--workdir", str(work / "hand")])
        rows = {"auto": auto["methods"][auto_method], "hand": hand["methods"][hand_method],
                "monai": auto["methods"]["monai"]}
    else:  # a new plan against the earlier run's hand and MONAI rows (same split, machine)
        auto = bench_quality.main([*common, "--budget", "time", "--experiment",
                                   str(plan_file), "--methods", auto_method, "--workdir",
                                   str(work / "auto"),
                                   *(f"--override={o}" for o in args.auto_override)])
        timing = earlier["timing"]
        rows = {"auto": auto["methods"][auto_method], **{
            k: {**v, "reused": True} for k, v in earlier["rows"].items() if k != "auto"}}
    report = {
        "dataset": dataset, "budget": args.budget, "plan_s": plan_s, "timing": timing,
        "plan": {k: _select(plan_cfg, k) for k in (
            "data.target", "data.metric", "model.channels", "model.padding", "data.patch_size",
            "trainer.batch_size", "trainer.max_steps", "data.targets.sigma", "data.channels",
            "data.polarity", "augment.p_invert", "data.balance", "data.val_fraction",
            "postprocess.grid")},
        "headline": spec.scores[0],
        "methods": {k: {"scores": v["scores"], "train_s": v["train_s"],
                        "steps": v["train_steps"], "per_image": v.get("per_image", {}),
                        "reused": v.get("reused", False)} for k, v in rows.items()},
    }
    if dataset == "dsb2018":
        colour = colour_names(parts["test"])
        report["colour_test_images"] = len(colour)
        for k, v in rows.items():
            report["methods"][k]["by_modality"] = (
                by_modality(v, colour, spec.scores[0]) if v.get("per_image") else
                v.get("by_modality"))
    return report


def _select(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def table(reports: list[dict]) -> str:
    lines = ["| dataset | method | headline | colour | grey | steps | train s |",
             "|---|---|---|---|---|---|---|"]
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    for r in reports:
        for m, v in r["methods"].items():
            mod = v.get("by_modality") or {}
            score = v["scores"][r["headline"]]
            m = f"{m} (reused)" if v.get("reused") else m
            lines.append(f"| {r['dataset']} | {m} | {r['headline']} {score:.3f} "
                         f"| {fmt(mod.get('colour'))} | {fmt(mod.get('grey'))} | {v['steps']} "
                         f"| {v['train_s']:.0f} |")
    lines += ["", "| dataset | plan s | auto / monai | auto - hand | plan |",
              "|---|---|---|---|---|"]
    for r in reports:
        h = r["headline"]
        a, hd, mo = (r["methods"][k]["scores"][h] for k in ("auto", "hand", "monai"))
        choices = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r["plan"].items())
        ratio = f"{a / mo:.2f}" if mo else "undefined"
        lines.append(f"| {r['dataset']} | {r['plan_s']:.0f} | {ratio} | {a - hd:+.3f} | "
                     f"{choices} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="dsb2018",
                   help=f"comma-separated, of {', '.join(DATA)}")
    p.add_argument("--budget", default="10m", help="the plan's training time (segunet plan)")
    p.add_argument("--workdir", type=Path, default=Path("outputs/bench_plan"))
    p.add_argument("--out", type=Path, help="JSON (default <workdir>/results.json)")
    p.add_argument("--test-images", type=int, help="score only the first N test images")
    p.add_argument("--tiny", action="store_true", help="a smoke test: bench_quality's tiny "
                   "preset for every method")
    p.add_argument("--shared", type=Path, default=quality_data.SHARED)
    p.add_argument("--auto-override", action="append", default=[], metavar="KEY=VALUE",
                   help="with --reuse: a Hydra override of the plan's run, e.g. "
                   "trainer.max_steps=<the earlier run's> for the same wall-clock")
    p.add_argument("--reuse", type=Path, help="an earlier --out JSON: train and score only the "
                   "new plan; its hand and MONAI rows come from there (marked reused)")
    args = p.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(datasets) - set(DATA))
    if unknown:
        p.error(f"--datasets: unknown {unknown}; use {', '.join(DATA)}")
    reports = [bench(d, args) for d in datasets]
    print("\nbench_plan: equal wall-clock per dataset (auto's whole segunet train)")
    print(table(reports))
    out = args.out or args.workdir / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(reports, indent=2, default=str) + "\n").encode()
    write_atomic(out, lambda f: f.write(text))
    print(f"wrote {out}")
    return reports


if __name__ == "__main__":
    main()
