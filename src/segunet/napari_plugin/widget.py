"""The dock widget: choose a model and an image layer, segment it in a worker thread with
napari's progress bar, and get a labels layer (and the class probabilities if asked).
What it computes is :func:`segunet.napari_plugin.job.segment_layer`; here only the
widgets and the thread."""

from __future__ import annotations

from typing import Any

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    create_widget,
)
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error

from segunet.napari_plugin.job import Request, segment_layer

#: The test-time augmentation choices and what they ask the model for.
TTA = {"as tuned": None, "on (8x the time)": True, "off": False}


class SegmentWidget(Container):
    """Model, image layer, options and a Segment button; one status line below."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.image = create_widget(label="image", annotation=napari.layers.Image)
        self.model = LineEdit(label="model", value="nuclei",
                              tooltip="nuclei, a run folder, a checkpoint (.pt) or a "
                              "bioimage.io package (.zip) exported by segunet")
        self.browse = FileEdit(label="or file", mode="r", filter="*.pt *.zip")
        self.tta = ComboBox(label="test-time aug.", choices=list(TTA), value="as tuned")
        self.probabilities = CheckBox(text="add the class probabilities", value=False)
        self.run = PushButton(text="Segment")
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.model, self.browse, self.tta,
                                  self.probabilities, self.run, self.status])
        self.browse.changed.connect(lambda path: setattr(self.model, "value", str(path)))
        self.run.changed.connect(self.start)
        self.worker: Any = None

    def request(self) -> Request:
        return Request(str(self.model.value).strip() or "nuclei", bool(self.probabilities.value),
                       TTA[self.tta.value])

    def start(self) -> Any:
        """Segment the chosen layer in a worker thread; returns the worker (started)."""
        layer = self.image.value
        if layer is None:
            self.status.value = "choose an image layer first"
            return None
        self.run.enabled = False
        self.status.value = f"segmenting {layer.name} ..."
        # errored connected here: else napari re-raises the error in the main thread.
        worker = create_worker(
            segment_layer, layer.data, layer.name, tuple(layer.scale), self.request(),
            progress=progress, _connect={
                "returned": self.add, "errored": self.failed,
                "finished": lambda: setattr(self.run, "enabled", True)},
            _start_thread=False)
        worker.start()
        self.worker = worker
        return worker

    def add(self, layers: list[tuple[Any, dict, str]]) -> None:
        for data, attributes, kind in layers:
            (self.viewer.add_labels if kind == "labels" else self.viewer.add_image)(
                data, **attributes)
        self.status.value = f"added {', '.join(_names(layers))}"

    def failed(self, error: Exception) -> None:
        """segunet's one line (a SegunetError), or the error's, in napari and below."""
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.status.value = message
        show_error(message)


def _names(layers: list[tuple[Any, dict, str]]) -> list[str]:
    names: list[str] = []
    for _, attributes, _kind in layers:
        name = attributes["name"]
        names += name if isinstance(name, list) else [name]
    return names
