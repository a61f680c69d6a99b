"""A model as an ONNX or TorchScript file, traced and checked against PyTorch: what
``segunet export`` writes (:mod:`segunet.export.run`) and a bioimage.io package holds
(:mod:`segunet.export.bioimageio`).

Both formats are made by tracing (``torch.onnx.export``'s TorchScript-based exporter,
``torch.jit.trace``): the model's Python-side input checks only read shapes, so they add
nothing to the graph (tracing warns about them; the warnings are silenced). The batch and
spatial axes stay dynamic, but a valid-padded U-Net still only takes the valid sizes
``period * b + offset`` (see :mod:`segunet.models.shapes`); the exported graph no longer checks
them, so the rule is stored in the file's metadata.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from segunet.data.normalize import DEFAULT_PERCENTILES
from segunet.errors import SegunetError, short_message
from segunet.models.shapes import valid_input_size

TraceFormat = Literal["onnx", "torchscript"]
AXES = {2: ("height", "width"), 3: ("depth", "height", "width")}


def exported_bytes(
    model: nn.Module, format: TraceFormat, example: torch.Tensor, opset: int, meta: dict[str, str],
    names: tuple[str, str] = ("image", "logits"),
) -> bytes:
    """``model`` traced on ``example`` as an ONNX or TorchScript file, with ``meta`` stored in
    it; ``names``: the ONNX input and output."""
    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings from the shape checks; the checks themselves are not in the graph.
        warnings.simplefilter("ignore")
        if format == "onnx":
            return _onnx_bytes(model, example, opset, meta, names)
        return _torchscript_bytes(model, example, meta)


def verify_export(
    model: nn.Module, format: TraceFormat, data: bytes, inputs: Sequence[torch.Tensor], atol: float
) -> None:
    """Run the exported ``data`` and ``model`` on each input: a SegunetError where the shapes
    differ or the values differ by ``atol`` or more."""
    run = _onnx_runner(data) if format == "onnx" else _torchscript_runner(data)
    for x in inputs:
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
        + json.dumps(data.get("percentiles", list(DEFAULT_PERCENTILES)))
        + ("; then 1 - x where the median of the channel mean exceeds 0.5 (bright background)"
           if data.get("polarity", "as_is") == "bright_objects" else ""),
    }


# --- ONNX ----------------------------------------------------------------------------------


def _onnx_bytes(
    model: nn.Module, example: torch.Tensor, opset: int, meta: dict, names: tuple[str, str]
) -> bytes:
    try:
        import onnx
    except ImportError:
        raise SegunetError(
            "format=onnx needs the onnx package: pip install 'segunet[export]'"
        ) from None
    spatial = AXES[example.ndim - 2]
    image, out = names
    buffer = io.BytesIO()
    try:
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[image], output_names=[out],
            dynamic_axes={
                image: {0: "batch", **{i + 2: a for i, a in enumerate(spatial)}},
                out: {0: "batch", **{i + 2: f"out_{a}" for i, a in enumerate(spatial)}},
            },
        )
    except RuntimeError as e:  # an opset torch lacks, or one too old for the model's ops
        raise SegunetError(
            f"opset={opset}: torch.onnx.export failed ({short_message(e)}); the default "
            "opset=17 exports segunet's models"
        ) from None
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
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


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
