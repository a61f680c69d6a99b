"""``segunet predict scale=auto`` and ``diameter=`` end to end on a tiny checkpoint: what is
resampled, what is said, and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from helpers import error_line, save_tiny_checkpoint

from segunet.checkpoint import save_atomic
from segunet.cli.predict import run as main
from segunet.data.objectsize import object_size_record

SHAPE = (50, 60)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny checkpoints: one that records its training objects (12 to 20 px, median 16),
    one from before segunet recorded them."""
    folder = tmp_path_factory.mktemp("ckpt")
    plain = save_tiny_checkpoint(folder / "plain", "unet_valid")
    state = torch.load(plain, weights_only=True)
    sized = folder / "sized.pt"
    save_atomic({**state, "object_size": object_size_record((12.0, 16.0, 20.0))}, sized)
    return {"plain": plain, "sized": sized}


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8))
    return path


def predict(checkpoint, image, out, *options):
    return main([f"checkpoint={checkpoint}", f"input={image}", f"output={out}", *options])


def test_a_diameter_in_the_trained_range_predicts_the_image_as_it_is(checkpoints, image,
                                                                       tmp_path, capsys):
    assert predict(checkpoints["sized"], image, tmp_path / "plain") == 0
    assert predict(checkpoints["sized"], image, tmp_path / "d", "diameter=14") == 0
    err = capsys.readouterr().err
    assert "objects 14 px across (diameter=), the model's 12.0 to 20.0 px: predicting at its " \
           "own scale" in err
    for name in ("probabilities", "labels", "instances"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "d" / f"a_{name}.tif"),
                                      tifffile.imread(tmp_path / "plain" / f"a_{name}.tif"))


def test_a_diameter_outside_it_resamples_to_the_median_and_back(checkpoints, image, tmp_path,
                                                                capsys):
    assert predict(checkpoints["sized"], image, tmp_path / "d", "diameter=32") == 0
    assert "predicting at 0.5x (25 x 30 px)" in capsys.readouterr().err
    probs = tifffile.imread(tmp_path / "d" / "a_probabilities.tif")
    instances = tifffile.imread(tmp_path / "d" / "a_instances.tif")
    assert probs.shape == (2, *SHAPE) and instances.shape == SHAPE  # the input's own grid


def test_scale_auto_says_what_it_found(checkpoints, image, tmp_path, capsys):
    assert predict(checkpoints["sized"], image, tmp_path / "s", "scale=auto",
                   "outputs=instances") == 0
    err = capsys.readouterr().err
    assert "a.tif: objects about" in err or "a.tif: scale=auto found no objects" in err
    assert tifffile.imread(tmp_path / "s" / "a_instances.tif").shape == SHAPE


@pytest.mark.parametrize("options, message", [
    (["scale=auto"], "records no training object size, which scale=auto scales inputs to: "
                     "use a checkpoint of a newer segunet train, or give pixel_size="),
    (["diameter=20"], "records no training object size, which diameter= scales inputs to"),
])
def test_a_checkpoint_without_object_sizes_is_refused_before_predicting(
        checkpoints, image, tmp_path, capsys, options, message):
    assert predict(checkpoints["plain"], image, tmp_path / "o", *options) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("options, message", [
    (["diameter=0"], "diameter=0.0 is not valid: expected a width in px > 0"),
    (["diameter=nan"], "diameter=nan is not valid: expected a width in px > 0"),
    (["scale=auto", "pixel_size=0.5"], "scale=auto and pixel_size= contradict each other"),
    (["diameter=9", "resample=false"], "diameter= and resample=false contradict each other"),
    (["scale=auto", "diameter=9"], "scale=auto estimates what diameter= gives: give one"),
    (["diameter=1000"], "diameter=1000 px is 62.5x the model's 16.0 px objects, beyond the 8x"),
])
def test_bad_scale_options_are_one_line(checkpoints, image, tmp_path, capsys, options, message):
    assert predict(checkpoints["sized"], image, tmp_path / "o", *options) == 2
    assert message in error_line(capsys)


def test_a_stack_is_scaled_by_its_middle_slice_and_predicted_slice_by_slice(
        checkpoints, tmp_path, capsys):
    stack = np.random.default_rng(1).integers(0, 255, (3, *SHAPE), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    assert predict(checkpoints["sized"], tmp_path / "s.tif", tmp_path / "o", "diameter=32",
                   "outputs=labels") == 0
    assert "predicting at 0.5x (25 x 30 px)" in capsys.readouterr().err
    assert tifffile.imread(tmp_path / "o" / "s_labels.tif").shape == (3, *SHAPE)
    assert predict(checkpoints["sized"], tmp_path / "s.tif", tmp_path / "a", "scale=auto",
                   "outputs=labels") == 0
    err = capsys.readouterr().err
    assert "s.tif: objects about" in err or "s.tif: scale=auto found no objects" in err
    assert tifffile.imread(tmp_path / "a" / "s_labels.tif").shape == (3, *SHAPE)
