"""Inference: the tiled engine (``predict``), its mergers, resampling to the training pixel
grid (``resample``) or to the training objects' size (``scale``: ``scale=auto``), and
``segunet predict``'s settings, inputs, outputs and run (``run``; its arguments and ``run()``
are :mod:`segunet.cli.predict`). May import config, models, data, postprocess and checkpoint;
not train, eval, export or cli."""
