"""The typed config layer: schemas from the constructors, every shipped YAML typed by one,
one-line errors naming the key and what it takes, the configs' folder, old checkpoints."""

from __future__ import annotations

import dataclasses
import inspect
import shutil

import pytest
import torch
from helpers import TINY, config_error, save_tiny_checkpoint
from omegaconf import OmegaConf

from segunet.checkpoint import load_trained
from segunet.config.compose import (
    ALLOWED_TARGETS,
    check_all_targets,
    config_dir,
    group_schema,
    instantiate_group,
    schema_targets,
    upgrade,
)
from segunet.config.schema import locate, schema_for
from segunet.data.datasets import SegmentationData
from segunet.data.labels import Targets
from segunet.errors import SegunetError
from segunet.models import UNet
from segunet.train.trainer import build_trainer


def test_a_schema_is_its_constructors_signature():
    schema = schema_for("segunet.models.UNet")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    signature = inspect.signature(UNet).parameters
    assert list(fields) == ["_target_", *signature]
    assert fields["_target_"].default == "segunet.models.UNet"
    for name, p in signature.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else (
            f.default)
        assert default == (list(p.default) if isinstance(p.default, tuple) else p.default)
    assert fields["channels"].type == list[int]
    assert fields["padding"].metadata["choices"] == ("valid", "same")
    assert fields["norm"].metadata["choices"] == ("batch", "group", "instance")


def test_forwarded_keyword_arguments_and_nested_targets_are_in_the_schema():
    schema = OmegaConf.structured(schema_for("segunet.data.sources.tiff_stack"))
    assert OmegaConf.is_missing(schema, "path") and schema.slices_as == "2d"  # own, stack's
    assert OmegaConf.to_container(schema.targets) == dataclasses.asdict(
        Targets(label_kind="binary"))  # stack's default
    assert schema_for("segunet.models.AttentionUNet") is not schema_for("segunet.models.UNet")
    assert [f.name for f in dataclasses.fields(schema_for("segunet.models.AttentionUNet"))][1:] \
        == list(inspect.signature(UNet).parameters)


def test_torch_targets_leave_their_first_argument_to_the_caller():
    fields = {f.name: f for f in dataclasses.fields(group_schema("optim", "torch.optim.SGD"))}
    assert "params" not in fields and fields["_partial_"].default is True
    assert fields["lr"].type is float  # float | Tensor: the float
    groups = {group for group, _ in schema_targets()}
    assert groups == {*ALLOWED_TARGETS, "optim", "scheduler"}


@pytest.mark.parametrize("group", sorted({*ALLOWED_TARGETS, "optim", "scheduler"}))
def test_every_shipped_option_is_allowed_typed_and_builds_its_target(make_cfg, group):
    names = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    assert names, f"no options in configs/{group}"
    for name in names:
        cfg = make_cfg(f"{group}={name}")
        check_all_targets(cfg, f"{group}={name}")
        schema = OmegaConf.get_type(cfg[group])
        assert dataclasses.is_dataclass(schema), f"{group}/{name} extends no schema"
        assert schema is group_schema(group, schema_default_target(schema)), name
        if group == "data" and not name.startswith("synthetic"):
            # File-backed presets need their files: test_sources builds them on the real
            # datasets; here they must compose and name their source.
            assert cfg.data._target_.startswith("segunet.data.sources."), name
            continue
        if group == "data":
            small = "[8,8,8]" if name == "synthetic3d" else "[32,32]"
            cfg = make_cfg(f"data={name}", "data.n_train=1", "data.n_val=1", f"data.shape={small}")
        built = instantiate_group(cfg, group)
        assert built_type(built, group) is built_class(cfg, group), name
        if group == "data":
            assert len(built.train) == len(built.val) == 1, name


def schema_default_target(schema: type) -> str:
    return next(f.default for f in dataclasses.fields(schema) if f.name == "_target_")


def built_type(obj: object, group: str) -> type:
    """The type of what a group built: optimisers and schedulers on real parameters."""
    params = [torch.zeros(1, requires_grad=True)]
    if group == "optim":
        obj = obj(params)
    elif group == "scheduler":
        obj = obj(torch.optim.SGD(params, lr=0.1))
    return type(obj)


def built_class(cfg, group: str) -> type:
    """What the group's _target_ names: a class, or for data the SegmentationData a source
    function returns."""
    return SegmentationData if group == "data" else locate(cfg[group]._target_)


@pytest.mark.parametrize(
    ("override", "group", "expected"),
    [
        ("trainer.max_steps=abc", "trainer", "trainer.max_steps='abc' is not valid: expected int"),
        ("trainer.max_steps=0", "trainer", "trainer.max_steps=0 must be at least 1"),
        ("trainer.precision=fp8", "trainer",
         "trainer.precision='fp8' is not valid: expected one of auto, fp32, bf16, fp16"),
        ("model.channels=3", "model", "model.channels=3 is not valid: expected a list of int"),
        ("model.norm=layer", "model",
         "model.norm='layer' is not valid: expected one of batch, group, instance or null"),
        ("optim.lr=fast", "optim", "optim.lr='fast' is not valid: expected float"),
        ("data.targets.label_kind=rgb", "data", "data.targets.label_kind='rgb' is not valid: "
         "expected one of instances, binary, classes"),
        ("data.targets.class_weights=equal", "data", "data.targets.class_weights='equal' is "
         "not valid: expected one of balanced or null"),
        ("logging.log_every=0", "logging", "logging.log_every=0 must be at least 1"),
        ("data=folder", "data", "missing data.path=..."),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key_and_what_it_takes(make_cfg, override, group,
                                                                   expected):
    assert config_error(make_cfg, group, override) == expected


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_stepz=3", "unknown key 'trainer.max_stepz': did you mean "
         "trainer.max_steps? (trainer has max_steps, batch_size,"),
        ("data.w0=3", "unknown key 'data.w0': did you mean data.targets.w0? (data has n_train,"),
        ("+trainer.fast=true", "unknown key 'trainer.fast' (trainer has max_steps,"),
    ],
)
def test_an_unknown_key_lists_the_keys_and_a_close_one(make_cfg, override, expected):
    assert config_error(make_cfg, "trainer", override).startswith(expected)


def test_the_configs_folder_can_be_replaced(make_cfg, tmp_path, monkeypatch):
    mine = tmp_path / "configs"
    shutil.copytree(config_dir(), mine)
    trainer = mine / "trainer" / "default.yaml"
    trainer.write_text(trainer.read_text().replace("max_steps: 2000", "max_steps: 7"))
    monkeypatch.setenv("SEGUNET_CONFIG_DIR", str(mine))
    assert config_dir() == mine
    assert make_cfg().trainer.max_steps == 7


def test_a_checkpoint_of_the_flat_data_keys_still_builds(tmp_path):
    """Checkpoints written before ``data.targets`` hold its keys flat in ``data``."""
    old = {"_target_": "segunet.data.sources.synthetic", "n_train": 1, "n_val": 1,
           "shape": [24, 24], "w0": 3.0, "separate_touching": False, "cache_dir": None,
           "target": "foreground"}
    config = upgrade({"data": old})
    assert config["data"]["targets"] == {"w0": 3.0, "separate_touching": False,
                                         "cache_dir": None}
    assert config["data"]["target"] == "foreground" and "w0" not in config["data"]
    assert upgrade(config) == config
    data = instantiate_group(config, "data", "old.pt")
    assert len(data.train) == 1 and data.train[0].weight.max() > 0
    file = save_tiny_checkpoint(tmp_path)
    ckpt = torch.load(file, weights_only=True)
    ckpt["config"]["data"] |= old
    torch.save(ckpt, file)
    assert load_trained(file).config["data"]["targets"]["w0"] == 3.0


def test_a_checkpoint_config_is_typed_before_anything_is_built(tmp_path):
    file = save_tiny_checkpoint(tmp_path)
    ckpt = torch.load(file, weights_only=True)
    ckpt["config"]["model"]["channels"] = "wide"
    torch.save(ckpt, file)
    with pytest.raises(SegunetError) as info:
        load_trained(file)
    assert str(info.value) == (
        f"{file}: model.channels='wide' is not valid: expected a list of int")


#: The ``_target_`` of each group as checkpoints written before the packages by role store
#: them (src/segunet/pretrained/nuclei.pt among them), and the class each one builds.
OLD_TARGETS = {
    "loss": ("segunet.losses.WeightedCrossEntropy", "WeightedCrossEntropy"),
    "trainer": ("segunet.train.TrainerConfig", "TrainerConfig"),
    "logging": ("segunet.logger.LoggingConfig", "LoggingConfig"),
    "postprocess": ("segunet.tune.TuneConfig", "TuneConfig"),
}


def with_old_targets(file) -> dict:
    """Rewrite the checkpoint ``file`` as one written before the move; returns its config."""
    ckpt = torch.load(file, weights_only=True)
    for group, (target, _) in OLD_TARGETS.items():
        ckpt["config"][group] = {**ckpt["config"].get(group, {}), "_target_": target}
    torch.save(ckpt, file)
    return ckpt["config"]


def test_a_checkpoint_of_the_old_module_names_still_loads(tmp_path):
    stored = with_old_targets(save_tiny_checkpoint(tmp_path))
    with pytest.raises(SegunetError, match="segunet.losses.WeightedCrossEntropy"):
        check_all_targets(stored, "old.pt")  # the old names are not allowed as they are
    config = upgrade(stored)
    check_all_targets(config, "old.pt")
    for group, (_, name) in OLD_TARGETS.items():
        assert type(instantiate_group(config, group, "old.pt")).__name__ == name
    assert upgrade(config) == config
    trained = load_trained(tmp_path / "checkpoints" / "last.pt")
    assert trained.config["trainer"]["_target_"] == "segunet.train.settings.TrainerConfig"


def test_a_run_of_the_old_module_names_resumes(make_cfg, tmp_path):
    build_trainer(make_cfg(*TINY, "trainer.max_steps=2"), tmp_path / "a").fit()
    for file in (tmp_path / "a" / "checkpoints").glob("*.pt"):
        with_old_targets(file)
    resumed = build_trainer(
        make_cfg(*TINY, "trainer.max_steps=3", f"trainer.resume={tmp_path / 'a'}"),
        tmp_path / "b")
    assert resumed.step == 2


def test_the_shipped_model_stores_the_old_names_and_loads():
    """nuclei.pt was written before the move and is not rewritten: its whole stored config
    is allowed once upgraded, and every group of it builds."""
    from segunet.pretrained import path_of

    stored = torch.load(path_of("nuclei"), weights_only=True)["config"]
    assert {stored[g]["_target_"] for g in OLD_TARGETS} == {t for t, _ in OLD_TARGETS.values()}
    config = upgrade(stored)
    check_all_targets(config, "nuclei.pt")
    for group, (_, name) in OLD_TARGETS.items():
        assert type(instantiate_group(config, group, "nuclei.pt")).__name__ == name
