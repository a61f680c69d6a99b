"""The rules of ``segunet plan`` on fingerprints built by hand: each rule of the docstring
table, computed here from its written formula, and the refusals."""

from __future__ import annotations

import dataclasses

import pytest

from segunet.errors import SegunetError
from segunet.plan.fingerprint import Fingerprint
from segunet.plan.rules import Device, plan, receptive_field, task_of

FOLDER = {"_target_": "segunet.data.sources.folder", "path": "/d", "channels": None,
          "polarity": "as_is", "balance": "none",
          "val_fraction": 0.1, "percentiles": [1, 99.8], "target": "foreground",
          "metric": "dice", "patch_size": None, "targets": {}}


def nuclei(**changes) -> Fingerprint:
    """A DSB-like set: 200 grey 256x320 images of touching nuclei ~20 px across."""
    fp = Fingerprint(
        source="/d", images=200, sampled=100, spatial_dims=2, shape_min=[256, 320],
        shape_median=[256, 320], channels=[1], colour_images=0.0, colour_gain=None,
        dark_objects=0.0, polarity_rule=1.0, dtype="uint8", intensity=[[0, 10, 200]],
        pixel_size=None,
        anisotropy=1.0, label_kind="instances", foreground_value=None, label_values=30,
        ignored=0.0, foreground=0.15, objects=2500, objects_per_image=25,
        area={"p1": 20, "p5": 80, "p50": 300, "p95": 900},
        diameter={"p1": 5, "p5": 10, "p50": 20, "p95": 34},
        touching=0.3, gap={"p1": 0, "p5": 0, "p50": 3, "p95": 20}, border_cut=0.1)
    return dataclasses.replace(fp, **changes)


def timer(seconds=0.5, peak=None):
    calls = []

    def time_step(model, patch, batch):
        calls.append((model, patch, batch))
        return seconds, peak

    time_step.calls = calls
    return time_step


CPU = Device("cpu")


def choices(fp=None, data=FOLDER, device=CPU, budget=600, step=None):
    result = plan(fp or nuclei(), data, device, budget, step or timer())
    return {c.key: c.value for c in result.choices}, result


def test_receptive_field_of_the_paper():
    # 572 in, 388 out: 185 px of context for a 5-level valid U-Net; 3 and 4 levels by hand
    # (4 px per 3x3 pair and level, times its stride, on both sides of the bottom)
    assert receptive_field(5) == 185
    assert receptive_field(4) == 1 + 4 * (1 + 2 + 4) * 2 + 4 * 8 == 89
    assert receptive_field(3) == 1 + 4 * (1 + 2) * 2 + 4 * 4 == 41


@pytest.mark.parametrize("changes, expected", [
    ({}, ("boundary", "ap")),  # touching instances
    ({"touching": 0.0}, ("foreground", "ap")),
    ({"label_kind": "binary", "touching": 0.0, "foreground": 0.78,
      "gap": {"p50": 3.0}}, ("boundary", "vrand")),  # membranes: regions, thin walls
    ({"label_kind": "binary", "touching": 0.0, "foreground": 0.05,
      "gap": {"p50": 60.0}}, ("foreground", "iou")),  # sparse mitochondria
    ({"label_kind": "classes", "touching": 0.0}, ("foreground", "dice")),
])
def test_target_and_metric(changes, expected):
    assert task_of(nuclei(**changes))[:2] == expected
    got, _ = choices(nuclei(**changes))
    assert (got["data.target"], got["data.metric"]) == expected


def test_depth_reaches_one_and_a_half_diameters():
    got, _ = choices(nuclei(diameter={"p1": 5, "p5": 10, "p50": 20, "p95": 34}))
    assert len(got["model.channels"]) == 3  # 41 px >= max(30, 34)
    got, _ = choices(nuclei(diameter={"p1": 5, "p5": 10, "p50": 30, "p95": 50}))
    assert len(got["model.channels"]) == 4  # 41 < 50 <= 89
    got, _ = choices(nuclei(diameter={"p1": 5, "p5": 10, "p50": 100, "p95": 120}))
    assert len(got["model.channels"]) == 5
    assert got["model.channels"] == [16, 32, 64, 128, 256]


def test_objects_too_large_are_refused_in_one_line():
    with pytest.raises(SegunetError, match=r"objects are 300 px across .* than the deepest "
                       r"U-Net sees \(185 px\): downsample"):
        choices(nuclei(diameter={"p1": 100, "p5": 200, "p50": 300, "p95": 400}))


def test_patch_is_valid_and_fits_the_smallest_image():
    from segunet.models.shapes import output_size

    got, _ = choices(nuclei(shape_min=[200, 240]))
    levels = len(got["model.channels"])
    for side, size in zip(got["data.patch_size"], (200, 240)):
        assert side <= size and output_size(side, levels, "valid") > 0
    got, _ = choices(nuclei(shape_min=[1024, 1024]))
    assert max(got["data.patch_size"]) <= 256  # the CPU cap


def test_steps_from_the_measured_step_time():
    got, result = choices(budget=600, step=timer(0.5))
    assert got["trainer.max_steps"] == int(0.65 * 600 / 0.5)
    assert result.info["step_s"] == 0.5 and result.info["budget_s"] == 600
    got, _ = choices(budget=60, step=timer(5.0))
    assert got["trainer.max_steps"] == 100  # a floor: a handful of steps trains nothing


def test_gpu_batch_from_the_measured_peak_memory():
    step = timer(0.1, peak=10**9)
    got, _ = choices(device=Device("cuda", free_memory=10 * 10**9), step=step)
    # batch 2 took 1 GB: 60 % of 10 GB holds 12
    assert got["trainer.batch_size"] == 12
    assert [c[2] for c in step.calls] == [2, 12]
    assert got["model.channels"][0] == 32


def test_border_sigma_and_min_size_grid():
    got, _ = choices(nuclei(diameter={"p1": 5, "p5": 10, "p50": 24, "p95": 34},
                            gap={"p50": 3.0}, area={"p1": 10, "p5": 80, "p50": 450, "p95": 900}))
    assert got["data.targets.sigma"] == 6.0  # max(24 / 4, 3 / 2)
    assert got["postprocess.grid"] == {"min_size": [0, 5, 10, 20, 40, 80]}
    got, _ = choices(nuclei(diameter={"p1": 2, "p5": 3, "p50": 4, "p95": 6}, gap={"p50": 1}))
    assert got["data.targets.sigma"] == 2.0  # clipped below
    got, _ = choices(nuclei(diameter={"p1": 20, "p5": 40, "p50": 80, "p95": 120},
                            gap={"p50": 40}))
    assert got["data.targets.sigma"] == 10.0  # clipped above: w0 and sigma of the paper


def test_channels_by_colour_gain():
    mixed = {"channels": [1, 3], "colour_images": 0.2}
    got, _ = choices(nuclei(**mixed, colour_gain=2.0))
    assert got["data.channels"] == 3 and got["model.in_channels"] == 3
    got, _ = choices(nuclei(**mixed, colour_gain=1.1))
    assert got["data.channels"] == 1 and got["model.in_channels"] == 1
    got, _ = choices(nuclei())
    assert "data.channels" not in got  # grey stays as stored


def test_polarity_where_it_is_mixed():
    got, _ = choices(nuclei(dark_objects=0.2, polarity_rule=0.97))
    assert got["data.polarity"] == "bright_objects" and got["augment.p_invert"] == 0.0
    # the background does not tell which images to invert: learn both polarities
    got, _ = choices(nuclei(dark_objects=0.2, polarity_rule=0.8))
    assert "data.polarity" not in got and got["augment.p_invert"] == 0.5
    for one in (0.0, 1.0):
        got, _ = choices(nuclei(dark_objects=one))
        assert "data.polarity" not in got and got["augment.p_invert"] == 0.0
    synthetic = {k: v for k, v in FOLDER.items() if k != "polarity"}
    assert choices(nuclei(dark_objects=0.2), data=synthetic)[0]["augment.p_invert"] == 0.5


def test_balance_where_images_are_of_several_kinds():
    mixed = {"grey, dark background": 80, "colour, bright background": 20}
    got, result = choices(nuclei(appearances=mixed))
    assert got["data.balance"] == "appearance"
    why = next(c.why for c in result.choices if c.key == "data.balance")
    assert "grey, dark background 80" in why and "colour, bright background 20" in why
    odd = {"grey, bright background": 24, "grey, dark background": 1}  # ISBI's dim slice
    for one in ({"grey, dark background": 100}, {}, odd):
        assert "data.balance" not in choices(nuclei(appearances=one))[0]
    stack = {k: v for k, v in FOLDER.items() if k != "balance"}  # a source without it
    assert "data.balance" not in choices(nuclei(appearances=mixed), data=stack)[0]


def test_augmentation_in_proportion_to_object_size():
    got, _ = choices(nuclei(diameter={"p1": 5, "p5": 10, "p50": 12, "p95": 40}))
    assert got["augment.elastic_sigma"] == 6.0  # d50 / 2
    assert got["augment.scale"] == [0.8, 1.2]  # 0.1 * log2(40 / 10)
    got, _ = choices(nuclei(pixel_size=[0.5, 0.25]))
    assert got["augment.rot90"] is False


def test_validation_holds_enough_objects():
    got, _ = choices(nuclei(images=500, objects_per_image=25))
    assert got["data.val_fraction"] == 0.04  # 20 images, 500 objects
    got, _ = choices(nuclei(images=10, objects_per_image=5))
    assert got["data.val_fraction"] == 0.2  # capped: 2 images


def test_anisotropic_stacks_train_on_slices():
    stack = {**FOLDER, "_target_": "segunet.data.sources.tiff_stack", "slices_as": "3d"}
    fp = nuclei(spatial_dims=3, images=1, shape_min=[40, 256, 256], anisotropy=5.0,
                pixel_size=[5.0, 1.0, 1.0])
    got, result = choices(fp, data=stack)
    assert result.model == "unet" and got["data.slices_as"] == "2d"
    assert len(got["data.patch_size"]) == 2
    got, result = choices(dataclasses.replace(fp, anisotropy=1.5, pixel_size=[1.5, 1, 1]),
                          data=stack)
    assert result.model == "unet3d" and len(got["data.patch_size"]) == 3
    assert got["data.val_fraction"] == 0.25


def test_only_the_keys_the_source_has():
    synthetic = {"_target_": "segunet.data.sources.synthetic", "targets": {}, "target": "x",
                 "metric": "x", "patch_size": None}
    got, _ = choices(nuclei(channels=[1, 3], colour_gain=2.0), data=synthetic)
    assert "data.channels" not in got and "data.val_fraction" not in got
    assert "data.targets.sigma" in got
