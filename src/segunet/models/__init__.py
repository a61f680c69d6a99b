"""U-Net models: the original (2D or 3D) and the Attention U-Net."""

from segunet.models.attention import AttentionGate, AttentionUNet
from segunet.models.unet import ModelInputError, UNet

__all__ = ["AttentionGate", "AttentionUNet", "ModelInputError", "UNet"]
