"""Data: reading and writing images, the sources, normalisation, labels into targets and
weight maps, augmentation, overlap-tile geometry and tile sizing, datasets. Imports errors,
atomic, interrupts and config, nothing of the packages above; no imports here, so that the
numpy-only modules (``synthetic``, ``weightmaps``, ``tiling``) load without torch."""
