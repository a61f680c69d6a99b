"""The net on an image of any size, as ``segunet predict`` runs it: what an exported graph
computes, so that a consumer of the file (a bioimage.io package) needs no padding of its own.

``segunet predict`` mirror-extrapolates the image by the net's halo and places its tiles with
the max-pooling grid in phase with the image's origin (:func:`segunet.data.tiling.plan_tiles`),
which equals one pass over the whole mirror-padded image. :class:`AnySize` does that pass in
the graph: it extends each spatial axis by the halo before the image and by the halo plus
whatever reaches the next valid size after it (mirrored as ``np.pad(mode="reflect")``, again
and again for a short axis), runs the net and keeps the output on the image's own pixels.

The size arithmetic is done with tensors, not Python ints, so that ``torch.jit.trace`` and
``torch.onnx.export`` record it and the file takes every size: index arithmetic, ``arange``
and ``index_select`` (ONNX Range, Mod and Gather), no data-dependent Python branch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segunet.errors import SegunetError
from segunet.models.shapes import valid_input_size


class AnySize(nn.Module):
    """``model`` (a segunet U-Net) on ``(N, C, *spatial)`` inputs of any spatial size >= 1,
    its output the size of the input. A valid-padded net sees the image mirror-extended by
    its halo; a same-padded one, mirror-extended after the image to its next valid size."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        levels, padding = model.levels, model.padding
        self.smallest = valid_input_size(1, levels, padding)
        self.step = 2 ** (levels - 1)
        trim = self.smallest - int(model.output_shape((self.smallest,) * model.spatial_dims)[0])
        self.halo = trim // 2

    def forward(self, x: Tensor) -> Tensor:
        dims = x.dim() - 2
        sizes = [_size(x, 2 + a) for a in range(dims)]
        for a, n in enumerate(sizes):
            x = _mirror(x, 2 + a, self.halo, self._padded(n))
        y = self.model(x)
        if not isinstance(y, Tensor):
            raise SegunetError(
                f"{type(self.model).__name__} returns {len(y)} outputs in eval mode (its "
                "deep-supervision heads); an exported graph has one output: export a model "
                "whose eval forward returns one tensor"
            )
        for a, n in enumerate(sizes):
            y = y.index_select(2 + a, torch.arange(n, device=y.device))
        return y

    def _padded(self, n: Tensor) -> Tensor:
        """The smallest valid net input holding ``n`` pixels and the halo on both sides."""
        k = torch.clamp(torch.div(n + 2 * self.halo - self.smallest + self.step - 1, self.step,
                                  rounding_mode="floor"), min=0)
        return self.smallest + k * self.step


def _size(x: Tensor, axis: int) -> Tensor:
    """``x.shape[axis]`` as an int64 tensor, which a trace records rather than bakes in."""
    return torch._shape_as_tensor(x)[axis]


def _mirror(x: Tensor, axis: int, before: int, total: Tensor) -> Tensor:
    """``total`` positions of ``x`` along ``axis`` from ``-before`` on, mirrored without
    repeating the edge (``.. 2 1 | 0 1 .. n-1 | n-2 ..``): the indices of
    :func:`segunet.data.tiling.reflect_indices`, as tensor arithmetic."""
    n = _size(x, axis)
    period = torch.clamp(2 * n - 2, min=1)  # n == 1: every position is pixel 0
    positions = torch.remainder(torch.arange(total, device=x.device) - before, period)
    return x.index_select(axis, torch.where(positions < n, positions, period - positions))
