"""segunet: the U-Net of Ronneberger et al. (2015) and its descendants for biomedical images."""

__version__ = "0.1.0"
