"""Data: synthetic default images, border weight maps, overlap-tile geometry, datasets.

Kept free of imports so that the numpy-only modules (``synthetic``, ``weightmaps``,
``tiling``) load without torch.
"""
