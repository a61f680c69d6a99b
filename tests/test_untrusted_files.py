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
from helpers import TINY, run_in_process, save_tiny_checkpoint
from hydra.errors import ConfigCompositionException

from segunet import export, predict_cli
from segunet.config import check_all_targets
from segunet.errors import SegunetError
from segunet.train import build_trainer

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
    status = predict_cli.main([f"checkpoint={path}", f"input={image}",
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
    assert export.main([f"checkpoint={path}", f"format={fmt}"]) == 2
    assert not marker.exists()
    assert PAYLOAD in error_of(capsys)
    assert not list(tmp_path.glob(written))


@pytest.mark.parametrize("where", ["model", "nested", "data"])
def test_tune_refuses_a_poisoned_checkpoint(tmp_path, capsys, where):
    from segunet import tune

    path, marker = poisoned(tmp_path, where)
    assert tune.main([f"checkpoint={path}"]) == 2
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
