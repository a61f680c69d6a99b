"""One run per run folder: a live run's lock, another run's checkpoints, stale temps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, run_in_process

from segunet.atomic import temp_name
from segunet.errors import SegunetError
from segunet.train import run_folder
from segunet.train.trainer import build_trainer, run

QUICK = [*TINY, "trainer.max_steps=2", "trainer.val_every=2"]


def test_a_folder_a_live_run_holds_is_refused_before_hydra_writes_to_it(tmp_path):
    folder = tmp_path / "run"
    lock = run_folder.claim(folder, None)  # as a training process holds it
    try:
        done = run_in_process("train", *QUICK, f"hydra.run.dir={folder}", cwd=tmp_path)
    finally:
        lock.close()
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"segunet: error: run folder {folder} is in use by a running segunet train "
        f"(pid {os.getpid()} on {os.uname().nodename}): wait for it or choose another folder "
        "(hydra.run.dir=...)"
    ]
    assert not (folder / ".hydra").exists() and not (folder / "checkpoints").exists()


def test_the_lock_ends_with_its_process_even_on_kill_9(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from segunet.train import run_folder; lock = run_folder.claim(Path(sys.argv[1]), None); "
         "print('held', flush=True); time.sleep(600)", str(folder)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SegunetError, match="in use by a running segunet train"):
            run_folder.claim(folder, None)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    run_folder.claim(folder, None).close()


def test_a_second_run_into_a_finished_runs_folder_is_refused(make_cfg, tmp_path):
    run(make_cfg(*QUICK), tmp_path)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    with pytest.raises(SegunetError, match="already holds another run's checkpoints"):
        run(make_cfg(*QUICK), tmp_path)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    assert before == after
    # Resuming that very run may continue in its folder.
    run(make_cfg(*TINY, "trainer.max_steps=4", "trainer.val_every=2",
                 f"trainer.resume={tmp_path}"), tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 4 and last["resumes"][0]["step"] == 2


def test_stale_checkpoint_temps_of_a_killed_writer_go_at_the_next_start(make_cfg, tmp_path):
    """A writer killed (-9) in the middle of a checkpoint leaves its temp; the next run
    into that folder (here, the resume) removes it."""
    checkpoints = tmp_path / "checkpoints"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from segunet.atomic import write_atomic\n"
         "def slow(f):\n    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); "
         "time.sleep(600)\n"
         "write_atomic(sys.argv[1], slow)", str(checkpoints / "last.pt")],
        stdout=subprocess.PIPE, text=True,
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    leaked = list(checkpoints.glob(".last.pt.*.tmp"))
    assert len(leaked) == 1 and leaked[0].stat().st_size == 1000
    run(make_cfg(*QUICK), tmp_path)
    assert not list(checkpoints.glob(".*.tmp"))
    assert (checkpoints / "last.pt").is_file()


def test_remove_stale_temps_keeps_those_of_live_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    host = temp_name(Path("x")).split("@")[1].rstrip(".")
    live = tmp_path / f"{temp_name(tmp_path / 'a.tif')}abc.tmp"
    stale_file = tmp_path / f".b.tif.{dead_pid}@{host}.abc.tmp"
    stale_store = tmp_path / f".c.zarr.{dead_pid}@{host}.abc.tmp"
    other_host = tmp_path / f".d.tif.{dead_pid}@elsewhere.abc.tmp"
    unknown = tmp_path / ".e.tif.abc.tmp"  # an older writer's name: no pid to check
    for p in (live, stale_file, other_host, unknown):
        p.write_bytes(b"x")
    (stale_store / "0").mkdir(parents=True)
    from segunet.atomic import remove_stale_temps

    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_store])
    assert live.exists() and other_host.exists() and unknown.exists()


def test_training_code_alone_needs_no_lock(make_cfg, tmp_path):
    """Trainer users (notebooks, benchmarks) build trainers without claiming folders."""
    trainer = build_trainer(make_cfg(*QUICK), tmp_path)
    trainer.fit()
    assert not (tmp_path / run_folder.LOCK_NAME).exists()


def test_a_run_lock_names_its_process(tmp_path):
    lock = run_folder.claim(tmp_path, None)
    try:
        text = (tmp_path / run_folder.LOCK_NAME).read_text()
    finally:
        lock.close()
    assert text == f"pid {os.getpid()} on {os.uname().nodename}\n"
    run_folder.claim(tmp_path, None).close()


def record_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / ".hydra").iterdir())}


def test_a_refused_resume_leaves_the_runs_hydra_record_as_it_was(tmp_path):
    """The record the refusal points to ("see its .hydra/overrides.yaml"), which bioimage.io
    export reads too, still describes the run that wrote the checkpoint."""
    folder = tmp_path / "run"
    first = run_in_process("train", *QUICK, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = record_of(folder)
    assert set(before) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    refused = run_in_process("train", *TINY, "trainer.max_steps=4", "model=attention_unet",
                             f"trainer.resume={folder}", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert refused.returncode == 2
    assert "holds a different model" in refused.stderr
    assert record_of(folder) == before
    # Refused for its step count (the run is already there): the same.
    done = run_in_process("train", *TINY, "trainer.max_steps=2", "trainer.val_every=1",
                          f"trainer.resume={folder}", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert done.returncode == 2
    assert "raise trainer.max_steps" in done.stderr
    assert record_of(folder) == before


def test_a_resume_that_diverges_before_saving_leaves_the_record_as_it_was(tmp_path):
    """The resume is accepted, then diverges before it saves anything: last.pt is still the
    first run's, so the record (the command bioimage.io export writes into its README) must
    still be that run's, not the resume's optim.lr=1e12."""
    folder = tmp_path / "run"
    first = run_in_process("train", *QUICK, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before, last = record_of(folder), (folder / "checkpoints" / "last.pt").read_bytes()
    diverged = run_in_process("train", *TINY, "trainer.max_steps=4", "trainer.val_every=2",
                              "optim.lr=1e12", f"trainer.resume={folder}",
                              f"hydra.run.dir={folder}", cwd=tmp_path)
    assert diverged.returncode == 2
    assert "training diverged" in diverged.stderr
    assert (folder / "checkpoints" / "last.pt").read_bytes() == last
    assert record_of(folder) == before


def test_an_accepted_resume_records_its_own_overrides_as_hydra_would(tmp_path):
    import yaml

    folder = tmp_path / "run"
    assert run_in_process("train", *QUICK, f"hydra.run.dir={folder}", cwd=tmp_path).returncode == 0
    hydras_own = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())["hydra"]
    resumed = [*TINY, "trainer.max_steps=4", "trainer.val_every=2", f"trainer.resume={folder}"]
    done = run_in_process("train", *resumed, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = folder / ".hydra"
    assert yaml.safe_load((record / "overrides.yaml").read_text()) == resumed
    assert yaml.safe_load((record / "config.yaml").read_text())["trainer"]["max_steps"] == 4
    hydra = yaml.safe_load((record / "hydra.yaml").read_text())["hydra"]
    assert hydra["output_subdir"] == ".hydra"
    assert hydra["overrides"]["task"] == resumed
    assert hydra["overrides"]["hydra"] == hydras_own["overrides"]["hydra"]


@pytest.mark.parametrize("where", ["under_a_file", "a_file", "proc"])
def test_a_run_folder_that_cannot_be_made_is_one_line(tmp_path, where):
    (tmp_path / "f").write_text("x")
    folder = {"under_a_file": tmp_path / "f" / "run", "a_file": tmp_path / "f",
              "proc": Path("/proc/segunet-run")}[where]
    done = run_in_process("train", *QUICK, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"segunet: error: hydra.run.dir={folder}: cannot make or write "
                               "that folder (")
    assert lines[0].endswith("): choose a folder you can write to")


def test_a_sweep_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    done = run_in_process("train", "-m", *QUICK, f"hydra.sweep.dir={tmp_path / 'f' / 'x'}",
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"segunet: error: hydra.sweep.dir={tmp_path / 'f' / 'x'}: cannot make or write that "
        "folder (Not a directory): choose a folder you can write to"
    ]


def test_a_multi_process_run_into_a_folder_with_a_record_holds_it_back_too(tmp_path,
                                                                           monkeypatch):
    """torchrun's rank 0 would otherwise rewrite the record before the resume is checked."""
    from segunet.cli import train as cli

    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    launched = []

    class Done:
        def wait(self):
            return 0

    monkeypatch.setattr(cli.subprocess, "Popen", lambda command: launched.append(command) or Done())
    done = run_in_process("train", *QUICK, "trainer.devices=2", f"hydra.run.dir={folder}",
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hydra.output_subdir=null" in launched[0]
