"""Exporting a trained model: TorchScript and ONNX files (``traced``), the bioimage.io
package (``bioimageio``, which says what it holds by ``bioimageio_description``) and the run
behind ``segunet export`` (``run``: the file checked, written and verified). May import models,
data, config, checkpoint, infer (the input a model sees), postprocess and train's run-folder
records; not cli."""
