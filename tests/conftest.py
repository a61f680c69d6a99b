import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from segunet.config import config_dir

# A tiny but complete training setup: 3-level U-Net, two small synthetic images.
TINY = [
    "experiment=quickstart",
    "model.channels=[4,8,16]",
    "data.n_train=2",
    "data.n_val=1",
    "data.shape=[96,96]",
    "data.patch_size=[76,76]",
    "trainer.batch_size=2",
    "trainer.device=cpu",  # exact-resume and speed expectations are the CPU's, GPU or not
    "logging.progress=false",
]


@pytest.fixture
def make_cfg():
    """Compose the real configs with overrides, as ``segunet train`` would."""

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``segunet`` entry point in a subprocess, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "segunet.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=240,
    )
