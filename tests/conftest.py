import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from segunet.config.compose import config_dir


def pytest_configure(config):
    """Under pytest-xdist the workers share the cores: each (and what it starts) gets its
    share of torch's threads, not all of them, which would oversubscribe the cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _user_cache(tmp_path_factory, monkeypatch):
    """The per-user cache folder (the weight maps' default, ``data.targets.cache_dir=auto``)
    in a folder of each test's own: no test writes into the real one or reads another test's
    entries. platformdirs reads XDG_CACHE_HOME on Linux, here and in the commands a test
    starts; elsewhere this fails rather than use the real folder."""
    import platformdirs

    folder = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    assert platformdirs.user_cache_dir("segunet") == str(folder / "segunet"), "not honoured"


@pytest.fixture
def make_cfg():
    """Compose the real configs with overrides, as ``segunet train`` would."""

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()
