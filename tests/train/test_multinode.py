"""Training on two machines, as two local "nodes": two torchrun agents of one process each,
meeting at a c10d rendezvous on gloo, as the README's multi-node command runs them on two
hosts. They train as one process with their global batch does (see test_ddp)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from test_ddp import EQUAL_SUMS

from segunet.train.trainer import build_trainer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_as_one_process_with_their_global_batch(make_cfg, tmp_path):
    single = build_trainer(make_cfg(*EQUAL_SUMS, "trainer.batch_size=4"), tmp_path / "one")
    single.fit()
    run_dir, port = tmp_path / "two", free_port()

    def node(rank: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                f"--node_rank={rank}", "--nproc_per_node=1", "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=segunet-test",
                "-m", "segunet.cli", "train", *EQUAL_SUMS, "trainer.batch_size=2",
                "trainer.device=cpu", f"hydra.run.dir={run_dir}"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(node(r), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [n.communicate(timeout=300) for n in nodes]
    for n, (_, err) in zip(nodes, outputs):
        assert n.returncode == 0, err[-3000:]
    assert sum(err.count("segunet: done at step 3") for _, err in outputs) == 1  # rank 0

    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["rng_ranks"]) == 2
    for key, value in single.net.state_dict().items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
