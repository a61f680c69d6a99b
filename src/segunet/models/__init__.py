"""U-Net models: the original (2D or 3D), the Attention U-Net, UNet++, UNet 3+ and the
diffusion-style ResUNet, and the device they run on
(``device.resolve_device``). Import torch and config's schema types only: nothing from data,
train, infer, eval or cli."""

from segunet.models.attention import AttentionGate, AttentionUNet
from segunet.models.resunet import ResUNet
from segunet.models.unet import ModelInputError, UNet
from segunet.models.unet3plus import UNet3Plus
from segunet.models.unetpp import UNetPlusPlus

__all__ = [
    "AttentionGate",
    "AttentionUNet",
    "ModelInputError",
    "ResUNet",
    "UNet",
    "UNet3Plus",
    "UNetPlusPlus",
]
