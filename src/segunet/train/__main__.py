"""``python -m segunet.train``: the trainer's Hydra app, as ``torchrun`` runs it on every rank
(see :mod:`segunet.train.distributed`)."""

import sys

from segunet.train import distributed
from segunet.train.trainer import main

# Under torchrun every rank runs this: only rank 0 writes Hydra's files to the run folder.
sys.argv += distributed.hydra_overrides_for_rank(distributed.env_world().rank)
main()
