"""Export to ONNX and TorchScript: round trips against PyTorch, the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import save_tiny_checkpoint

from segunet.checkpoint import load_model
from segunet.cli.export import run as main
from segunet.errors import SegunetError
from segunet.export.run import export_model

KINDS = ["unet_valid", "unet_same", "attention_unet"]


def reference(ckpt, x: np.ndarray) -> np.ndarray:
    model, _ = load_model(ckpt)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_torchscript_round_trip(tmp_path, kind):
    ckpt = save_tiny_checkpoint(tmp_path, kind)
    path = export_model(ckpt, "torchscript")
    assert path == ckpt.with_name("last.torchscript.pt") and path.is_file()
    extra = {"segunet.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["segunet.json"])["padding"] in ("valid", "same")
    # A size other than the traced one: the spatial axes are dynamic.
    x = np.random.default_rng(0).normal(size=(3, 1, 60, 76)).astype(np.float32)
    with torch.no_grad(), torch.jit.optimized_execution(False):  # no slow JIT warm-up
        got = loaded(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, reference(ckpt, x), atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_round_trip(tmp_path, kind):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    ckpt = save_tiny_checkpoint(tmp_path, kind)
    out = tmp_path / "export" / "model.onnx"
    assert export_model(tmp_path, "onnx", output=out, input_shape=(44, 44)) == out
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["in_channels"] == "1" and "valid_input_sizes" in props
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(2, 1, 60, 76)).astype(np.float32)
    got = session.run(None, {"image": x})[0]
    np.testing.assert_allclose(got, reference(ckpt, x), atol=1e-4)


def test_3d_torchscript(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path, "unet_same", spatial_dims=3)
    path = export_model(ckpt, "torchscript", input_shape=(8, 12, 12))
    x = np.random.default_rng(2).normal(size=(1, 1, 12, 16, 8)).astype(np.float32)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        got = torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, reference(ckpt, x), atol=1e-4)


def test_failed_verification_writes_nothing(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path, "unet_same")
    with pytest.raises(SegunetError, match="differs from PyTorch"):
        export_model(ckpt, "torchscript", atol=0.0)  # nothing is below 0
    assert not ckpt.with_name("last.torchscript.pt").exists()
    assert [p.name for p in ckpt.parent.iterdir()] == ["last.pt"]  # no temp file either


def test_command_line(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path, "unet_same")
    out = tmp_path / "m.pt"
    assert main([f"checkpoint={tmp_path}", "format=torchscript", f"output={out}"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().err
    assert main([f"checkpoint={tmp_path}", "format=tflite"]) == 2
    assert "format='tflite' is not valid" in capsys.readouterr().err
    assert main(["format=onnx"]) == 2
    assert "give checkpoint=<file or run folder> or model=<nuclei>" in capsys.readouterr().err
    assert main([f"checkpoint={tmp_path}", "colour=red"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'colour'" in err
    assert main([f"checkpoint={tmp_path / 'nope'}"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_output_folder_gets_the_default_name_and_existing_files_are_kept(tmp_path, capsys):
    """output=<folder> used to be an IsADirectoryError traceback (after the whole export),
    and an existing file was replaced without asking, unlike predict."""
    save_tiny_checkpoint(tmp_path, "unet_same")
    folder = tmp_path / "exports"
    folder.mkdir()
    args = [f"checkpoint={tmp_path}", "format=torchscript", "verify=false"]
    assert main([*args, f"output={folder}"]) == 0
    written = folder / "last.torchscript.pt"
    assert written.is_file() and str(written) in capsys.readouterr().err
    torch.jit.load(str(written))  # a whole TorchScript file
    before = written.stat().st_mtime_ns
    for output in (folder, written):  # again, into the folder or to the file: refused
        assert main([*args, f"output={output}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"output {written} exists" in err
        assert "overwrite=true" in err and written.stat().st_mtime_ns == before
    assert main([*args, f"output={written}", "overwrite=true"]) == 0
    assert written.stat().st_mtime_ns != before
    # A folder that does not exist yet, named by its trailing '/'.
    assert main([*args, f"output={tmp_path / 'new'}/"]) == 0
    assert (tmp_path / "new" / "last.torchscript.pt").is_file()
    # The default, beside the checkpoint, follows the same rule.
    assert main(args) == 0
    assert main(args) == 2
    assert "last.torchscript.pt exists" in capsys.readouterr().err


def test_output_under_a_file_is_one_line_before_exporting(tmp_path, capsys):
    save_tiny_checkpoint(tmp_path, "unet_same")
    (tmp_path / "taken").write_text("a file")
    output = tmp_path / "taken" / "m.pt"
    assert main([f"checkpoint={tmp_path}", "format=torchscript", f"output={output}"]) == 2
    err = capsys.readouterr().err
    assert err == (f"segunet: error: output={output}: {tmp_path / 'taken'} is a file, not a "
                   "folder; give a folder\n")


def test_a_run_folder_exports_the_checkpoint_predict_uses(tmp_path):
    """Its best.pt where it has one: the export then gives what `segunet predict
    checkpoint=<run>` gives (last.pt's weights differ here, as they do after training)."""
    from segunet.checkpoint import load_trained, save_atomic

    last = save_tiny_checkpoint(tmp_path, "unet_same")
    state = torch.load(last, weights_only=True)
    best = {**state, "model": {k: v + 0.01 if v.is_floating_point() else v
                               for k, v in state["model"].items()}}
    save_atomic(best, last.with_name("best.pt"))
    path = export_model(tmp_path, "torchscript")
    assert path == last.with_name("best.torchscript.pt")
    x = np.random.default_rng(3).normal(size=(1, 1, 48, 48)).astype(np.float32)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        got = torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
        used = load_trained(tmp_path).model(torch.from_numpy(x)).numpy()  # as predict loads
        other = load_model(last)[0](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, used, atol=1e-4)
    assert np.abs(got - other).max() > 1e-3
