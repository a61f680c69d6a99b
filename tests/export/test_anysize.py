"""The exported graph on images of any size: :class:`segunet.export.anysize.AnySize` against
segunet's tiled prediction, eager and traced."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from segunet.export.anysize import AnySize
from segunet.export.traced import exported_bytes
from segunet.infer.predict import predict_tiled
from segunet.models import UNet


def net(dims: int, padding: str = "valid") -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=1, out_channels=2, spatial_dims=dims, channels=(4, 8, 16),
                padding=padding, norm=None).eval()


def logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x[None])), 1)[0].numpy()


@pytest.mark.parametrize(("dims", "shape"), [
    (2, (61, 70)), (2, (1, 9)), (2, (2, 3)), (2, (130, 45)), (3, (13, 21, 8)), (3, (1, 2, 30)),
])
def test_any_size_is_the_tiled_prediction(dims, shape):
    """Sizes on no grid, down to 1 px (every position mirrors to pixel 0) and 2 px (a
    mirror of period 2), equal segunet's overlap-tile prediction with its mirrored border."""
    model = net(dims)
    x = np.random.default_rng(1).random((1, *shape), dtype=np.float32)
    got = logits(AnySize(model), x)
    assert got.shape == (2, *shape)
    np.testing.assert_allclose(got, predict_tiled(model, x), atol=1e-5)


def test_a_same_padded_net_of_one_tile_is_the_tiled_prediction():
    model = net(2, "same")
    x = np.random.default_rng(2).random((1, 37, 50), dtype=np.float32)
    np.testing.assert_allclose(logits(AnySize(model), x), predict_tiled(model, x, tile_shape=64),
                               atol=1e-5)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_traced_graph_keeps_the_size_arithmetic(fmt):
    """Traced at one size, the file runs any other: the sizes were recorded, not baked in."""
    model = AnySize(net(2)).eval()
    example = torch.rand(1, 1, 60, 64)
    data = exported_bytes(model, fmt, example, 17, {}, ("input", "output"))
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        run = lambda x: session.run(None, {"input": x})[0]  # noqa: E731
    else:
        loaded = torch.jit.load(io.BytesIO(data))
        run = lambda x: loaded(torch.from_numpy(x)).detach().numpy()  # noqa: E731
    for shape in [(2, 1, 61, 70), (1, 1, 5, 33)]:
        x = np.random.default_rng(3).random(shape, dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert run(x).shape == expected.shape == (shape[0], 2, *shape[2:])
        np.testing.assert_allclose(run(x), expected, atol=1e-4)

