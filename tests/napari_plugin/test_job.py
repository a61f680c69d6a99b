"""What the napari widget computes, without napari: an image layer's data in, the layers
out, against segunet's Python API on the same array (itself tested against the CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from helpers import save_tiny_checkpoint

import segunet
from segunet.data.synthetic import synthetic_cells
from segunet.napari_plugin import job
from segunet.napari_plugin.job import Request, segment_layer


def test_an_image_layer_becomes_the_objects_segunet_finds():
    image, _ = synthetic_cells((120, 96), seed=2)
    layers = segment_layer(image, "cells", (1.0, 1.0), Request("nuclei", device="cpu"))
    assert len(layers) == 1
    data, attributes, kind = layers[0]
    assert kind == "labels" and attributes == {"name": "cells objects", "scale": [1.0, 1.0]}
    np.testing.assert_array_equal(data, segunet.load("nuclei", "cpu").segment(image))


def test_probabilities_are_one_hidden_layer_per_class_from_the_same_prediction(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path)
    image = np.random.default_rng(0).random((70, 66), dtype=np.float32)
    layers = segment_layer(image, "img", (1.0, 1.0),
                           Request(str(ckpt), probabilities=True, device="cpu"))
    (labels, _, _), (probs, attributes, kind) = layers
    model = segunet.load(ckpt, "cpu")
    np.testing.assert_array_equal(labels, model.segment(image))
    np.testing.assert_allclose(probs, model.predict(image), atol=1e-6)
    assert kind == "image" and attributes["channel_axis"] == 0
    assert attributes["name"] == ["img background", "img foreground"]
    assert attributes["visible"] is False and attributes["contrast_limits"] == [0.0, 1.0]


def test_a_layer_scale_is_the_pixel_size_in_um(tmp_path):
    """A layer with a physical scale is predicted at the model's training pixel size and
    returned on the layer's own grid, as pixel_size= does in the API; napari's default
    scale (1) means none is known."""
    ckpt = save_tiny_checkpoint(tmp_path, pixel_size=[0.5, 0.5])
    image = np.random.default_rng(1).random((60, 64), dtype=np.float32)
    request = Request(str(ckpt), device="cpu")
    (labels, attributes, _), = segment_layer(image, "img", (0.25, 0.25), request)
    model = segunet.load(ckpt, "cpu")
    assert attributes["scale"] == [0.25, 0.25] and labels.shape == image.shape
    np.testing.assert_array_equal(labels, model.segment(image, pixel_size=0.25))
    (plain, _, _), = segment_layer(image, "img", (1.0, 1.0), request)
    np.testing.assert_array_equal(plain, model.segment(image))


def test_the_model_is_loaded_once_per_source():
    job.load.cache_clear()
    first = job.load("nuclei", "cpu")
    assert job.load("nuclei", "cpu") is first and job.load.cache_info().hits == 1


def test_the_manifest_names_the_widget_and_is_installed():
    root = Path(__file__).resolve().parents[2]
    manifest = yaml.safe_load((root / "src/segunet/napari_plugin/napari.yaml").read_text())
    (command,) = manifest["contributions"]["commands"]
    assert command["python_name"] == "segunet.napari_plugin.widget:SegmentWidget"
    assert manifest["contributions"]["widgets"][0]["command"] == command["id"]
    assert (root / "src/segunet/napari_plugin/widget.py").read_text().count(
        "class SegmentWidget(") == 1
    assert 'segunet = "segunet.napari_plugin:napari.yaml"' in (root / "pyproject.toml").read_text()
