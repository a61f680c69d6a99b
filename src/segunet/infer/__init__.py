"""Inference: the tiled engine (``predict``), its mergers, resampling to the training pixel
grid, and ``segunet predict``'s inputs, outputs and run (``run``; its arguments and ``run()``
are :mod:`segunet.cli.predict`). May import config, models, data, postprocess and checkpoint;
not train, eval, export or cli."""
