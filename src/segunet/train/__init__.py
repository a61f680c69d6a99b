"""Training: the trainer and its Hydra app (``trainer``), losses, resume, the run folder,
multi-GPU launch (``distributed``), TensorBoard logging and pictures. May import every
package but cli; infer, postprocess and export use its ``distributed.resolve_device`` and
``run_folder`` records."""
