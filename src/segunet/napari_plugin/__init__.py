"""segunet in napari (``pip install 'segunet[napari]'``): a dock widget that segments an
image layer with a model that ships with segunet, a run folder, a checkpoint or a
bioimage.io package segunet exported, as ``segunet predict`` does, in a worker thread.

:mod:`.job` is what the widget computes, free of napari and Qt (arrays and layer tuples in
and out); :mod:`.widget` is the widget (napari, magicgui); ``napari.yaml`` is the npe2
manifest that napari finds through the ``napari.manifest`` entry point.
"""
