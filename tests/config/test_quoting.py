"""Override text a user can type: read back by a POSIX shell (sh itself) and Hydra's
override parser, it gives the value, whatever characters it holds."""

from __future__ import annotations

import subprocess

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from segunet.config.quoting import typed


@pytest.mark.parametrize("value", [
    "/runs/a", "/sweep/0_data.n_train=2,model.channels=[4,8,16],optim.lr=0.001",
    "/data/it's here", "/x/$HOME `y` \"z\"", "C:\\runs\\a b\\", "/a/{b}#c~d",
])
def test_typed_overrides_read_back_as_the_value(value):
    text = typed("trainer.resume", value)
    word = subprocess.run(["sh", "-c", f"printf %s {text}"], capture_output=True, text=True,
                          check=True).stdout  # what the shell passes on
    override = OverridesParser.create().parse_override(word)
    assert override.key_or_group == "trainer.resume" and override.value() == value
    assert (text == f"trainer.resume={value}") == (value == "/runs/a")  # quoted when needed
