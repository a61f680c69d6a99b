"""Inference-only rewrites of a trained network that keep its outputs (up to rounding).

In eval mode a BatchNorm is an affine map per channel, so it folds into the convolution it
follows: one memory-bound pass (a read and a write of the activation map) less per
convolution.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` in which every BatchNorm that directly follows a
    (non-transposed) convolution inside an ``nn.Sequential`` is folded into that
    convolution's weights and bias and replaced by ``nn.Identity``; ``model`` is untouched.

    BatchNorms without running statistics, or after anything but a convolution, stay.
    """
    folded = copy.deepcopy(model).eval()
    for container in folded.modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = container._modules[first], container._modules[second]
            if (
                isinstance(conv, _ConvNd)
                and not conv.transposed
                and isinstance(norm, _BatchNorm)
                and norm.running_mean is not None
                and norm.running_var is not None
                and norm.num_features == conv.out_channels
            ):
                container._modules[first] = fuse_conv_bn_eval(conv, norm)
                container._modules[second] = nn.Identity()
    return folded
