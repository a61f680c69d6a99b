"""Scoring: segmentation and instance metrics (``metrics``) and ``segunet evaluate``
(``evaluate``). May import data; not models, train, infer or cli."""
