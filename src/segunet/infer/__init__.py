"""Inference: the tiled engine (``predict``), its mergers, resampling to the training pixel
grid, and ``segunet predict``'s inputs, outputs and run (``run``; its arguments and ``main``
are :mod:`segunet.cli.predict`). May import config, models, data, postprocess, checkpoint and
``train.distributed`` (the device); not eval, export or cli."""
