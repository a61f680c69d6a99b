"""A checkpoint or config a user was sent never runs code: every entry point that builds
something from one refuses any ``_target_`` but segunet's own constructors, before building.

The payload is ``pathlib.Path.touch``: had it run, its file would exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import TINY, blobs, run_in_process, save_tiny_checkpoint
from hydra.errors import ConfigCompositionException

from segunet.cli import export
from segunet.cli import predict as predict_cli
from segunet.config.compose import check_all_targets
from segunet.errors import SegunetError
from segunet.train.trainer import build_trainer

PAYLOAD = "pathlib.Path.touch"


def payload(marker: Path) -> dict:
    return {"_target_": PAYLOAD, "self": str(marker)}


def poisoned(tmp_path: Path, where: str) -> tuple[Path, Path]:
    """A real tiny checkpoint whose stored config calls the payload at ``where``: the model
    itself, a nested argument of the model, or another group. Returns (file, marker)."""
    ckpt_file = save_tiny_checkpoint(tmp_path / "run")
    ckpt = torch.load(ckpt_file, weights_only=True)
    marker = tmp_path / f"ran-{where}"
    if where == "model":
        ckpt["config"]["model"] = payload(marker)
    elif where == "nested":
        ckpt["config"]["model"]["norm"] = payload(marker)
    elif where == "data":  # what `segunet tune` rebuilds to find the validation images
        ckpt["config"]["data"] = payload(marker)
    else:
        ckpt["config"]["optim"] = payload(marker)
    path = tmp_path / f"evil-{where}.pt"
    torch.save(ckpt, path)
    return path, marker


def error_of(capsys) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("segunet: error")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("where", ["model", "nested"])
def test_predict_refuses_a_poisoned_checkpoint(tmp_path, capsys, where):
    path, marker = poisoned(tmp_path, where)
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((40, 40), np.uint8))
    status = predict_cli.run([f"checkpoint={path}", f"input={image}",
                               f"output={tmp_path / 'out'}"])
    assert status == 2
    assert not marker.exists()
    assert PAYLOAD in error_of(capsys)


@pytest.mark.parametrize(
    ("fmt", "where", "written"),
    [("torchscript", w, "*.torchscript.pt") for w in ("model", "nested")]
    # A bioimage.io package's test image is a validation image of the rebuilt data source.
    + [("bioimageio", w, "*.zip") for w in ("model", "nested", "data")],
)
def test_export_refuses_a_poisoned_checkpoint(tmp_path, capsys, fmt, where, written):
    path, marker = poisoned(tmp_path, where)
    assert export.run([f"checkpoint={path}", f"format={fmt}"]) == 2
    assert not marker.exists()
    assert PAYLOAD in error_of(capsys)
    assert not list(tmp_path.glob(written))


@pytest.mark.parametrize("where", ["model", "nested", "data"])
def test_tune_refuses_a_poisoned_checkpoint(tmp_path, capsys, where):
    from segunet.cli import tune

    path, marker = poisoned(tmp_path, where)
    assert tune.run([f"checkpoint={path}"]) == 2
    assert not marker.exists()
    assert PAYLOAD in error_of(capsys)


@pytest.mark.parametrize("where", ["model", "nested", "optim"])
def test_resume_refuses_a_poisoned_checkpoint_before_building(make_cfg, tmp_path, where):
    path, marker = poisoned(tmp_path, where)
    with pytest.raises(SegunetError, match="refusing"):
        build_trainer(make_cfg(*TINY, f"trainer.resume={path}"), tmp_path / "new")
    assert not marker.exists()


def test_a_poisoned_config_folder_does_not_run(tmp_path):
    """A config folder a user was sent (``--config-dir``), for train and weightmaps."""
    marker = tmp_path / "ran"
    folder = tmp_path / "conf"
    for group in ("model", "data"):
        (folder / group).mkdir(parents=True)
        (folder / group / "evil.yaml").write_text(
            f"_target_: {PAYLOAD}\nself: {marker}\n"
        )
    for command, override in (("train", "model=evil"), ("weightmaps", "data=evil")):
        done = run_in_process(command, "--config-dir", str(folder), override, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert not marker.exists()
        assert done.stderr.strip().splitlines()[-1].startswith("segunet: error:"), done.stderr
        assert "refusing" in done.stderr and "Traceback" not in done.stderr


def test_a_nested_target_on_the_command_line_is_refused(make_cfg, tmp_path):
    marker = tmp_path / "ran"
    nested = f"{{_target_:{PAYLOAD},self:{marker}}}"
    # A typed key takes no config node at all; an added key is refused before building.
    with pytest.raises(ConfigCompositionException, match=r"model\.norm"):
        make_cfg(*TINY, f"+model.norm={nested}")
    cfg = make_cfg(*TINY, f"+model.extra={nested}")
    with pytest.raises(SegunetError, match=r"model\.extra\._target_"):
        build_trainer(cfg, tmp_path / "run")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("group", "target", "allowed"),
    [
        ("optim", "torch.optim.AdamW", True),
        ("optim", "torch.optim.Optimizer.zero_grad", False),
        ("optim", "torch.optim._functional", False),
        ("optim", "os.system", False),
        ("scheduler", "torch.optim.lr_scheduler.OneCycleLR", True),
        ("scheduler", "torch.optim.lr_scheduler.warnings", False),
        ("model", "segunet.models.UNet", True),
        ("model", "segunet.models.unet.torch.load", False),
        ("loss", "torch.nn.CrossEntropyLoss", False),
    ],
)
def test_allowed_targets(group, target, allowed):
    config = {group: {"_target_": target}}
    if allowed:
        check_all_targets(config, "test")
    else:
        with pytest.raises(SegunetError, match="refusing"):
            check_all_targets(config, "test")


# --- a stored config is taken literally, and its data rebuilt only where the user says --------

SECRET = "s3cr3t-t0ken-value"


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run trained a few steps on a folder of three images (its object metric makes it
    tunable), its checkpoint the template of the received files below."""
    root = tmp_path_factory.mktemp("folder_run")
    for i in range(3):
        labels = blobs((96, 96), 6, i, radius=8)
        image = (labels > 0) * 120 + np.random.default_rng(i).integers(0, 60, labels.shape)
        for sub, array in (("images", image.astype(np.uint8)), ("masks", labels.astype(np.uint16))):
            (root / "data" / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / "data" / sub / f"{i}.tif", array)
    run = root / "run"
    done = run_in_process(
        "train", "experiment=quickstart", "data=folder", f"data.path={root / 'data'}",
        "data.val_fraction=0.34", "data.metric=ap", "data.patch_size=[76,76]",
        "model.channels=[4,8,16]", "trainer.batch_size=2",
        "trainer.device=cpu", "trainer.max_steps=2", "trainer.val_every=2",
        "postprocess.enabled=false", "logging.progress=false", f"hydra.run.dir={run}",
        cwd=root)
    assert done.returncode == 0, done.stderr
    return run / "checkpoints" / "last.pt"


def received(template: Path, folder: Path, edit) -> Path:
    """A copy of ``template`` in ``folder`` (as a run folder) with ``edit(ckpt)`` applied."""
    ckpt = torch.load(template, weights_only=True)
    edit(ckpt)
    path = folder / "received" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path


def set_key(dotted: str, value):
    """An edit of :func:`received` that sets ``config.<dotted>`` to ``value``."""

    def edit(ckpt):
        *parents, last = dotted.split(".")
        node = ckpt["config"]
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


@pytest.mark.parametrize("command", ["predict", "export", "tune"])
def test_an_interpolation_in_a_stored_config_is_refused_unresolved(
        folder_run, tmp_path, capsys, monkeypatch, command):
    """``${oc.env:...}`` in a received checkpoint was resolved by predict, and the secret
    printed in its error."""
    from segunet.cli import tune

    monkeypatch.setenv("SEGUNET_TEST_SECRET", SECRET)
    path = received(folder_run, tmp_path, set_key("model.padding", "${oc.env:SEGUNET_TEST_SECRET}"))
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((40, 40), np.uint8))
    main, args = {
        "predict": (predict_cli.run, [f"input={image}", f"output={tmp_path / 'out'}"]),
        "export": (export.run, ["format=torchscript"]),
        "tune": (tune.run, []),
    }[command]
    assert main([f"checkpoint={path}", *args]) == 2
    line = error_of(capsys)
    assert SECRET not in line and "config.model.padding holds an interpolation" in line
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("key", ["trainer.resume", "trainer.init_from"])
def test_train_refuses_an_interpolation_in_the_checkpoint_it_reads(
        folder_run, make_cfg, tmp_path, monkeypatch, key):
    monkeypatch.setenv("SEGUNET_TEST_SECRET", SECRET)
    path = received(folder_run, tmp_path, set_key("optim.lr", "${oc.env:SEGUNET_TEST_SECRET}"))
    with pytest.raises(SegunetError, match=r"config\.optim\.lr holds an interpolation") as e:
        build_trainer(make_cfg(*TINY, f"{key}={path}"), tmp_path / "new")
    assert SECRET not in str(e.value)


def test_tune_refuses_an_interpolated_cache_dir_before_building(folder_run, tmp_path, capsys,
                                                                monkeypatch):
    """``data.targets.cache_dir=${oc.env:HOME}/...``: tune rebuilt all the training data and
    wrote its weight maps there before it refused."""
    from segunet.cli import tune

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SEGUNET_TEST_HOME", str(home))
    path = received(folder_run, tmp_path,
                    set_key("data.targets.cache_dir", "${oc.env:SEGUNET_TEST_HOME}/cache"))
    assert tune.run([f"checkpoint={path}"]) == 2
    assert "config.data.targets.cache_dir holds an interpolation" in error_of(capsys)
    assert list(home.iterdir()) == []


def test_tune_writes_nothing_into_a_stored_cache_dir(folder_run, tmp_path, capsys):
    """The cache folder a checkpoint names is a folder of the machine that trained it: tune
    rebuilds the data without writing there (it wrote the weight maps of every image)."""
    from segunet.cli import tune

    elsewhere = tmp_path / "their" / "cache"
    path = received(folder_run, tmp_path, set_key("data.targets.cache_dir", str(elsewhere)))
    assert tune.run([f"checkpoint={path}"]) == 0, capsys.readouterr().err
    assert not elsewhere.exists()
    assert torch.load(path, weights_only=True)["postprocess"]["metric"] == "ap"


def test_moved_training_data_names_the_option_of_each_command(folder_run, tmp_path, capsys):
    """tune and export said "set data.path", which neither takes; export's test_image= hint
    was lost. tune takes data_path=, export test_image=."""
    from segunet.cli import tune

    data = Path(torch.load(folder_run, weights_only=True)["config"]["data"]["path"])
    path = received(folder_run, tmp_path, set_key("data.path", str(tmp_path / "gone")))
    assert tune.run([f"checkpoint={path}"]) == 2
    line = error_of(capsys)
    assert "pass data_path=<where the training data is now>" in line
    assert "data.path (now" not in line
    assert export.run([f"checkpoint={path}", "format=bioimageio"]) == 2
    assert "no test image without it: pass test_image=<an image like the training data>" in (
        error_of(capsys))
    assert tune.run([f"checkpoint={path}", f"data_path={data}"]) == 0, capsys.readouterr().err
    assert torch.load(path, weights_only=True)["postprocess"]["metric"] == "ap"


def poison_weight(ckpt):
    ckpt["model"]["head.bias"][0] = float("nan")


def blow_up_model(ckpt):
    # 65536 channels at the bottom: tens of GB of weights, the file holds a few KB.
    ckpt["config"]["model"]["channels"] = [4, 8, 65536]


def huge_views(ckpt):
    from hydra.utils import instantiate

    blow_up_model(ckpt)
    with torch.device("meta"):
        shapes = instantiate(ckpt["config"]["model"]).state_dict()
    ckpt["model"] = {k: torch.zeros(1, dtype=v.dtype).expand(v.shape) for k, v in shapes.items()}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # A diverged run's weights: every probability predict wrote was NaN, with exit 0.
        (poison_weight, "weight head.bias holds NaN or infinite values"),
        # The model entry no state dict: an AttributeError traceback.
        (lambda ckpt: ckpt.update(model=5), "its 'model' entry holds no weights"),
        # Weights of that size stored in a few bytes each (views of one number) fit the
        # config, so only the stored data can bound what is built.
        (huge_views, "weight encoders.0.0.weight of shape (4, 1, 3, 3) is larger than the "
                     "data stored for it"),
        # A config that does not fit its weights: built on the meta device first, it
        # allocates nothing (it tried to allocate 154 GB).
        (blow_up_model, "weights do not fit its model config (size mismatch for "
                        "bottom.0.weight"),
        # A recorded pixel size that is no number: a ValueError traceback.
        (lambda ckpt: ckpt.update(pixel_size={"size": ["abc"], "unit": "micrometer"}),
         "its pixel_size ['abc'] is not valid: expected positive sizes"),
        (set_key("data.pixel_size", ["0.5um"]),
         "its config.data.pixel_size ['0.5um'] is not valid: expected positive sizes"),
        # What scale=auto resamples inputs to.
        (lambda ckpt: ckpt.update(object_size={"diameter": "big", "range": [1, 2]}),
         "its object_size {'diameter': 'big', 'range': [1, 2]} is not a diameter and a range "
         "around it, in pixels"),
        (lambda ckpt: ckpt.update(object_size={"diameter": 30.0, "range": [1, 2]}),
         "is not a diameter and a range around it"),
        # What predict normalises by: ValueError and AttributeError tracebacks.
        (set_key("data.percentiles", "abc"), "its config.data.percentiles 'abc' is not valid"),
        (set_key("data.percentiles", [-5, 200]),
         "its config.data.percentiles [-5, 200] is not valid: expected two percentiles 0 <= "
         "low <= high <= 100"),
        (lambda ckpt: ckpt["config"].update(data=5), "its config.data is no mapping"),
    ],
)
def test_entries_a_checkpoint_cannot_hold_are_refused_on_load(folder_run, tmp_path, capsys,
                                                             edit, expected):
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((40, 40), np.uint8))
    path = received(folder_run, tmp_path, edit)
    out = tmp_path / "out"
    assert predict_cli.run([f"checkpoint={path}", f"input={image}", f"output={out}"]) == 2
    assert expected in error_of(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        # A numpy ufunc traceback from the decoding.
        ({"threshold": "abc"}, "postprocess.settings.threshold='abc' is not valid: expected "
                               "float"),
        # Every pixel foreground, one object per image, exit 0.
        ({"threshold": -2.0}, "postprocess.settings.threshold=-2.0 is not valid: expected 0 "
                              "to 1"),
    ],
)
def test_tuned_settings_out_of_range_are_refused_and_tune_replaces_them(
        folder_run, tmp_path, capsys, settings, expected):
    from segunet.cli import tune

    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.zeros((40, 40), np.uint8))
    path = received(folder_run, tmp_path, lambda ckpt: ckpt.update(
        postprocess={"settings": settings, "metric": "ap", "target": "foreground"}))
    args = [f"checkpoint={path}", f"input={image}", f"output={tmp_path / 'out'}"]
    assert predict_cli.run(args) == 2
    line = error_of(capsys)
    assert expected in line and f"segunet tune checkpoint={path} searches it again" in line
    assert not (tmp_path / "out").exists()
    assert tune.run([f"checkpoint={path}"]) == 0, capsys.readouterr().err
    assert predict_cli.run(args) == 0, capsys.readouterr().err


def test_tune_never_rewrites_a_shipped_model(tmp_path, capsys):
    """With data_path= its training data can be found anywhere; the file stays as shipped."""
    from segunet import pretrained
    from segunet.cli import tune

    shipped = pretrained.path_of("nuclei")
    before = shipped.read_bytes()
    assert tune.run([f"checkpoint={shipped}", f"data_path={tmp_path}"]) == 2
    assert "ships with segunet and is not rewritten" in error_of(capsys)
    assert shipped.read_bytes() == before


@pytest.mark.parametrize("damage", ["overrides", "metrics"])
def test_a_bioimageio_package_of_a_damaged_run_folder(folder_run, tmp_path, capsys, damage):
    """The README of a package reads the run's .hydra/overrides.yaml and the scores stored
    in the checkpoint: a broken YAML file or a score that is no number was a traceback.
    What cannot be read is left out of the README; the package is still written."""
    import zipfile

    path = received(folder_run, tmp_path, set_key("data.path", str(tmp_path)))  # data unread
    if damage == "overrides":
        (path.parent.parent / ".hydra").mkdir()
        (path.parent.parent / ".hydra" / "overrides.yaml").write_text("a: [\n")
    else:
        ckpt = torch.load(path, weights_only=True)
        torch.save({**ckpt, "metrics": {"ap": "high"}, "best_metric": "x"}, path)
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (96, 96), np.uint8))
    out = tmp_path / "package.zip"
    assert export.run([f"checkpoint={path}", "format=bioimageio", f"test_image={image}",
                        "verify=false", f"output={out}", "license=MIT"]) == 0, (
        capsys.readouterr().err)
    readme = zipfile.ZipFile(out).read("README.md").decode()
    if damage == "metrics":
        assert "| ap | unknown |" in readme and "during training: unknown" in readme
