"""Atomic writes: the umask's mode, one line and the old file kept when the disk refuses."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys

import pytest
import torch
from helpers import TINY

from segunet.atomic import write_atomic
from segunet.checkpoint import save_atomic


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.bin", lambda f: f.write(b"x"))
        save_atomic({"w": torch.zeros(2)}, tmp_path / "last.pt")
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")  # what open() makes, for comparison
    finally:
        os.umask(old)
    for name in ("a.bin", "last.pt", "plain"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def limited(size: int):
    """A child process whose files cannot grow beyond ``size`` bytes: writes fail as on a
    full disk (EFBIG instead of ENOSPC), through torch's own writer."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return preexec


def test_a_checkpoint_that_does_not_fit_keeps_the_old_one(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"w": torch.zeros(10)}, path)
    old = path.read_bytes()
    code = (
        "import sys, torch; from segunet.checkpoint import save_atomic\n"
        "from segunet.errors import SegunetError\n"
        "try:\n    save_atomic({'w': torch.zeros(100_000)}, sys.argv[1])\n"
        "except SegunetError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, preexec_fn=limited(50_000), timeout=120)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"cannot write {path}: the write failed"), line
    assert line.endswith("the previous file is unchanged")
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_training_on_a_full_disk_stops_in_one_line(tmp_path):
    args = [*TINY, "trainer.max_steps=2", "trainer.val_every=2", "logging.tensorboard=false",
            f"hydra.run.dir={tmp_path / 'run'}", "hydra.output_subdir=null"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([sys.executable, "-m", "segunet.cli", "train", *args], cwd=tmp_path,
                          capture_output=True, text=True, env=env,
                          preexec_fn=limited(100_000), timeout=240)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1].startswith(
        f"segunet: error: cannot write {tmp_path / 'run' / 'checkpoints' / 'last.pt'}: "
    ), lines
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "run" / "checkpoints").iterdir())
