"""Data-parallel training (DDP) on the CPU: two gloo processes started by ``segunet train
trainer.devices=2`` (which runs torchrun) against one process with the same global batch."""

import pytest
import torch
from conftest import TINY

from segunet import cli, distributed
from segunet.data.datasets import StepSampler
from segunet.errors import SegunetError
from segunet.train import build_trainer, run

# Uniform weight maps (no border term, no class balance), no augmentation, no dropout, no
# BatchNorm: see test_two_processes_train_like_one_with_the_same_global_batch.
EQUAL_SUMS = [
    *TINY, "augment=none", "data.w0=0", "data.class_weights=null", "model.dropout=0",
    "scheduler=constant", "optim.lr=3e-3", "trainer.max_steps=3", "trainer.val_every=3",
    "logging.log_every=1",
]


def test_ranks_draw_disjoint_shares_of_the_single_process_batches():
    one = list(StepSampler(0, 3, batch_size=4))
    ranks = [list(StepSampler(0, 3, batch_size=2, rank=r, world_size=2)) for r in (0, 1)]
    for step in range(3):
        shares = [ranks[r][2 * step : 2 * step + 2] for r in (0, 1)]
        assert shares[0] + shares[1] == one[4 * step : 4 * step + 4]


def test_two_processes_train_like_one_with_the_same_global_batch(
    make_cfg, tmp_path, monkeypatch, capfd
):
    """Two ranks with batch 2 each end with the weights of one process with batch 4.

    Each step, rank r draws items ``4s + 2r, 4s + 2r + 1`` of the very sequence one process
    draws as ``4s .. 4s + 3`` (StepSampler), and a patch is a pure function of its index. DDP
    averages the ranks' gradients, while the loss divides by the sum of pixel weights of the
    batch it sees: the mean of the two ranks' losses equals the loss over all four patches
    only when both ranks' weight sums are equal. So the weight maps are uniform (``w0=0``, no
    class balancing) and every output tile lies inside its image (no unlabelled pixels): each
    rank weighs 2 x 36 x 36 pixels. Without augmentation, dropout or BatchNorm nothing else
    differs, and the weights agree up to the summation order of the gradient all-reduce.
    """
    single = build_trainer(make_cfg(*EQUAL_SUMS, "trainer.batch_size=4"), tmp_path / "one")
    batch = single.prepare(next(iter(single.loader())))
    assert bool((batch["weight"] == 1).all()) and not bool(batch["ignore"].any())
    initial = {k: v.clone() for k, v in single.net.state_dict().items()}
    single.fit()

    # `segunet train trainer.devices=2` in this process; it runs torchrun, which runs 2 ranks.
    run_dir = tmp_path / "two"
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main([
            "train", *EQUAL_SUMS, "trainer.devices=2", "trainer.batch_size=2",
            f"hydra.run.dir={run_dir}",
        ])
    stderr = capfd.readouterr().err
    assert exit_.value.code == 0, stderr[-3000:]
    assert "launching 2 processes" in stderr
    assert stderr.count("segunet: done at step 3") == 1  # rank 0 alone reports

    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["rng_ranks"]) == 2
    reference = single.net.state_dict()
    assert ckpt["model"].keys() == reference.keys()  # no "module." prefix from DDP
    for key, value in reference.items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    # A real check: training moved the weights far more than the tolerance (and ranks
    # training on the same patches instead of disjoint shares fail it).
    assert max((value - initial[key]).abs().max() for key, value in reference.items()) > 1e-3
    one_ckpt = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["metrics"] == pytest.approx(one_ckpt["metrics"], rel=1e-4, abs=1e-6)

    # One run folder, written once: one set of checkpoints, one Hydra record, and TensorBoard
    # files from a single process (the hparams summary adds a second file, as with one rank).
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert not (tmp_path / "outputs").exists()  # no rank made a folder of its own
    events = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    one_events = sorted((tmp_path / "one" / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == len(one_events)
    assert len({e.name.split(".")[4] for e in events}) == 1  # the writer's process id


def test_launch_command_gives_every_rank_one_run_folder(tmp_path):
    command = distributed.launch_command(
        4, ["trainer.max_steps=5", "hydra.run.dir=elsewhere"], tmp_path / "a b"
    )
    assert command[1:6] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
    ]
    assert command[6:] == [
        "segunet.train", "trainer.max_steps=5", f"hydra.run.dir='{tmp_path.resolve()}/a b'",
    ]
    assert distributed.hydra_overrides_for_rank(0) == []
    assert "hydra.output_subdir=null" in distributed.hydra_overrides_for_rank(1)


def test_several_devices_refuse_a_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *TINY, "trainer.devices=2", "-m", "trainer.max_steps=1,2"])
    assert exit_.value.code == 2
    assert "trains one configuration at a time" in capsys.readouterr().err


def test_several_devices_without_a_launcher_say_how_to_launch(make_cfg, tmp_path):
    with pytest.raises(SegunetError, match="torchrun --nproc_per_node=2 -m segunet.train"):
        run(make_cfg(*TINY, "trainer.devices=2"), tmp_path)


def test_a_single_process_world_needs_no_process_group():
    assert distributed.world() == distributed.World()
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.all_gather(3) == [3]
    assert distributed.any_true(True, torch.device("cpu"))


def test_sync_batchnorm_is_a_no_op_in_one_process(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "model.norm=batch", "trainer.sync_batchnorm=true")
    trainer = build_trainer(cfg, tmp_path)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in trainer.net.modules())


def test_more_devices_than_gpus_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *TINY, "trainer.device=cuda", "trainer.devices=2"])
    assert exit_.value.code == 2
    assert "trainer.devices=2 but 1 GPUs are visible" in capsys.readouterr().err
