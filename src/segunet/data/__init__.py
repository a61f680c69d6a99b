"""Data: reading and writing images, sources and training targets, border weight maps,
augmentation, overlap-tile geometry, datasets. Imports errors, atomic, interrupts and config;
nothing from train, infer, eval or cli. Kept free of imports so that the numpy-only modules
(``synthetic``, ``weightmaps``, ``tiling``) load without torch.
"""
