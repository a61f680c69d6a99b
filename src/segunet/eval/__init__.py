"""Scoring: segmentation and instance metrics (``metrics``) and ``segunet evaluate``
(``evaluate``). May import data and config; not models, train, infer or cli."""
