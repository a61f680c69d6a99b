import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import ROOT, TINY, config_error, run_in_process, whole_image_reference
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from segunet.data.io import write_array
from segunet.errors import SegunetError
from segunet.eval.metrics import OverlapCounter
from segunet.train.resume import config_changes
from segunet.train.trainer import build_trainer, run


def saved_metrics(run_dir: Path) -> dict[str, float]:
    """The validation metrics the run's last checkpoint holds."""
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["metrics"]


def scalars(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return acc


def test_tiny_run_learns_and_writes_events_and_checkpoints(make_cfg, tmp_path):
    cfg = make_cfg(
        *TINY, "trainer.max_steps=40", "trainer.val_every=20", "logging.log_every=5",
        "logging.image_every=20", "optim.lr=3e-3", "scheduler=constant",
    )
    final = run(cfg, tmp_path)
    acc = scalars(tmp_path)
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert len(losses) == 8
    assert losses[-1] < 0.7 * losses[0], losses
    tags = acc.Tags()
    for tag in ("train/dice", "train/iou", "train/lr", "train/images_per_s", "val/loss",
                "val/dice", "val/iou"):
        assert tag in tags["scalars"], tag
    assert {"train/sample", "val/sample"} <= set(tags["images"])
    assert [e.step for e in acc.Scalars("val/dice")] == [20, 40]
    assert final["val/dice"] == pytest.approx(acc.Scalars("val/dice")[-1].value)
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "scaler", "step", "rng", "config"} <= set(ckpt)
        assert ckpt["config"]["model"]["channels"] == [4, 8, 16]
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 40


def test_augmentation_in_cpu_workers_trains(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "augment.device=cpu", "trainer.num_workers=1", "trainer.max_steps=2",
                   "trainer.val_every=2")
    trainer = build_trainer(cfg, tmp_path)
    assert not trainer.augment_on_device()
    batch = next(iter(trainer.loader()))  # augmented (with albumentations) and cropped there
    assert batch["image"].shape[-2:] == trainer.in_shape
    assert batch["label"].shape[-2:] == trainer.out_shape
    assert trainer.fit()["val/dice"] == pytest.approx(saved_metrics(tmp_path)["dice"])


def test_attention_unet_logs_attention_maps(make_cfg, tmp_path):
    cfg = make_cfg(
        *TINY, "model=attention_unet", "model.channels=[4,8,16]", "trainer.max_steps=2",
        "trainer.val_every=2", "logging.image_every=2",
    )
    run(cfg, tmp_path)
    acc = scalars(tmp_path)
    # input, label, prediction, weight + one attention map per skip (2 skips) = 6 panels
    image = acc.Images("train/sample")[0]
    assert image.width > 5 * image.height


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_resume_continues_exactly(make_cfg, tmp_path, dropout):
    common = [*TINY, "trainer.val_every=3", f"model.dropout={dropout}", "scheduler=constant"]
    straight = build_trainer(make_cfg(*common, "trainer.max_steps=8"), tmp_path / "a")
    straight.fit()
    first = build_trainer(make_cfg(*common, "trainer.max_steps=5"), tmp_path / "b")
    first.fit()
    resumed = build_trainer(
        make_cfg(*common, "trainer.max_steps=8", f"trainer.resume={tmp_path / 'b'}"),
        tmp_path / "c",
    )
    assert resumed.step == 5
    resumed.fit()
    a, c = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == c.keys()
    for key in a:
        torch.testing.assert_close(a[key], c[key], rtol=0, atol=1e-6, msg=key)


def test_resuming_another_model_names_the_first_mismatched_key(make_cfg, tmp_path):
    first = build_trainer(make_cfg(*TINY), tmp_path / "a")
    first.save_checkpoint("last.pt")
    with pytest.raises(SegunetError, match=r"holds a different model \(Unexpected key"):
        build_trainer(
            make_cfg(*TINY, "model.channels=[4,8]", f"trainer.resume={tmp_path / 'a'}"),
            tmp_path / "b",
        )


def test_cli_trains_and_multiruns(tmp_path):
    args = [*TINY, "trainer.max_steps=2", "trainer.val_every=2", "model.channels=[4,8,16]"]
    done = run_in_process("train", "-m", "model=unet,attention_unet", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted(tmp_path.glob("multirun/train/*/*"))
    runs = [r for r in runs if r.is_dir()]
    assert len(runs) == 2, runs
    for r in runs:
        assert (r / "checkpoints" / "last.pt").is_file()
        assert list((r / "tensorboard").glob("events.out.tfevents.*"))
    assert "tensorboard --logdir" in done.stderr


def test_train_log_holds_the_console_lines_without_the_bar(tmp_path):
    """``train.log`` in the run folder: the lines the console showed (start, done), and the
    scalars its progress bar showed, one line per logging window and validation; no bar."""
    done = run_in_process("train", *TINY, "trainer.max_steps=2", "trainer.val_every=2",
                          "logging.progress=true", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train: 100%|" in done.stderr  # the bar was on the console
    log = (tmp_path / "run" / "train.log").read_text()
    shown = [line for line in done.stderr.splitlines() if line.startswith("segunet: ")]
    assert [line for line in shown if line in log] == shown and len(shown) == 2, shown
    assert "segunet: done at step 2: val dice " in log
    assert "segunet: step 2/2: val/loss " in log and "segunet: step 2/2: train/loss " in log
    assert "\r" not in log and "%|" not in log


def test_a_line_said_after_the_run_stays_out_of_its_log(tmp_path, monkeypatch):
    """A process that trains and then goes on (a Python session) does not append its later
    lines to the finished run's ``train.log``."""
    import logging

    from segunet.cli import dispatch
    from segunet.errors import say

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    try:
        with pytest.raises(SystemExit) as done:
            dispatch.main(["train", *TINY, "trainer.max_steps=1", "hydra.run.dir=run"])
        assert done.value.code == 0
        say("segunet: a line of whatever comes next")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "segunet: done at step 1" in log
    assert "whatever comes next" not in log


def test_train_log_holds_the_error_line(tmp_path):
    done = run_in_process("train", "data=folder", f"data.path={tmp_path / 'none'}",
                          "trainer.device=cpu", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("segunet: error: data folder ")
    assert error in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=unett"], "Could not find 'model/unett'"),
        (["trainer.max_stepz=3"], "max_stepz"),
        (["trainer.max_steps=abc"], "trainer.max_steps='abc' is not valid: expected int"),
        (["model.in_channels=3"], "set model.in_channels=1"),
        (["model=unet3d"], "use data=synthetic3d"),
        (["experiment=quickstart", "data.patch_size=[186,186]"], "180 or 188"),
        (["experiment=quickstart", "trainer.resume=/no/such/run"], "no checkpoint at /no/such/run"),
        (["trainer.device=cpu", "augment.device=cuda"], "use augment.device=auto"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, overrides, expected):
    done = run_in_process("train", *overrides, "data.n_train=1", "data.n_val=1", cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("segunet: error:"), lines
    assert expected in lines[0], lines[0]
    assert "Traceback" not in done.stderr


def test_full_error_env_shows_traceback(tmp_path, monkeypatch):
    """HYDRA_FULL_ERROR=1: the error propagates (Python prints its traceback), no one line."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(SegunetError, match="set model.in_channels=1") as info:
        run_in_process("train", "model.in_channels=3", "data.n_train=1", "data.n_val=1",
                       cwd=tmp_path)
    assert info.traceback[-1].name == "check_compatible"  # where it was raised


def test_3d_unet_trains_on_sparsely_annotated_volumes(make_cfg, tmp_path):
    cfg = make_cfg(
        *TINY, "model=unet3d", "model.channels=[4,8,16]", "data=synthetic3d",
        "data.shape=[20,40,40]", "data.patch_size=null", "data.sparse_every=3",
        "trainer.max_steps=3", "trainer.val_every=3", "trainer.batch_size=4",
    )
    trainer = build_trainer(cfg, tmp_path)
    labelled = ~trainer.data.train[0].ignore
    assert labelled[::3].all() and not labelled[1::3].any()  # one slice in three
    assert trainer.in_shape == (44, 44, 44) and trainer.out_shape == (4, 4, 4)
    # A batch of 4 patches lets validation take 4 large tiles, not 500 of 44**3 (a 4**3
    # output each), whose cost says nothing about sparse labels.
    assert trainer.val_tile == (60, 72, 76)
    final = trainer.fit()
    assert final["val/dice"] == pytest.approx(saved_metrics(tmp_path)["dice"])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def whole_image_metrics(trainer) -> dict[str, float]:
    """Validation loss, Dice and IoU from one pass of the net over each whole mirror-padded
    validation image: the reference for the tiled validation, free of any tiling."""
    counter, loss = OverlapCounter(trainer.data.num_classes), 0.0
    for volume in trainer.data.val:
        probs = torch.from_numpy(whole_image_reference(trainer.net, volume.image))[None]
        label, weight, ignore = (
            torch.from_numpy(getattr(volume, k))[None] for k in ("label", "weight", "ignore")
        )
        loss += trainer.criterion(probs.clamp_min(1e-12).log(), label, weight, ignore).item()
        counter.update(probs.argmax(1), label, ~ignore)
    return {"loss": loss / len(trainer.data.val), **counter.compute()}


def check_validates_and_saves(trainer, run_dir: Path) -> None:
    """The run validates, writes its checkpoints, and its last validation equals the
    whole-image reference (the weights have not changed since)."""
    final = trainer.fit()
    for name in ("last.pt", "best.pt"):
        assert (run_dir / "checkpoints" / name).is_file(), name
    expected = whole_image_metrics(trainer)
    assert final["val/loss"] == pytest.approx(expected["loss"], rel=1e-4)
    for key in ("dice", "iou"):
        assert final[f"val/{key}"] == pytest.approx(expected[key], abs=1e-3), key


# A 4-level valid U-Net starts its tiles 8 pixels apart; its smallest patch (92) predicts 4.
FOUR_LEVELS = [*TINY, "model.channels=[2,4,8,16]", "trainer.max_steps=2", "trainer.val_every=2",
               "trainer.batch_size=1"]


def test_patch_whose_output_is_shorter_than_the_pooling_step_validates(make_cfg, tmp_path):
    # 92: the size the patch-size error suggests for 90 (quickstart's 4 levels).
    trainer = build_trainer(make_cfg(*FOUR_LEVELS, "data.patch_size=[92,92]"), tmp_path)
    assert trainer.out_shape == (4, 4)
    check_validates_and_saves(trainer, tmp_path)


def test_folder_with_a_tiny_image_and_the_automatic_patch(make_cfg, tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for name, shape in [("a", (40, 48)), ("b", (36, 40)), ("c", (6, 6))]:  # c validates
        label = np.zeros(shape, np.uint16)
        label[1 : shape[0] // 2, 2 : shape[1] // 2] = 1
        tifffile.imwrite(tmp_path / "data" / "images" / f"{name}.tif",
                         rng.integers(0, 255, shape, dtype=np.uint8))
        tifffile.imwrite(tmp_path / "data" / "masks" / f"{name}.tif", label)
    not_synthetic = [o for o in FOUR_LEVELS if not o.startswith("data.")]
    cfg = make_cfg(*not_synthetic, "data=folder", f"data.path={tmp_path / 'data'}",
                   "data.val_fraction=0.3", "data.patch_size=null")
    trainer = build_trainer(cfg, tmp_path / "run")
    assert [v.spatial_shape for v in trainer.data.val] == [(6, 6)]
    assert trainer.in_shape == (92, 92) and trainer.out_shape == (4, 4)
    check_validates_and_saves(trainer, tmp_path / "run")


def test_small_volume_with_the_automatic_patch(make_cfg, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((20, 40, 40), np.uint16)
    labels[:, 8:20, 10:30] = 1
    write_array(tmp_path / "v.h5", rng.integers(0, 255, labels.shape, np.uint8), key="raw")
    write_array(tmp_path / "v.h5", labels, key="labels")
    not_synthetic = [o for o in FOUR_LEVELS if not o.startswith("data.")]
    cfg = make_cfg(*not_synthetic, "model=unet3d", "data=volume", f"data.path={tmp_path / 'v.h5'}",
                   "data.patch_size=null")
    trainer = build_trainer(cfg, tmp_path / "run")
    assert trainer.data.val[0].spatial_shape == (2, 40, 40)  # the last Z slices validate
    assert trainer.in_shape == (92,) * 3 and trainer.out_shape == (4,) * 3
    check_validates_and_saves(trainer, tmp_path / "run")


def readme_3d_commands() -> list[list[str]]:
    """The overrides of the README's ``segunet train`` lines for the synthetic 3D data."""
    readme = (ROOT / "README.md").read_text().splitlines()
    lines = [line.split("#")[0] for line in readme if line.startswith("segunet train ")]
    return [shlex.split(line)[2:] for line in lines if "data=synthetic3d" in line]


def test_readme_3d_commands_validate_at_a_small_width(make_cfg, tmp_path):
    # As written but 4 levels of 2..16 channels, 1 step and 3 volumes; the automatic patch
    # (92x100x100) predicts 4x12x12 voxels with tiles 8 apart.
    short = ["model.channels=[2,4,8,16]", "trainer.max_steps=1", "trainer.val_every=1",
             "data.n_train=2", "data.n_val=1", "trainer.device=cpu", "logging.progress=false"]
    plain, sparse = sorted(readme_3d_commands(), key=lambda c: "data.sparse_every=4" in c)
    configs = [
        make_cfg(*[o for o in c if not o.startswith("model.channels=")], *short)
        for c in (plain, sparse)
    ]
    # The commands differ in the training volumes' sparse labels alone: the same model, data
    # shapes and validation, so the sparse one is trained and checked for both.
    plain_config, sparse_config = (OmegaConf.to_container(c, resolve=True) for c in configs)
    assert config_changes(plain_config, sparse_config) == {"data.sparse_every": (None, 4)}
    trainer = build_trainer(configs[1], tmp_path)
    assert trainer.out_shape == (4, 12, 12)
    # Validation tiles: not 864 of 100**3 voxels (-> 12**3) but the predictor's default
    # 132**3 (-> 44**3), 18 of them: within one training batch of 4 x 92x100x100 voxels.
    assert (trainer.val_tile, trainer.val_batch) == ((132, 132, 132), 1)
    check_validates_and_saves(trainer, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_path_trains_and_checkpoints_load_on_cpu(make_cfg, tmp_path):
    cfg = make_cfg(
        *TINY, "trainer.device=cuda", "trainer.max_steps=6", "trainer.val_every=3",
        "logging.log_every=3",
    )
    trainer = build_trainer(cfg, tmp_path)
    assert trainer.amp_dtype is torch.bfloat16 and trainer.augment_on_device()
    final = trainer.fit()
    assert final["val/dice"] == pytest.approx(saved_metrics(tmp_path)["dice"])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    cpu_model = instantiate(cfg.model)
    cpu_model.load_state_dict(ckpt["model"])
    assert "train/gpu_memory_gb" in scalars(tmp_path).Tags()["scalars"]


class _BrokenCompile(torch.nn.Module):
    """Stands in for what torch.compile returns: a compiler that fails at the first call in
    training (after drawing from the RNG, as a partly run step would) or in evaluation."""

    def __init__(self, module: torch.nn.Module, fail_in: str) -> None:
        super().__init__()
        self.module, self.fail_in = module, fail_in

    def forward(self, x):
        if self.fail_in == ("train" if self.training else "eval"):
            torch.rand(8)
            raise RuntimeError("no working C++ compiler\n(pages of compiler output)")
        return self.module(x)


def _failing_backend(graph_module, example_inputs):
    raise RuntimeError("no working C++ compiler\n(pages of compiler output)")


# Dropout draws from the global RNG: a fallback must leave it as an eager run would.
COMPILE_RUN = [*TINY, "model.dropout=0.3", "trainer.max_steps=3", "trainer.val_every=2",
               "logging.log_every=1"]


@pytest.fixture(scope="module")
def eager_weights(tmp_path_factory):
    """The final weights of COMPILE_RUN trained eagerly, once for the compile tests."""
    cache = {}

    def get(make_cfg):
        if not cache:
            run_dir = tmp_path_factory.mktemp("eager")
            trainer = build_trainer(make_cfg(*COMPILE_RUN, "trainer.compile=false"), run_dir)
            assert trainer.model is trainer.net
            trainer.fit()
            cache["model"] = torch.load(run_dir / "checkpoints" / "last.pt")["model"]
        return cache["model"]

    return get


@pytest.mark.parametrize("fail_in", ["train", "eval", "backend"])
def test_compile_failure_falls_back_to_eager_with_one_warning(
    make_cfg, tmp_path, monkeypatch, eager_weights, fail_in
):
    reference = eager_weights(make_cfg)
    real_compile = torch.compile
    if fail_in == "backend":  # real dynamo tracing, a backend that raises
        monkeypatch.setattr(torch, "compile", lambda m: real_compile(m, backend=_failing_backend))
    else:
        monkeypatch.setattr(torch, "compile", lambda m: _BrokenCompile(m, fail_in))
    trainer = build_trainer(make_cfg(*COMPILE_RUN, "trainer.compile=true"), tmp_path)
    assert trainer.model is not trainer.net
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit()
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1, messages
    assert "RuntimeError: no working C++ compiler)" in messages[0]
    assert "pages of" not in messages[0]
    assert ("validation" if fail_in == "eval" else "first training step") in messages[0]
    assert trainer.eval_model is trainer.net
    assert (trainer.model is trainer.net) is (fail_in != "eval")  # eval: training still compiled
    weights = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert weights.keys() == reference.keys()
    for key in reference:  # the same RNG draws (dropout) as the eager run: equal weights
        torch.testing.assert_close(weights[key], reference[key], rtol=0, atol=0, msg=key)


def test_compiled_training_equals_eager_and_saves_clean_keys(
    make_cfg, tmp_path, monkeypatch, eager_weights
):
    reference = eager_weights(make_cfg)
    real_compile = torch.compile
    # Dynamo's real tracing and guards; the "eager" backend needs no C++ toolchain.
    monkeypatch.setattr(torch, "compile", lambda m: real_compile(m, backend="eager"))
    trainer = build_trainer(make_cfg(*COMPILE_RUN, "trainer.compile=true"), tmp_path)
    assert type(trainer.model).__name__ == "OptimizedModule"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit()
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    assert trainer.compiling and trainer.eval_model is trainer.model
    weights = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert weights.keys() == reference.keys()  # no "_orig_mod." prefix
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    # The first step compiles: images/s starts counting after it.
    speeds = scalars(tmp_path).Scalars("train/images_per_s")
    assert [e.step for e in speeds] == [2, 3]


@pytest.mark.parametrize(
    ("value", "device", "expected"),
    [
        ("auto", "cpu", False),
        ("auto", "cuda", True),
        (True, "cpu", True),
        (True, "cuda", True),
        (False, "cpu", False),
        (False, "cuda", False),
    ],
)
def test_compile_auto_is_on_for_cuda_only(value, device, expected):
    from segunet.train.settings import resolve_compile

    assert resolve_compile(value, torch.device(device)) is expected


def test_unknown_compile_value_is_refused(make_cfg):
    assert config_error(make_cfg, "trainer", "trainer.compile=maybe") == (
        "trainer.compile='maybe' is not valid: expected one of true, false, auto")


def test_a_strided_batch_is_made_contiguous_on_the_cpu(make_cfg, tmp_path):
    """Augmentation can return a non-contiguous view (a quickstart run crashed at step ~190
    with 'preserve memory format is unsupported by the contiguous operator')."""
    trainer = build_trainer(make_cfg(*TINY), tmp_path)
    batch = next(iter(trainer.loader()))
    batch["image"] = batch["image"].transpose(-1, -2)
    assert not batch["image"].is_contiguous()
    out = trainer.to_device(batch)  # as prepare() does before and after augmenting
    assert out["image"].is_contiguous()
    torch.testing.assert_close(out["image"], batch["image"].contiguous(), rtol=0, atol=0)


def test_hydra_flags_of_the_readme_work(tmp_path):
    """`--cfg job` prints the composed config and trains nothing; `--config-dir` adds a
    user's own options; flags may come between overrides."""
    done = run_in_process("train", "--cfg", "job", "experiment=quickstart", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "channels:\n  - 16\n  - 32" in done.stdout
    assert not (tmp_path / "outputs").exists()
    mine = tmp_path / "conf" / "data"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("defaults:\n  - synthetic\n  - _self_\nn_train: 3\n")
    done = run_in_process("train", "data.n_val=2", "--config-dir", str(tmp_path / "conf"),
                          "data=mine", "--cfg", "job", "-p", "data", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "n_train: 3\nn_val: 2\n" in done.stdout


def test_the_summary_lists_only_the_checkpoints_written(make_cfg, tmp_path, capsys,
                                                        monkeypatch):
    """A run resumed into a new folder whose validation never beats the best of the run it
    continues writes no best.pt there; its summary must not list one. (A validation score
    that is not a number stops the run instead: test_guards_train.)"""
    monkeypatch.setattr("segunet.train.trainer.Trainer.validate", lambda self: {
        "loss": 0.5, "dice": 0.5, "iou": 0.3})
    run(make_cfg(*TINY, "trainer.max_steps=2", "trainer.val_every=2"), tmp_path / "a")
    run(make_cfg(*TINY, "trainer.max_steps=4", "trainer.val_every=2",
                 f"trainer.resume={tmp_path / 'a'}"), tmp_path / "b")
    assert not (tmp_path / "b" / "checkpoints" / "best.pt").exists()
    assert f"checkpoints: {tmp_path / 'b' / 'checkpoints'} (last.pt)\n" in capsys.readouterr().err


def test_checkpoints_record_the_training_object_sizes(make_cfg, tmp_path):
    """What predict's scale=auto scales to: quartiles over the training images of their
    median object width, by scikit-image's equivalent diameter."""
    from skimage.measure import regionprops

    from segunet.checkpoint import Trained, object_sizes_of

    trainer = build_trainer(make_cfg(*TINY), tmp_path)
    medians = [np.median([p.equivalent_diameter_area for p in regionprops(v.instances)])
               for v in trainer.data.train]
    low, mid, high = np.percentile(medians, [25, 50, 75])
    record = trainer.state()["object_size"]
    assert record["diameter"] == pytest.approx(mid, abs=1e-3)
    assert record["range"] == pytest.approx([low, high], abs=1e-3)
    trained = Trained(None, {}, None, tmp_path, None, record)
    assert object_sizes_of(trained) == pytest.approx((low, mid, high), abs=1e-3)


def test_checkpoints_record_the_training_pixel_size(make_cfg, tmp_path):
    """As the bioimage.io export reads it: an entry of its own and the stored config."""
    from segunet.checkpoint import pixel_size_of

    state = build_trainer(make_cfg(*TINY, "data.pixel_size=[0.5,0.25]"), tmp_path).state()
    assert state["pixel_size"] == {"size": [0.5, 0.25], "unit": "micrometer"}
    assert state["config"]["data"]["pixel_size"] == [0.5, 0.25]
    assert pixel_size_of(state) == ([0.5, 0.25], "micrometer")
    unknown = build_trainer(make_cfg(*TINY), tmp_path / "other").state()
    assert unknown["pixel_size"] is None and pixel_size_of(unknown) is None
    assert config_error(make_cfg, "data", *TINY, "data.pixel_size=[-1]").startswith(
        "data.pixel_size=[-1")
