"""Models that ship with segunet, and fine-tuning from any checkpoint (trainer.init_from)."""

from __future__ import annotations

import warnings
import zipfile

import bioimageio.core
import numpy as np
import pytest
import tifffile
import torch
from helpers import TINY, run_cli, save_tiny_checkpoint

from segunet import pretrained
from segunet.checkpoint import load_trained
from segunet.cli import export
from segunet.cli import predict as predict_cli
from segunet.data.objectsize import equivalent_diameters
from segunet.data.synthetic import synthetic_cells
from segunet.errors import SegunetError
from segunet.eval.metrics import average_precision
from segunet.train.trainer import build_trainer


def test_trainer_init_from_loads_the_weights_and_nothing_else(make_cfg, tmp_path, capsys):
    source = save_tiny_checkpoint(tmp_path / "a", channels=(4, 8, 16))
    given = torch.load(source, weights_only=True)["model"]
    trainer = build_trainer(make_cfg(*TINY, f"trainer.init_from={source}"), tmp_path / "b")
    for key, value in trainer.net.state_dict().items():
        torch.testing.assert_close(value, given[key], rtol=0, atol=0, msg=key)
    assert trainer.step == 0 and not trainer.optimizer.state  # a new run: new optimiser
    values = sum(v.numel() for v in given.values()) / 1e6
    assert (f"segunet: trainer.init_from={source}: loaded {len(given)} of {len(given)} tensors "
            f"({values:.2f}M values) from {source}\n") in capsys.readouterr().err


def test_a_head_of_other_classes_is_reinitialised_with_one_warning(make_cfg, tmp_path,
                                                                   capsys):
    source = save_tiny_checkpoint(tmp_path / "a", out_channels=3)  # e.g. the boundary target
    given = torch.load(source, weights_only=True)["model"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = build_trainer(make_cfg(*TINY, f"trainer.init_from={source}"), tmp_path / "b")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "output layer predicts other classes" in messages[0]
    err = capsys.readouterr().err
    assert f"loaded {len(given) - 2} of {len(given)} tensors" in err
    assert "; re-initialised head.bias, head.weight\n" in err
    own = trainer.net.state_dict()
    assert own["head.weight"].shape[0] == 2
    for key, value in own.items():
        if not key.startswith("head."):
            torch.testing.assert_close(value, given[key], rtol=0, atol=0, msg=key)


def test_finetune_lr_scale_sets_the_fine_tune_learning_rate_and_says_it(make_cfg, tmp_path,
                                                                         capsys):
    source = save_tiny_checkpoint(tmp_path / "a")
    start = f"trainer.init_from={source}"
    plain = build_trainer(make_cfg(*TINY, "optim.lr=0.002"), tmp_path / "p")
    assert plain.optimizer.param_groups[0]["lr"] == pytest.approx(0.002)
    assert "fine-tuning" not in capsys.readouterr().err
    same = build_trainer(make_cfg(*TINY, "optim.lr=0.002", start), tmp_path / "s")
    assert same.optimizer.param_groups[0]["lr"] == pytest.approx(0.002)
    assert "fine-tuning at the recipe's lr 0.002, for images unlike the model's own; " \
           "trainer.finetune_lr_scale=0.1 keeps" in capsys.readouterr().err
    tenth = build_trainer(make_cfg(*TINY, "optim.lr=0.002", start,
                                   "trainer.finetune_lr_scale=0.1"), tmp_path / "t")
    assert all(g["lr"] == pytest.approx(0.0002) for g in tenth.optimizer.param_groups)
    assert tenth.scheduler.base_lrs == pytest.approx([0.0002])  # the schedule starts there
    assert "fine-tuning at lr 0.0002 (optim.lr x trainer.finetune_lr_scale=0.1)" in (
        capsys.readouterr().err)


def test_another_architecture_is_one_line(make_cfg, tmp_path):
    source = save_tiny_checkpoint(tmp_path / "a", channels=(4, 8))
    with pytest.raises(SegunetError, match=r"trainer.init_from=.* holds another architecture"):
        build_trainer(make_cfg(*TINY, f"trainer.init_from={source}"), tmp_path / "b")


def test_resume_and_init_from_together_are_refused(tmp_path):
    done = run_cli("train", *TINY, "trainer.resume=x", "trainer.init_from=y", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "segunet: error: trainer.resume continues a run, trainer.init_from starts a new one "
        "from another's weights: give one of them"
    ]


def test_unknown_shipped_models_are_one_line(tmp_path, capsys):
    assert predict_cli.run(["model=cells", f"input={tmp_path}", f"output={tmp_path}"]) == 2
    assert "model=cells is no model that ships with segunet: use one of nuclei" in (
        capsys.readouterr().err
    )
    with pytest.raises(SegunetError, match="not both"):
        pretrained.checkpoint_or_model("a.pt", "nuclei")
    with pytest.raises(SegunetError, match="not neither"):
        pretrained.checkpoint_or_model(None, None)


def test_the_nuclei_model_is_small_and_was_tuned():
    nuclei = pretrained.path_of("nuclei")
    assert nuclei.stat().st_size < 10 * 2**20
    trained = load_trained(nuclei)
    assert trained.config["data"]["target"] == "boundary"
    assert trained.postprocess is not None and trained.postprocess["metric"] == "ap"


def test_predict_model_nuclei_finds_nuclei_out_of_the_box(tmp_path):
    """On segunet's own synthetic nuclei, which it never saw: most are found."""
    image, truth = synthetic_cells((256, 256), seed=123)
    raw = np.clip(image * 255 / image.max(), 0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cells.tif", raw)
    out = tmp_path / "out"
    assert predict_cli.run(["model=nuclei", f"input={tmp_path / 'cells.tif'}", f"output={out}",
                             "outputs=instances"]) == 0
    found = tifffile.imread(out / "cells_instances.tif")
    assert average_precision(found, truth)[0.5] > 0.5


def test_model_nuclei_with_scale_auto_finds_nuclei_three_times_larger(tmp_path, capsys):
    """The same synthetic nuclei upsampled 3x (36 to 84 px across, beyond most of what the
    model was trained on): scale=auto measures them, and finds them about as well as at their
    own scale."""
    from skimage.transform import resize

    image, truth = synthetic_cells((192, 192), seed=7)
    raw = np.clip(image * 255 / image.max(), 0, 255)
    big = resize(raw, (576, 576), order=1, preserve_range=True).astype(np.uint8)
    big_truth = resize(truth, (576, 576), order=0, preserve_range=True).astype(truth.dtype)
    tifffile.imwrite(tmp_path / "small.tif", raw.astype(np.uint8))
    tifffile.imwrite(tmp_path / "big.tif", big)
    found = {}
    for name, options in (("small", []), ("big", []), ("big_auto", ["scale=auto"])):
        out = tmp_path / name
        stem = name.split("_")[0]
        assert predict_cli.run(["model=nuclei", f"input={tmp_path / f'{stem}.tif'}",
                                f"output={out}", "outputs=instances", "tta=false",
                                *options]) == 0
        found[name] = tifffile.imread(out / f"{stem}_instances.tif")
    said = capsys.readouterr().err
    width = float(said.split("objects about ")[1].split(" px")[0])
    truth_width = np.median(equivalent_diameters(big_truth))
    assert abs(np.log2(width / truth_width)) < 0.3, (width, truth_width)
    assert found["big_auto"].shape == big.shape
    small = np.mean(list(average_precision(found["small"], truth).values()))
    auto = np.mean(list(average_precision(found["big_auto"], big_truth).values()))
    as_is = np.mean(list(average_precision(found["big"], big_truth).values()))
    assert auto > 0.8 * small, (auto, small)  # 0.68 and 0.78 when written
    assert auto > as_is + 0.1, (auto, as_is)  # as it is: 0.42, nuclei in pieces


def test_export_model_nuclei_gives_a_package_bioimageio_core_passes(tmp_path, capsys):
    """Its training data is not on the user's machine: the test input is segunet's own
    synthetic nuclei, and bioimage.io's own test runs the package's weights on it."""
    import yaml

    out = tmp_path / "nuclei.bioimageio.zip"
    assert export.run(["model=nuclei", "format=bioimageio", f"output={out}",
                        "version=1.2.0"]) == 0, capsys.readouterr().err
    assert bioimageio.core.test_model(out).status == "passed"
    readme = zipfile.ZipFile(out).read("README.md").decode()
    assert "a synthetic nuclei image (segunet's own)" in readme
    # The command it carries, without the paths of the machine that trained it.
    assert "segunet train experiment=dsb2018_cpu data.path=<trainval> " in readme
    assert "/work/" not in readme and "cache_dir=<cache>" in readme
    rdf = yaml.safe_load(zipfile.ZipFile(out).read("rdf.yaml"))
    assert rdf["license"] == "CC0-1.0"  # its training data's, DSB 2018
    assert rdf["version"] == "1.2.0"
    assert {"2d", "instance-segmentation", "fluorescence-light-microscopy", "nuclei"} <= set(
        rdf["tags"])
    assert {c["doi"] for c in rdf["cite"]} >= {"10.1038/s41592-019-0612-7",
                                              "10.1007/978-3-319-24574-4_28"}


def test_nuclei_classes_have_one_name_in_ome_zarr_bioimageio_and_training(tmp_path, capsys):
    """The OME-Zarr channels of its probabilities are named as its bioimage.io package and
    its training data name the classes (not ``class 0``, ``class 1``, ...)."""
    import yaml
    import zarr

    from segunet.data.sources import class_names_for

    tifffile.imwrite(tmp_path / "cells.tif", (synthetic_cells((64, 64), seed=1)[0] * 255)
                     .clip(0, 255).astype(np.uint8))
    assert predict_cli.run(["model=nuclei", f"input={tmp_path / 'cells.tif'}",
                             f"output={tmp_path / 'out'}", "format=ome-zarr",
                             "outputs=probabilities"]) == 0, capsys.readouterr().err
    attrs = zarr.open_group(str(tmp_path / "out" / "cells.ome.zarr"), mode="r").attrs.asdict()
    channels = attrs.get("ome", attrs)["omero"]["channels"]
    package = tmp_path / "nuclei.bioimageio.zip"
    assert export.run(["model=nuclei", "format=bioimageio", f"output={package}",
                        "verify=false"]) == 0, capsys.readouterr().err
    rdf = yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))
    exported = next(a for a in rdf["outputs"][0]["axes"] if a["type"] == "channel")
    data = load_trained(pretrained.path_of("nuclei")).config["data"]
    trained = class_names_for(data["class_names"], data["targets"]["label_kind"],
                              data["targets"]["num_classes"], data["target"])
    assert [c["label"] for c in channels] == exported["channel_names"] == trained == [
        "background", "nucleus interior", "nucleus boundary"]
