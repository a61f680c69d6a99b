"""U-Net models: the original (2D or 3D), the Attention U-Net and UNet++."""

from segunet.models.attention import AttentionGate, AttentionUNet
from segunet.models.unet import ModelInputError, UNet
from segunet.models.unetpp import UNetPlusPlus

__all__ = [
    "AttentionGate",
    "AttentionUNet",
    "ModelInputError",
    "UNet",
    "UNetPlusPlus",
]
