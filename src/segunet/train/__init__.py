"""Training: the trainer and its Hydra app (``trainer``), losses, resume, the run folder,
multi-GPU launch (``distributed``), TensorBoard logging and pictures. May import config,
models, data, infer, postprocess and eval; only cli imports it."""
