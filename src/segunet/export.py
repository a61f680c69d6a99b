"""Export a trained model to ONNX or TorchScript, verified against PyTorch before it is kept.

``segunet export checkpoint=<ckpt or run folder> format=onnx|torchscript [output=...]``

Both formats are made by tracing (``torch.onnx.export``'s TorchScript-based exporter,
``torch.jit.trace``): the model's Python-side input checks only read shapes, so they add
nothing to the graph (tracing warns about them; the warnings are silenced). The batch and
spatial axes stay dynamic, but a valid-padded U-Net still only takes the valid sizes
``period * b + offset`` (see :mod:`segunet.models.shapes`); the exported graph no longer checks
them, so the rule is stored in the file's metadata. Verification runs the exported model at
the export size and at the next larger valid size, so a size the trace baked in is caught.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from omegaconf import MISSING
from torch import nn

from segunet.args import check_range, option, parse, run_command, usage
from segunet.atomic import write_atomic
from segunet.checkpoint import load_model, resolve_checkpoint
from segunet.data.io import output_folder, refuse_existing
from segunet.errors import SegunetError
from segunet.models.shapes import valid_input_size

Format = Literal["onnx", "torchscript"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
AXES = {2: ("height", "width"), 3: ("depth", "height", "width")}

USAGE = """usage: segunet export checkpoint=<file or run folder> [format=onnx|torchscript]
                      [output=<file or folder>] [key=value ...]

Exports the trained model (rebuilt from the config stored in the checkpoint) with dynamic
batch and spatial axes, then checks the exported file against PyTorch (max abs diff
< atol). An output that is an existing folder, or ends in /, gets the default file name
inside it. An existing file is kept unless overwrite=true, as in segunet predict.
"""


@dataclasses.dataclass
class ExportConfig:
    """The arguments of ``segunet export`` (see :func:`export_model`)."""

    checkpoint: str = option(MISSING, "a checkpoint file, or a run folder (its last.pt)")
    format: Format = option("onnx", "onnx needs onnx (and onnxruntime to verify)")
    output: str | None = option(
        None, "the file, or a folder for the default name; null: beside the checkpoint, "
        "<name>.onnx or <name>.torchscript.pt (last.onnx for checkpoints/last.pt)")
    overwrite: bool = option(False, "replace an existing output file")
    input_shape: list[int] | None = option(
        None, "spatial size of the example traced and verified, e.g. 64,64; rounded up to a "
        "valid size; null: the smallest valid size of at least 64 per axis")
    opset: int = option(17, "the ONNX opset")
    verify: bool = option(True, "run the export against PyTorch before it is written")
    atol: float = option(1e-4, "the largest absolute difference verification accepts")

    def __post_init__(self) -> None:
        shape = self.input_shape
        check_range("input_shape", shape, not shape or min(shape) >= 1,
                    "positive sizes, e.g. 64,64")


def export_model(
    checkpoint: str | os.PathLike,
    format: Format = "onnx",
    output: str | os.PathLike | None = None,
    input_shape: Sequence[int] | None = None,
    opset: int = 17,
    verify: bool = True,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> Path:
    """Export the model of ``checkpoint`` and return the written file.

    Args:
        checkpoint: a checkpoint file or a run folder (its ``checkpoints/last.pt``).
        format: ``"onnx"`` (needs ``onnx``, and ``onnxruntime`` to verify) or
            ``"torchscript"``.
        output: target file, or a folder to write the default name into; default beside
            the checkpoint, named after it.
        input_shape: spatial size of the example input traced and verified; rounded up to a
            valid size. Default: the smallest valid size of at least 64 per axis.
        opset: ONNX opset.
        verify: run the exported model against PyTorch on random inputs; a max abs
            difference of ``atol`` or more is a SegunetError and nothing is written.
        overwrite: replace an existing output file; else it is a SegunetError, raised
            before the export starts.
    """
    if format not in SUFFIX:
        raise SegunetError(f"format={format!r} is not valid: expected onnx or torchscript")
    file = resolve_checkpoint(checkpoint)
    target = export_target(file, format, output, overwrite)
    model, config = load_model(file, "cpu")
    dims = model.spatial_dims
    shape = tuple(input_shape) if input_shape else (64,) * dims
    if len(shape) != dims:
        raise SegunetError(f"input_shape={list(shape)} needs {dims} sizes for a {dims}D model")
    shape = model.valid_input_shape(shape)
    example = torch.randn(1, model.in_channels, *shape, generator=torch.Generator().manual_seed(0))
    meta = metadata(model, config)

    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings from the shape checks; the checks themselves are not in the graph.
        warnings.simplefilter("ignore")
        data = _onnx_bytes(model, example, opset, meta) if format == "onnx" else (
            _torchscript_bytes(model, example, meta)
        )
    if verify:
        run = _onnx_runner(data) if format == "onnx" else _torchscript_runner(data)
        # A second, larger size (and batch 2) shows the dynamic axes really are dynamic.
        bigger = model.valid_input_shape(tuple(s + 1 for s in shape))
        for size, batch in ((shape, 1), (bigger, 2)):
            x = torch.randn(batch, model.in_channels, *size, generator=torch.Generator())
            with torch.no_grad():
                expected = model(x).numpy()
            got = run(x.numpy())
            if got.shape != expected.shape:
                raise SegunetError(
                    f"exported {format} model gives shape {got.shape} for input "
                    f"{tuple(x.shape)}, PyTorch {expected.shape}: not written"
                )
            diff = float(np.abs(got - expected).max())
            if not diff < atol:
                raise SegunetError(
                    f"exported {format} model differs from PyTorch by {diff:.3g} (>= {atol}) "
                    f"on input {tuple(x.shape)}: not written"
                )
    write_atomic(target, lambda f: f.write(data))
    return target


def export_target(
    checkpoint: Path, format: Format, output: str | os.PathLike | None, overwrite: bool
) -> Path:
    """The file to write, checked before the (slow) export: ``output``, or the default name
    inside ``output`` when it is a folder, or beside ``checkpoint`` without ``output``."""
    name = checkpoint.stem + SUFFIX[format]
    if output is None:
        target = checkpoint.with_name(name)
    else:
        text = os.fspath(output)
        target = Path(text)
        if target.is_dir() or text.endswith(("/", os.sep)):
            target = target / name
    output_folder(target.parent, f"output={output if output is not None else target}")
    refuse_existing(target, overwrite)
    return target


def metadata(model: nn.Module, config: dict) -> dict[str, str]:
    """What a deployment needs besides the weights: channels, the valid-size rule and the
    input normalisation of training."""
    smallest = valid_input_size(1, model.levels, model.padding)
    period = 2 ** (model.levels - 1)
    data = config.get("data", {}) or {}
    return {
        "producer": "segunet",
        "model": str(config["model"]["_target_"]),
        "in_channels": str(model.in_channels),
        "out_channels": str(model.out_channels),
        "spatial_dims": str(model.spatial_dims),
        "padding": model.padding,
        "valid_input_sizes": f"{smallest} + {period} * k for integers k >= 0, per axis",
        "output": "logits (N, classes, *spatial); softmax over axis 1 gives probabilities",
        "normalization": "per image and channel, (x - p_low) / (p_high - p_low), percentiles "
        + json.dumps(data.get("percentiles", [1.0, 99.8])),
    }


# --- ONNX ----------------------------------------------------------------------------------


def _onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int, meta: dict) -> bytes:
    try:
        import onnx
    except ImportError:
        raise SegunetError(
            "format=onnx needs the onnx package: pip install 'segunet[export]'"
        ) from None
    spatial = AXES[model.spatial_dims]
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (example,), buffer, dynamo=False, opset_version=opset,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={
            "image": {0: "batch", **{i + 2: a for i, a in enumerate(spatial)}},
            "logits": {0: "batch", **{i + 2: f"out_{a}" for i, a in enumerate(spatial)}},
        },
    )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, meta)
    return proto.SerializeToString()


def _onnx_runner(data: bytes):
    try:
        import onnxruntime as ort
    except ImportError:
        raise SegunetError(
            "verifying an ONNX export needs onnxruntime: pip install 'segunet[export]', "
            "or pass verify=false"
        ) from None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


# --- TorchScript ---------------------------------------------------------------------------


def _torchscript_bytes(model: nn.Module, example: torch.Tensor, meta: dict) -> bytes:
    # Our verification below runs the saved file itself: trace's own check (a second, slow
    # trace compared against the first) adds nothing.
    traced = torch.jit.trace(model, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"segunet.json": json.dumps(meta)})
    return buffer.getvalue()


def _torchscript_runner(data: bytes):
    loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        # Without the profiling executor's warm-up and fusion passes, which take seconds and
        # leave the arithmetic as traced.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            return loaded(torch.from_numpy(x)).numpy()

    return run


# --- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``segunet export key=value ...``; returns the exit status (2 on a bad argument)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> None:
        args = parse(ExportConfig, argv, "export")
        path = export_model(
            args.checkpoint, format=args.format, output=args.output or None,
            input_shape=args.input_shape, opset=args.opset, verify=args.verify,
            atol=args.atol, overwrite=args.overwrite,
        )
        print(f"segunet: exported {args.format} model to {path}", file=sys.stderr)

    return run_command(body, usage(ExportConfig, USAGE), argv)
