"""The dock widget itself, with napari and Qt (``pip install 'segunet[napari]'``; skipped
without them): a real napari image layer, the widget's worker thread, and the layers it
adds to a viewer, against segunet's API on the same data. The viewer is a stand-in with
napari's ``add_labels``/``add_image``: a real one needs OpenGL, which a CI machine lacks."""

from __future__ import annotations

import os

import numpy as np
import pytest

napari = pytest.importorskip("napari")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import segunet  # noqa: E402
from segunet.data.synthetic import synthetic_cells  # noqa: E402


class Viewer:
    """What the widget uses of napari's viewer: it adds layers."""

    def __init__(self):
        self.added = []

    def add_labels(self, data, **attributes):
        self.added.append(napari.layers.Labels(data, **attributes))

    def add_image(self, data, channel_axis=None, name=None, **attributes):
        """One layer per channel along ``channel_axis``, each with its name, as napari's."""
        if channel_axis is None:
            self.added.append(napari.layers.Image(data, name=name, **attributes))
            return
        for channel, label in zip(np.moveaxis(data, channel_axis, 0), name):
            self.added.append(napari.layers.Image(channel, name=label, **attributes))


@pytest.fixture
def app():
    from qtpy.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def finish(app, worker, seconds=120):
    """Run Qt's event loop until ``worker`` says it finished (its signals cross from the
    worker thread by that loop, as in napari)."""
    import time

    done = []
    worker.finished.connect(lambda: done.append(True))
    end = time.monotonic() + seconds
    while not done:
        app.processEvents()
        assert time.monotonic() < end, "the worker did not finish"
        time.sleep(0.01)
    app.processEvents()


def test_the_widget_segments_a_layer_in_a_worker_and_adds_the_objects(app):
    from segunet.napari_plugin.widget import SegmentWidget

    image, _ = synthetic_cells((128, 100), seed=4)
    viewer = Viewer()
    widget = SegmentWidget(viewer)
    layer = napari.layers.Image(image, name="cells")
    widget.image.choices = [layer]  # napari fills the choices from its viewer's layers
    widget.image.value = layer
    widget.probabilities.value = True
    worker = widget.start()
    assert worker is not None and not widget.run.enabled
    finish(app, worker)
    labels, *probs = viewer.added
    model = segunet.load("nuclei")
    np.testing.assert_array_equal(labels.data, model.segment(image))
    assert labels.name == "cells objects" and len(probs) == 3
    np.testing.assert_allclose(np.stack([p.data for p in probs]), model.predict(image),
                               atol=1e-6)
    assert widget.run.enabled and widget.status.value.startswith("added cells objects")


def test_an_error_is_the_one_line_of_segunet(app, tmp_path):
    from segunet.napari_plugin.widget import SegmentWidget

    viewer = Viewer()
    widget = SegmentWidget(viewer)
    assert widget.start() is None and widget.status.value == "choose an image layer first"
    layer = napari.layers.Image(np.zeros((40, 40), np.float32), name="x")
    widget.image.choices = [layer]
    widget.image.value = layer
    widget.model.value = str(tmp_path / "missing.pt")
    finish(app, widget.start())
    assert viewer.added == [] and "missing.pt" in widget.status.value
    assert "\n" not in widget.status.value and widget.run.enabled
