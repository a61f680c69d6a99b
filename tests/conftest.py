import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from segunet.config import config_dir


@pytest.fixture
def make_cfg():
    """Compose the real configs with overrides, as ``segunet train`` would."""

    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()
