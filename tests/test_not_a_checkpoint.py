"""A file that is no segunet checkpoint, given where one is expected (predict, export,
trainer.resume), is one line saying so: never torch's advice to load it with
weights_only=False, which would run whatever code the file holds."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from helpers import TINY, run_in_process, save_tiny_checkpoint


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Files users mistake for checkpoints, and what the message should call them."""
    folder = tmp_path_factory.mktemp("foreign")
    tifffile.imwrite(folder / "image.tif", np.zeros((30, 20, 20), np.uint8))
    (folder / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")  # a protobuf's start
    np.save(folder / "array.npy", np.zeros(3))
    torch.save({"model": torch.nn.Linear(2, 2)}, folder / "whole_model.pt")  # a pickled module
    return folder, {
        "image.tif": "a TIFF image", "model.onnx": "an ONNX model", "array.npy": "a .npy array",
        "whole_model.pt": "a pickle of Python objects",
    }


def check(result, file, what) -> None:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert result.stderr.strip() == line, result.stderr
    assert f"cannot read checkpoint {file}: it is not a segunet checkpoint ({what}" in line
    assert "weights_only" not in result.stderr


@pytest.mark.parametrize("name", ["image.tif", "model.onnx", "array.npy", "whole_model.pt"])
def test_predict_and_export(foreign, tmp_path, name):
    folder, what = foreign
    file = folder / name
    check(run_in_process("predict", f"checkpoint={file}", f"input={folder / 'image.tif'}",
                         f"output={tmp_path / 'out'}", cwd=tmp_path), file, what[name])
    check(run_in_process("export", f"checkpoint={file}", f"output={tmp_path / 'm.onnx'}",
                         cwd=tmp_path), file, what[name])


def test_trainer_resume(foreign, tmp_path):
    folder, what = foreign
    file = folder / "image.tif"
    result = run_in_process("train", *TINY, f"trainer.resume={file}",
                            f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    check(result, file, what["image.tif"])


def test_torchscript_export_given_back(tmp_path):
    """segunet export's own output, given back to predict as the checkpoint."""
    from segunet.export.run import export_model

    ckpt = save_tiny_checkpoint(tmp_path, "unet_same")
    exported = export_model(ckpt, "torchscript", verify=False)
    result = run_in_process("predict", f"checkpoint={exported}", f"input={exported}",
                            f"output={tmp_path / 'out'}", cwd=tmp_path)
    check(result, exported, "a TorchScript model")
