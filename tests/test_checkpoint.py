import pickle

import pytest
import torch

from segunet.checkpoint import (
    clean_state_dict,
    load_checkpoint,
    resolve_checkpoint,
    save_atomic,
    unwrap,
)
from segunet.errors import SegunetError


def test_prefixes_stripped_in_any_order():
    state = {"_orig_mod.module.a.weight": 1, "module._orig_mod.b": 2, "c": 3}
    assert clean_state_dict(state) == {"a.weight": 1, "b": 2, "c": 3}


def test_unwrap_compiled_model():
    net = torch.nn.Linear(2, 2)
    wrapped = torch.nn.Module()
    wrapped._orig_mod = net
    assert unwrap(wrapped) is net


def test_save_atomic_round_trip_weights_only(tmp_path):
    obj = {"model": {"w": torch.arange(3.0)}, "step": 7, "config": {"a": [1, "x"]}}
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic(obj, path)
    back = torch.load(path, weights_only=True)
    assert back["step"] == 7 and torch.equal(back["model"]["w"], torch.arange(3.0))
    assert resolve_checkpoint(tmp_path) == path
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"model": {}, "step": 1}, path)
    with pytest.raises((AttributeError, pickle.PicklingError)):
        save_atomic({"model": {}, "bad": lambda: None}, path)  # lambdas cannot be pickled
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(SegunetError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SegunetError, match="cannot read checkpoint"):
        load_checkpoint(bad)
