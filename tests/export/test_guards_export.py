"""``segunet export`` writes only where it is asked to, never over what it reads, and refuses
options it cannot honour in one line, before it exports anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import save_tiny_checkpoint

from segunet import pretrained
from segunet.cli import export

FORMATS = {"onnx": "nuclei.onnx", "torchscript": "nuclei.torchscript.pt",
           "bioimageio": "nuclei.bioimageio.zip"}


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("segunet: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def package_folder():
    """The folder of the shipped models; anything an export leaves there is removed after
    the test (an installed segunet's folder may well be read-only)."""
    folder = Path(str(pretrained.path_of("nuclei"))).parent
    before = set(folder.iterdir())
    yield folder
    for extra in set(folder.iterdir()) - before:
        extra.unlink()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_shipped_model_exports_only_where_output_says(tmp_path, monkeypatch, capsys,
                                                        package_folder, fmt):
    """It used to be written beside the shipped checkpoint: into segunet's own package; then
    into the working folder, which the user had not named either."""
    before = sorted(p.name for p in package_folder.iterdir())
    monkeypatch.chdir(tmp_path)
    assert export.run(["model=nuclei", f"format={fmt}", "verify=false"]) == 2
    assert error_line(capsys) == (
        "segunet: error: model nuclei ships with segunet, so its export has no folder of its "
        f"own: give output=<a file or folder>, e.g. output={FORMATS[fmt]}\n"
    )
    assert list(tmp_path.iterdir()) == []
    assert export.run(["model=nuclei", f"format={fmt}", "verify=false", "output=out/"]) == 0
    assert sorted(p.name for p in package_folder.iterdir()) == before
    assert (tmp_path / "out" / FORMATS[fmt]).is_file()
    assert f"model to out/{FORMATS[fmt]}" in capsys.readouterr().err
    # Nor when named: segunet's package is no place for an export.
    assert export.run(["model=nuclei", f"format={fmt}", f"output={package_folder}"]) == 2
    assert "segunet's own installed package" in error_line(capsys)
    assert sorted(p.name for p in package_folder.iterdir()) == before


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_an_output_that_is_the_checkpoint_is_refused(tmp_path, capsys, link):
    """``output=<the checkpoint> overwrite=true`` replaced the checkpoint by its export."""
    ckpt = save_tiny_checkpoint(tmp_path / "run")
    original = ckpt.read_bytes()
    output = ckpt
    if link != "same":
        output = tmp_path / "other.pt"
        (output.symlink_to if link == "symlink" else output.hardlink_to)(ckpt)
    assert export.run([f"checkpoint={ckpt}", "format=torchscript", f"output={output}",
                        "overwrite=true", "verify=false"]) == 2
    assert "is the checkpoint being exported" in error_line(capsys)
    assert ckpt.read_bytes() == original


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        # A 100000 x 100000 example is 40 GB of input alone: refused, not allocated.
        ("input_shape=100000,100000", "input_shape=[100000, 100000] is not valid: expected at "
                                      "most 4194304 pixels"),
        # Verification accepts a difference below atol: nothing is below 0 or -1.
        ("atol=-1", "atol=-1.0 is not valid: expected a positive number"),
        ("atol=0", "atol=0.0 is not valid: expected a positive number"),
        ("atol=nan", "atol=nan is not valid: expected a positive number"),
        # torch's exporter knows no opset 99, and opset 7 cannot slice by dynamic sizes.
        ("opset=99", "opset=99 is not valid: expected an ONNX opset from 10"),
        ("opset=7", "opset=7 is not valid: expected an ONNX opset from 10"),
    ],
)
def test_options_out_of_range_are_one_line_before_exporting(tmp_path, capsys, option,
                                                            expected):
    ckpt = save_tiny_checkpoint(tmp_path)
    assert export.run([f"checkpoint={ckpt}", "format=onnx", option]) == 2
    assert expected in error_line(capsys)
    assert os.listdir(ckpt.parent) == ["last.pt"]
