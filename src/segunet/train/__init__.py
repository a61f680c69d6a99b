"""Training: the trainer (``trainer``, with its ``settings``, ``compiling``, ``validation``
and ``checkpoints`` parts; its Hydra app is :mod:`segunet.cli.train`), losses, resume, the run
folder, multi-GPU launch (``distributed``), TensorBoard logging and pictures. May import every
package but cli; export reads its ``run_folder`` records."""
