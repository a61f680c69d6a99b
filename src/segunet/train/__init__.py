"""Training: the trainer and its Hydra app (``trainer``), losses, resume, the run folder,
multi-GPU launch (``distributed``), TensorBoard logging and pictures. May import every
package but cli; export reads its ``run_folder`` records."""
