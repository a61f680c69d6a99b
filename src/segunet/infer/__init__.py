"""Inference: the tiled engine (``predict``), the mergers that hold its output, resampling
to the training pixel grid and the ``segunet predict`` application (``run``). May import
config, models, data and postprocess; not train, eval or cli."""
