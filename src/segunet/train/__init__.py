"""Training: the trainer and its Hydra app (``trainer``), with its settings, compiling,
validation and checkpoint parts; losses, resume, the run folder, multi-GPU launch
(``distributed``), TensorBoard logging and pictures. May import every package but cli;
export reads its ``run_folder`` records."""
