"""Export a trained model to ONNX or TorchScript, verified against PyTorch before it is kept,
or as a bioimage.io model package of both (:mod:`segunet.export.bioimageio`).

``segunet export checkpoint=<ckpt or run folder> format=onnx|torchscript|bioimageio [output=...]``
(:mod:`segunet.cli.export`).

The file is traced with dynamic batch and spatial axes and stores the valid-size rule and
the normalisation in its metadata (:mod:`segunet.export.traced`). Verification runs the exported
model at the export size and at the next larger valid size, so a size the trace baked in is
caught.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from segunet.atomic import write_atomic
from segunet.checkpoint import load_model, resolve_checkpoint
from segunet.data.io import output_folder, refuse_existing
from segunet.errors import SegunetError
from segunet.export.bioimageio import export_package
from segunet.export.bioimageio_description import PackageInfo
from segunet.export.traced import exported_bytes, metadata, verify_export
from segunet.pretrained import shipped

Format = Literal["onnx", "torchscript", "bioimageio"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "bioimageio": ".bioimageio.zip"}
#: The most pixels (voxels) of the example input traced and verified: 2048 x 2048.
MAX_EXAMPLE = 2048 * 2048
#: The oldest ONNX opset that has the dynamic slicing the models' skip connections need.
MIN_OPSET = 10


def max_opset() -> int:
    """The newest ONNX opset the installed torch exports (torch names it nowhere public)."""
    try:
        from torch.onnx import _constants
    except ImportError:
        return 17
    return int(getattr(_constants, "ONNX_MAX_OPSET", 17))


def export_model(
    checkpoint: str | os.PathLike,
    format: Format = "onnx",
    output: str | os.PathLike | None = None,
    input_shape: Sequence[int] | None = None,
    opset: int = 17,
    verify: bool = True,
    atol: float = 1e-4,
    overwrite: bool = False,
    package: PackageInfo | None = None,
) -> Path:
    """Export the model of ``checkpoint`` and return the written file.

    Args:
        checkpoint: a checkpoint file or a run folder (its ``checkpoints/best.pt`` where it
            has one, else ``last.pt``).
        format: ``"onnx"`` (needs ``onnx``, and ``onnxruntime`` to verify),
            ``"torchscript"`` or ``"bioimageio"`` (a model package of both, see
            :func:`segunet.export.bioimageio.export_package`).
        output: target file, or a folder to write the default name into; default beside
            the checkpoint, named after it (a shipped model has no default: give one).
        input_shape: spatial size of the example input traced and verified; rounded up to a
            valid size. Default: the smallest valid size of at least 64 per axis.
        opset: ONNX opset.
        verify: run the exported model against PyTorch on random inputs; a max abs
            difference of ``atol`` or more is a SegunetError and nothing is written.
        overwrite: replace an existing output file; else it is a SegunetError, raised
            before the export starts.
        package: format=bioimageio only: the test image and the metadata of the package.
    """
    if format not in SUFFIX:
        raise SegunetError(
            f"format={format!r} is not valid: expected onnx, torchscript or bioimageio"
        )
    # A run folder means its best.pt, as in predict and tune: what is exported is what
    # segunet predict of that folder gives.
    file = resolve_checkpoint(checkpoint, prefer="best")
    target = export_target(file, format, output, overwrite)
    if format == "bioimageio":
        export_package(file, target, package or PackageInfo(), input_shape, opset, verify, atol)
        return target
    model, config = load_model(file, "cpu")
    dims = model.spatial_dims
    shape = tuple(input_shape) if input_shape else (64,) * dims
    if len(shape) != dims:
        raise SegunetError(f"input_shape={list(shape)} needs {dims} sizes for a {dims}D model")
    shape = model.valid_input_shape(shape)
    example = torch.randn(1, model.in_channels, *shape, generator=torch.Generator().manual_seed(0))
    data = exported_bytes(model, format, example, opset, metadata(model, config))
    if verify:
        # A second, larger size (and batch 2) shows the dynamic axes really are dynamic.
        bigger = model.valid_input_shape(tuple(s + 1 for s in shape))
        inputs = [torch.randn(batch, model.in_channels, *size, generator=torch.Generator())
                  for size, batch in ((shape, 1), (bigger, 2))]
        verify_export(model, format, data, inputs, atol)
    write_atomic(target, lambda f: f.write(data))
    return target


def export_target(
    checkpoint: Path, format: Format, output: str | os.PathLike | None, overwrite: bool
) -> Path:
    """The file to write, checked before the (slow) export: ``output``, or the default name
    inside ``output`` when it is a folder (existing, or ending in /: a bioimage.io package
    too, whatever the folder's name), or beside ``checkpoint`` without ``output`` (a shipped
    one: a SegunetError that asks for ``output``)."""
    name = checkpoint.stem + SUFFIX[format]
    if output is None and shipped(checkpoint):
        # Its folder is segunet's installed package, and the working folder is not the
        # user's to write into unasked: the place must be named.
        raise SegunetError(f"model {checkpoint.stem} ships with segunet, so its export has no "
                           f"folder of its own: give output=<a file or folder>, e.g. "
                           f"output={name}")
    if output is None:
        target = checkpoint.with_name(name)
    else:
        text = os.fspath(output)
        target = Path(text)
        if target.is_dir() or text.endswith(("/", os.sep)):
            target = target / name
        elif format == "bioimageio" and target.suffix.lower() != ".zip":
            # bioimage.io tools tell a package from its rdf.yaml by the .zip suffix.
            raise SegunetError(
                f"output={output}: a bioimage.io package is a .zip file; name it "
                f"{target.name}.zip, or give a folder for {name}"
            )
    key = f"output={output if output is not None else target}"
    if shipped(target):
        raise SegunetError(f"{key}: {target.parent} is segunet's own installed package; give "
                           "output=<a file or folder elsewhere>")
    if target.exists() and os.path.samefile(target, checkpoint):
        raise SegunetError(f"{key} is the checkpoint being exported ({checkpoint}); give "
                           "output=<another file or a folder>")
    output_folder(target.parent, key)
    refuse_existing(target, overwrite)
    return target
