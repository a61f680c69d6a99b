"""Scoring: matching two label maps (``matching``), the segmentation and instance metrics
read from it (``metrics``), and pairing and scoring files (``evaluate``). May import data and
config; not models, train, infer or cli."""
