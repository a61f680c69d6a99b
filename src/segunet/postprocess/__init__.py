"""From probabilities to labels: instance separation (``instances``), each training
target's decoding and ``segunet predict``'s Decoder (``decoding``), and the search of their
settings on a trained model (``tune``). decoding imports data and eval (the task scores);
tune also infer, checkpoint and models (the device). Not train or cli."""
