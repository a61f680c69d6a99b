"""``data.polarity=bright_objects``: images whose background is bright are inverted, in
training (the sources) and in predict (its lazy input) alike, and refused by the one export
whose preprocessing cannot express it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import config_error, save_tiny_checkpoint

from segunet.cli import export
from segunet.data.normalize import (
    appearance,
    bright_background,
    normalize_percentile,
    prepare_image,
)
from segunet.infer.inputs import image_for_model


def cells(bright_objects: bool, seed: int = 0) -> np.ndarray:
    """uint8 64x80: 20 % of the pixels are objects, the rest background."""
    rng = np.random.default_rng(seed)
    image = np.full((64, 80), 30.0) + rng.normal(0, 5, (64, 80))
    image[10:30, 10:30] = image[40:58, 40:70] = 200
    image = image.clip(0, 255).astype(np.uint8)
    return image if bright_objects else 255 - image


def test_the_background_level_by_hand():
    dark = np.zeros((1, 10, 10), np.float32)
    dark[0, :4] = 1.0  # 40 % bright: the median is dark
    assert not bright_background(dark)
    assert bright_background(1 - dark)
    rgb = np.stack([np.full((5, 5), v, np.float32) for v in (0.9, 0.7, 0.2)])
    assert bright_background(rgb)  # channel mean 0.6


def test_training_inverts_only_bright_backgrounds():
    fluo, bright = cells(True)[None], cells(False)[None]
    p = [1.0, 99.8]
    assert np.array_equal(prepare_image(fluo, None, p, "f", "bright_objects"),
                          prepare_image(fluo, None, p, "f"))
    inverted = prepare_image(bright, None, p, "b", "bright_objects")
    assert np.allclose(inverted, 1 - normalize_percentile(bright.astype(np.float32), *p))
    # min-max normalisation is symmetric: both polarities become the same input
    same = [prepare_image(x, None, [0.0, 100.0], "x", "bright_objects") for x in (fluo, bright)]
    assert np.allclose(same[0], same[1], atol=1e-6)


@pytest.mark.parametrize("bright_objects", [True, False])
def test_predict_orients_as_training_did(bright_objects):
    raw = cells(bright_objects)
    cfg = {"percentiles": [1.0, 99.8], "channels": None, "polarity": "bright_objects"}
    lazy = image_for_model(raw, "x.tif", 1, 2, cfg)
    trained = prepare_image(raw[None], None, cfg["percentiles"], "x", "bright_objects")
    assert np.allclose(np.asarray(lazy), trained, atol=1e-6)
    assert np.allclose(lazy[0, 5:20, 7:9], trained[0, 5:20, 7:9], atol=1e-6)  # windows too


def test_polarity_needs_normalised_images(make_cfg):
    line = config_error(make_cfg, "data", "data=folder", "data.path=/x",
                        "data.polarity=bright_objects", "data.percentiles=null")
    assert "data.polarity=bright_objects inverts normalised images: set data.percentiles" in line


def test_bioimageio_export_refuses_what_it_cannot_express(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path)
    saved = torch.load(ckpt, weights_only=True)
    saved["config"]["data"]["polarity"] = "bright_objects"
    torch.save(saved, ckpt)
    assert export.run([f"checkpoint={ckpt}", "format=bioimageio",
                       f"output={tmp_path / 'm.zip'}"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data.polarity=bright_objects, which bioimage.io's preprocessing cannot" in line
    assert not (tmp_path / "m.zip").exists()


def test_appearance_of_fluorescence_brightfield_and_stain():
    p = [1.0, 99.8]
    fluo, bright = cells(True)[None], cells(False)[None]
    # dark objects on a light background whose green varies across it (eosin's pink)
    green = (cells(False) * np.linspace(0.6, 1.0, 80)).astype(np.uint8)
    stain = np.stack([cells(False), green, cells(False)])
    grey_rgb = np.repeat(fluo, 3, axis=0)  # grey saved as RGB is grey
    kinds = [appearance(normalize_percentile(x.astype(np.float32), *p))
             for x in (fluo, bright, stain, grey_rgb)]
    assert kinds == ["grey, dark background", "grey, bright background",
                     "colour, bright background", "grey, dark background"]
