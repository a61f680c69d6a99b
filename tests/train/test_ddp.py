"""Data-parallel training (DDP) on the CPU: two gloo processes started by ``segunet train
trainer.devices=2`` (which runs torchrun) against one process with the same global batch."""

import signal

import pytest
import torch
from helpers import TINY

from segunet import errors
from segunet.cli import dispatch as cli
from segunet.cli import train as train_cli
from segunet.data.datasets import StepSampler
from segunet.errors import SegunetError
from segunet.train import distributed
from segunet.train.trainer import build_trainer, run

# Uniform weight maps (no border term, no class balance), no augmentation, no dropout, no
# BatchNorm: see test_two_processes_train_like_one_with_the_same_global_batch.
EQUAL_SUMS = [
    *TINY, "augment=none", "data.targets.w0=0", "data.targets.class_weights=null",
    "model.dropout=0",
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
    log = (run_dir / "train.log").read_text()  # rank 0 alone writes it
    assert log.count("segunet: training ") == log.count("segunet: done at step 3") == 1, log

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
        "-m", "segunet.train.distributed", "--standalone", "--nproc_per_node=4", "-m",
    ]
    assert command[6:] == [
        "segunet.cli", "train", "trainer.max_steps=5",
        f"hydra.run.dir='{tmp_path.resolve()}/a b'",
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
    with pytest.raises(SegunetError, match="torchrun --nproc_per_node=2 -m segunet.cli train"):
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


def test_an_error_in_the_ranks_is_one_line_and_exit_2(tmp_path, monkeypatch, capfd):
    # The patch size is checked against the data, which only the ranks load.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *TINY, "data.patch_size=[75,75]", "trainer.devices=2"])
    stderr = capfd.readouterr().err
    assert exit_.value.code == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("segunet: error:")]
    assert len(errors) == 1, stderr  # from rank 0 alone, and none from the launcher
    assert errors[0].startswith("segunet: error: data.patch_size=[75, 75] does not fit")
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr
    assert "failed (exitcode: 2)" in stderr  # torchrun's own log still shows


def test_settings_every_rank_would_refuse_stop_before_launching(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *TINY, "trainer.devices=2", "trainer.sync_batchnorm=true"])
    assert exit_.value.code == 2
    assert capfd.readouterr().err.splitlines() == [
        "segunet: error: trainer.sync_batchnorm=true needs CUDA: set it false on the CPU"
    ]


class Launcher:
    """A stand-in for the torchrun process: ``wait`` raises each of ``events`` in turn."""

    def __init__(self, *events):
        self.events = list(events)

    def wait(self):
        event = self.events.pop(0)
        if isinstance(event, BaseException):
            raise event
        return event


def test_ctrl_c_waits_for_the_ranks_and_exits_like_one_process(capsys):
    launcher = Launcher(KeyboardInterrupt(), KeyboardInterrupt(), 130)
    assert train_cli.wait_for_ranks(launcher) == 2
    assert launcher.events == []  # waited until torchrun itself ended
    assert capsys.readouterr().err == ""  # rank 0 said where it saved


@pytest.mark.parametrize(
    ("code", "status", "line"),
    [
        (0, 0, None),
        (2, 2, None),  # a rank said why, in one line
        (1, 2, "ended with exit status 1 (see its output above)"),
        (137, 2, "ended by SIGKILL"),
    ],
)
def test_launcher_status_becomes_0_or_2_with_one_line(capsys, code, status, line):
    assert train_cli.wait_for_ranks(Launcher(code)) == status
    lines = capsys.readouterr().err.splitlines()
    if line is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith("segunet: error: training stopped")
        assert line in lines[0]


@pytest.mark.parametrize(("exitcodes", "status"), [([2, -15], 2), ([1, -15], 1), ([-9], 137)])
def test_torchrun_turns_its_failures_into_an_exit_status(monkeypatch, exitcodes, status):
    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {r: ProcessFailure(r, 100 + r, code, "") for r, code in enumerate(exitcodes)}

    def fail(args):
        raise ChildFailedError("segunet.train", failures)

    monkeypatch.setattr(torch.distributed.run, "run", fail)
    assert distributed.torchrun(["--nproc_per_node=2", "-m", "segunet.train"]) == status


def test_other_ranks_hold_back_their_error_for_rank_0(monkeypatch, capsys):
    waits = []
    monkeypatch.setattr(errors.time, "sleep", waits.append)
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit), errors.report_errors():
            raise SegunetError("bad")
    assert waits == [errors.OTHER_RANKS_REPORT_AFTER_S]
    assert capsys.readouterr().err.count("segunet: error: bad") == 2


def test_ctrl_c_under_ddp_saves_and_reports_on_rank_0_alone(make_cfg, tmp_path, monkeypatch):
    trainer = build_trainer(make_cfg(*TINY), tmp_path)

    def interrupted(batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_step", interrupted)
    try:
        trainer.world = distributed.World(rank=1, local_rank=1, size=2)
        with pytest.raises(SystemExit) as exit_:  # quietly: rank 0 saves and says so
            trainer.fit()
        assert exit_.value.code == 0
        assert not (tmp_path / "checkpoints").exists()
        # torchrun passes the terminal's Ctrl-C on again: it must not stop the save.
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        trainer.world = distributed.World(rank=0, local_rank=0, size=2)
        with pytest.raises(SegunetError, match="interrupted at step 0; saved"):
            trainer.fit()
        assert (tmp_path / "checkpoints" / "last.pt").is_file()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.parametrize(("rank", "lines"), [
    ("0", ["segunet: error: terminated (SIGTERM) before training started; no checkpoint was "
           "saved"]),
    ("1", []),  # torchrun stopping it after rank 0 failed: rank 0 has said why
])
def test_sigterm_before_training_is_told_by_rank_0_alone(monkeypatch, capsys, rank, lines):
    """Under load, rank 1 could still be loading when rank 0 failed and torchrun stopped it,
    and its own 'terminated' line came second to rank 0's real error."""
    from types import SimpleNamespace

    from segunet import interrupts
    from segunet.train import trainer

    def terminated(*args):
        raise interrupts.Terminated

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(trainer, "run", terminated)
    monkeypatch.setattr(trainer.HydraConfig, "get",
                        lambda: SimpleNamespace(runtime=SimpleNamespace(output_dir=".")))
    monkeypatch.setattr("segunet.errors.OTHER_RANKS_REPORT_AFTER_S", 0.0)
    with pytest.raises(SystemExit) as exit_, errors.report_errors():
        train_cli._train_job(None)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == lines
