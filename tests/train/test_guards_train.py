"""A training that goes bad stops and says so: out-of-range settings are refused before a
run folder exists, and a run whose loss or gradients stop being finite ends with one line,
its last good checkpoint kept and nothing non-finite saved or logged."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import TINY, run_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from segunet.config.compose import check_config, group_schema, schema_targets
from segunet.config.schema import nested_dataclass
from segunet.data.sources import folder
from segunet.errors import SegunetError, one_line
from segunet.train import trainer as train
from segunet.train.trainer import build_trainer

QUICK = [*TINY, "scheduler=constant"]


def refusal(make_cfg, *overrides: str) -> str:
    """The one line of checking the composed config, as ``segunet train`` does before Hydra
    creates the run folder; nothing is built."""
    try:
        check_config(make_cfg(*overrides))
    except SegunetError as e:
        return one_line(e)
    raise AssertionError(f"{overrides} passed the config check")


# --- ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # the cases: accepted, or a traceback from torch
        (["trainer.grad_clip=-1"], "trainer.grad_clip=-1 must be > 0 (or null)"),
        (["trainer.grad_clip=0"], "trainer.grad_clip=0 must be > 0 (or null)"),
        (["optim.lr=-1"], "optim.lr=-1 must be > 0"),
        (["trainer.num_workers=-1"], "trainer.num_workers=-1 must be at least 0"),
        # every group
        (["optim=sgd", "optim.momentum=1.5"], "optim.momentum=1.5 must be in [0, 1)"),
        (["optim.betas=[0.9,1.5]"], "optim.betas=[0.9, 1.5] must all be in [0, 1)"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 must be at least 0"),
        (["scheduler=cosine", "scheduler.T_max=0"], "scheduler.T_max=0 must be at least 1"),
        (["scheduler=poly", "scheduler.power=-1"], "scheduler.power=-1 must be at least 0"),
        (["model.channels=[4,0,16]"], "model.channels=[4, 0, 16] must all be at least 1"),
        (["model.in_channels=0"], "model.in_channels=0 must be at least 1"),
        (["model.dropout=1"], "model.dropout=1 must be in [0, 1)"),
        (["model.spatial_dims=4"], "model.spatial_dims=4 must be in [2, 3]"),
        (["data.shape=[0,96]"], "data.shape=[0, 96] must all be at least 1"),
        (["data.patch_size=[-4,76]"], "data.patch_size=[-4, 76] must all be at least 1 (or null)"),
        (["data.foreground_oversample=2"], "data.foreground_oversample=2 must be in [0, 1]"),
        (["data.seed=-1"], "data.seed=-1 must be at least 0"),
        (["data.pixel_size=[0,1]"], "data.pixel_size=[0, 1] must all be > 0 (or null)"),
        (["data.targets.w0=-1"],
         "data.targets.w0=-1 must be a finite number >= 0 (0: no border term)"),
        (["data.targets.sigma=0"],
         "data.targets.sigma=0 must be a finite number > 0 (pixels, or the units of spacing)"),
        (["data.targets.workers=-2"], "data.targets.workers=-2 must be 0 (this process), -1 (one "
         "per CPU) or a number of processes"),
        (["data.targets.num_classes=1"], "data.targets.num_classes=1 must be at least 2"),
        (["augment.rotate=-5"], "augment.rotate=-5 must be at least 0"),
        (["augment.scale=[-1,2]"], "augment.scale=[-1, 2] must all be > 0"),
        (["augment.noise_std=-0.1"], "augment.noise_std=-0.1 must be at least 0"),
        (["loss=dice_ce", "loss.lambda_ce=-1"], "loss.lambda_ce=-1 must be at least 0"),
        (["logging.image_every=0"], "logging.image_every=0 must be at least 1"),
        # a cross-key check of a dataclass group, also before the run folder
        (["augment.scale=[1.1,0.9]"], "augment.scale=[1.1, 0.9] is not valid: expected a list "
         "[low, high] with 0 <= low <= high"),
        # my own: a traceback from numpy, and a schedule that trains nothing
        (["trainer.seed=-1"], "trainer.seed=-1 must be at least 0"),
        (["scheduler=constant", "scheduler.factor=0", "scheduler.total_iters=10"],
         "scheduler.factor=0 must be in (0, 1]"),
    ],
)
def test_an_out_of_range_value_is_refused_by_the_config_check(make_cfg, overrides, expected):
    assert refusal(make_cfg, "experiment=quickstart", *overrides) == expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # Each was accepted. lr and noise_std then diverged at once; eps makes every Adam
        # update 0 and rotate every angle infinite (its cosine NaN), and both runs ended
        # "done" with exit 0.
        (["optim.lr=inf"], "optim.lr=inf must be finite and > 0"),
        (["optim.eps=inf"], "optim.eps=inf must be finite and at least 0"),
        (["augment.rotate=inf"], "augment.rotate=inf must be finite and at least 0"),
        (["augment.noise_std=inf"], "augment.noise_std=inf must be finite and at least 0"),
        (["trainer.grad_clip=inf"], "trainer.grad_clip=inf must be finite and > 0 (or null)"),
        (["augment.scale=[0.9,inf]"], "augment.scale=[0.9, inf] must all be finite and > 0"),
    ],
)
def test_an_infinite_value_is_refused_by_the_config_check(make_cfg, overrides, expected):
    assert refusal(make_cfg, "experiment=quickstart", *overrides) == expected


def test_a_value_the_max_steps_gives_blames_max_steps(make_cfg):
    """scheduler.T_max is ${trainer.max_steps}: the key to change is the one the user set."""
    assert refusal(make_cfg, "scheduler=cosine", "trainer.max_steps=0") == (
        "trainer.max_steps=0 must be at least 1")


def test_in_range_values_and_null_pass(make_cfg):
    check_config(make_cfg("experiment=quickstart", "trainer.grad_clip=null", "optim=sgd",
                          "optim.momentum=0", "model.dropout=0.5", "augment.p_elastic=0"))


#: Numbers any value of which is meaningful (ids, seeds of generators that take any int).
ANY_NUMBER = {"data.targets.foreground_value", "data.targets.ignore_value", "loss.ignore_index"}


def numeric_keys(schema: type, where: str):
    for f in dataclasses.fields(schema):
        nested = nested_dataclass(f.type)
        if nested is not None:
            yield from numeric_keys(nested, f"{where}.{f.name}")
            continue
        kind = next((a for a in typing.get_args(f.type) if a is not type(None)), f.type)
        element = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
        if element in (int, float) and not f.metadata.get("choices"):
            yield f"{where}.{f.name}", f.metadata.get("range")


def test_every_numeric_key_of_segunets_groups_has_a_range():
    """A key added later without one fails here (torch's take theirs by name)."""
    unbounded = sorted({
        key
        for group, target in schema_targets() if group not in ("optim", "scheduler")
        for key, bounds in numeric_keys(group_schema(group, target), group)
        if bounds is None and key not in ANY_NUMBER
    })
    assert unbounded == []


def test_torch_refuses_what_the_table_refuses():
    """An independent reference for a few of the torch ranges: torch's own checks."""
    params = [torch.zeros(1, requires_grad=True)]
    for make in (lambda: torch.optim.Adam(params, lr=-1),
                 lambda: torch.optim.Adam(params, betas=(0.9, 1.5)),
                 lambda: torch.optim.SGD(params, lr=0.1, momentum=-1),
                 lambda: torch.optim.AdamW(params, weight_decay=-1)):
        with pytest.raises(ValueError):
            make()


def test_a_refused_value_creates_no_run_folder(tmp_path):
    run = tmp_path / "run"
    done = run_in_process("train", *QUICK, "trainer.grad_clip=-1", f"hydra.run.dir={run}",
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "segunet: error: trainer.grad_clip=-1 must be > 0 (or null)")
    assert not run.exists()


# --- a run that diverges ------------------------------------------------------------------


def finite_checkpoint(file: Path) -> bool:
    ckpt = torch.load(file, weights_only=True)
    return all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def logged_values(run: Path) -> list[float]:
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]


def test_a_diverging_run_stops_with_one_line_and_saves_nothing(tmp_path):
    run = tmp_path / "run"
    done = run_in_process("train", *QUICK, "trainer.max_steps=6", "trainer.val_every=3",
                          "logging.log_every=1", "optim.lr=1e12", f"hydra.run.dir={run}",
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("segunet: error: training diverged at step "), last
    assert "optim.lr=1e+12" in last and "nothing was saved" in last
    assert not list(run.glob("checkpoints/*.pt"))
    assert all(math.isfinite(v) for v in logged_values(run))


def test_a_divergence_keeps_the_last_good_checkpoint_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    common = [*QUICK, "trainer.val_every=3", f"hydra.run.dir={run}"]
    first = run_in_process("train", *common, "trainer.max_steps=3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    last = run / "checkpoints" / "last.pt"
    good = last.read_bytes()

    bad = run_in_process("train", *common, "trainer.max_steps=9", "optim.lr=1e12",
                         f"trainer.resume={run}", cwd=tmp_path)
    assert bad.returncode == 2
    line = bad.stderr.strip().splitlines()[-1]
    assert f"{last} of step 3 is the last good checkpoint" in line, line
    assert f"trainer.resume={last}" in line
    assert last.read_bytes() == good and finite_checkpoint(run / "checkpoints" / "best.pt")

    again = run_in_process("train", *common, "trainer.max_steps=6", f"trainer.resume={last}",
                           cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert torch.load(last, weights_only=True)["step"] == 6 and finite_checkpoint(last)


def test_data_bad_from_the_first_step_is_blamed_not_the_learning_rate(tmp_path):
    """Weights near float32's largest (the largest w0 allowed) overflow the loss to inf:
    main trained on such to "done"."""
    run = tmp_path / "run"
    done = run_in_process("train", *QUICK, "trainer.max_steps=3", "trainer.val_every=3",
                          "data.targets.w0=1.7e38", f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("segunet: error: training diverged at step 1: "), line
    assert "(data.targets.w0)" in line and "optim.lr" not in line, line
    assert not list(run.glob("checkpoints/*.pt"))


def test_ctrl_c_after_a_divergence_saves_no_nan_checkpoint(make_cfg, tmp_path):
    trainer = build_trainer(make_cfg(*QUICK, "trainer.max_steps=9", "optim.lr=1e12"), tmp_path)
    batches = iter(trainer.loader())
    for _ in range(3):
        trainer.train_step(trainer.prepare(next(batches)))
    assert not all(torch.isfinite(p).all() for p in trainer.net.parameters())
    with pytest.raises(SegunetError, match="training diverged at step"):
        trainer._save_on_interrupt(KeyboardInterrupt())
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_a_validation_score_that_is_not_a_number_stops_the_run(make_cfg, tmp_path,
                                                               monkeypatch):
    """It used to be logged and saved in last.pt, and the run ended "done"."""
    monkeypatch.setattr("segunet.train.trainer.Trainer.validate", lambda self: {
        "loss": 0.5, "dice": math.nan, "iou": math.nan})
    trainer = build_trainer(make_cfg(*QUICK, "trainer.max_steps=2", "trainer.val_every=2"),
                            tmp_path)
    with pytest.raises(SegunetError, match="diverged at step 2: validation gave dice=nan"):
        trainer.fit()
    assert not list(tmp_path.glob("checkpoints/*.pt"))


def scaled_trainer(make_cfg, tmp_path, monkeypatch, nan_steps: set[int], max_steps: int):
    """A trainer whose gradient scaler is on (as under fp16, on the CPU), fed images of NaN
    at ``nan_steps`` (1-based)."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: real(device))
    trainer = build_trainer(make_cfg(*QUICK, f"trainer.max_steps={max_steps}",
                                     f"trainer.val_every={max_steps}"), tmp_path)
    assert trainer.scaler.is_enabled()
    prepare = trainer.prepare

    def poisoned(batch):
        batch = prepare(batch)
        if trainer.step + 1 in nan_steps:
            batch["image"] = torch.full_like(batch["image"], math.nan)
        return batch

    trainer.prepare = poisoned
    return trainer


def test_a_few_steps_the_scaler_skips_are_not_a_failure(make_cfg, tmp_path, monkeypatch):
    trainer = scaled_trainer(make_cfg, tmp_path, monkeypatch, {2, 3, 4}, max_steps=8)
    final = trainer.fit()
    assert math.isfinite(final["val/dice"])
    assert finite_checkpoint(tmp_path / "checkpoints" / "last.pt")


def test_a_run_of_skipped_steps_is_a_divergence(make_cfg, tmp_path, monkeypatch):
    trainer = scaled_trainer(make_cfg, tmp_path, monkeypatch, set(range(2, 17)), max_steps=16)
    with pytest.raises(SegunetError) as info:
        trainer.fit()
    limit = train.MAX_SKIPPED_STEPS
    assert str(info.value).startswith(
        f"training diverged at step {limit + 1}: the loss or a gradient was not "
        f"finite (nan or inf) for {limit} steps in a row")
    assert 2 < limit < 15  # the 3 skipped steps above pass, these 15 do not
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


# --- training data that cannot teach anything ---------------------------------------------


def write_folder(root: Path, labels, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        tifffile.imwrite(root / "images" / f"a{i}.tif",
                         rng.integers(0, 255, (96, 96)).astype(np.uint8))
        tifffile.imwrite(root / "masks" / f"a{i}.tif", labels(i))
    return root


def folder_run(tmp_path: Path, *overrides: str):
    args = [t for t in QUICK if not t.startswith(("data.n_", "data.shape"))]
    return run_in_process("train", *args, "data=folder", f"data.path={tmp_path / 'data'}",
                          "data.val_fraction=0.34", "trainer.max_steps=2",
                          "trainer.val_every=2", *overrides,
                          f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)


def test_training_labels_without_foreground_are_refused(tmp_path):
    write_folder(tmp_path / "data", lambda i: np.zeros((96, 96), np.uint16))
    done = folder_run(tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("segunet: error: the labels of the 2 training images of data "
                           "'folder' hold no foreground"), line
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


@pytest.mark.parametrize("percentiles", [[99.8, 1.0], [1.0]])
def test_percentiles_must_be_low_then_high(tmp_path, percentiles):
    """Reversed, they trained on the negative of every image; one value was a traceback."""
    blob = np.zeros((96, 96), np.uint16)
    blob[30:60, 30:60] = 1
    root = write_folder(tmp_path / "data", lambda i: blob)
    with pytest.raises(SegunetError) as info:
        folder(root, percentiles=percentiles, val_fraction=0.34)
    assert str(info.value) == (
        f"data.percentiles={percentiles} is not valid: expected [low, high] with low < high "
        "(e.g. [1, 99.8]), or null to keep the values as they are")
