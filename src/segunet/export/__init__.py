"""Exporting a trained model: TorchScript and ONNX files (``traced``), the bioimage.io
package (``bioimageio``, which says what it holds by ``bioimageio_description``) and
``segunet export`` (``command``). May import models, data, config, checkpoint, infer (the
input a model sees), postprocess and train's run-folder records; not cli."""
