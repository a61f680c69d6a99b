"""U-Net models: the original (2D or 3D), the Attention U-Net, UNet++ and UNet 3+."""

from segunet.models.attention import AttentionGate, AttentionUNet
from segunet.models.unet import ModelInputError, UNet
from segunet.models.unet3plus import UNet3Plus
from segunet.models.unetpp import UNetPlusPlus

__all__ = [
    "AttentionGate",
    "AttentionUNet",
    "ModelInputError",
    "UNet",
    "UNet3Plus",
    "UNetPlusPlus",
]
