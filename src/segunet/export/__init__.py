"""Exporting a trained model: the traced TorchScript and ONNX files (``traced``), the
bioimage.io package (``bioimageio``) and ``segunet export`` (``command``). May import models,
data, infer and postprocess; not train."""
