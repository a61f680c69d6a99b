"""``segunet export format=bioimageio``: a bioimage.io model package (model spec 0.5).

The description (:mod:`segunet.export.bioimageio_description`, which says what the package
holds) is validated by ``bioimageio.spec`` while it packs the zip; ``bioimageio.core``'s
``test_model`` then runs both weight formats on the test input, compares them with the
expected output and tries further valid sizes and batch 2, and its predictions, whole and in
blocks, are compared with segunet's (:mod:`segunet.export.consumer_check`), before the zip is
kept (``verify=true``). Here: the traced weights, the test tensors, the cover and the package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from segunet.atomic import write_atomic
from segunet.checkpoint import load_checkpoint, load_trained
from segunet.data.io import read_array
from segunet.data.normalize import normalize_percentile
from segunet.errors import SegunetError
from segunet.export.anysize import AnySize
from segunet.export.bioimageio_description import (
    STATE_DICT,
    WEIGHTS,
    Checkpoint,
    Geometry,
    PackageInfo,
    check_expressible,
    license_of,
    model_descr,
    readme,
    spec_call,
    without_paths,
)
from segunet.export.consumer_check import check_consumer
from segunet.export.package_model import RECORD, record_of
from segunet.export.traced import exported_bytes, metadata, verify_export
from segunet.pretrained import SHIPPED_AUTHORS, shipped

MISSING = ("format=bioimageio needs bioimageio.spec and bioimageio.core: "
           "pip install 'segunet[bioimageio]'")
# The largest test input cut from the test image by default, per axis: small packages.
TEST_SIZE = {2: 256, 3: 64}


def export_package(
    file: Path, target: Path, info: PackageInfo, input_shape: Sequence[int] | None,
    opset: int, verify: bool, atol: float,
) -> None:
    """Write the bioimage.io package of checkpoint ``file`` to ``target`` (a .zip), all or
    nothing: it is staged in a temp folder and copied to a temp name beside ``target``."""
    spec, core = _bioimageio()
    trained = _load(file)
    if shipped(file) and not info.authors:  # a model of segunet's own: its makers
        info = dataclasses.replace(info, authors=SHIPPED_AUTHORS)
    check_expressible(trained)
    model = trained.model
    geometry = Geometry.of(model)
    image, image_source = source_image(trained, info.test_image)
    tile = input_tile(image, geometry, input_shape, image_source)
    license_of(trained, info)  # before the slow part: a package needs one
    normalised = normalise(tile, trained.percentiles)
    net = Probabilities(model)
    expected = net.predict(normalised[None])
    weights = traced_weights(net, trained, normalised, opset, verify, atol)
    with tempfile.TemporaryDirectory(prefix="segunet-bioimageio-") as tmp, _quiet():
        folder = Path(tmp)
        write_files(folder, trained, tile, normalised, expected, geometry, weights, image_source)
        descr = model_descr(spec, folder, trained, geometry, info, opset)
        package = spec_call(spec.save_bioimageio_package, descr,
                             output_path=folder / "package.zip")
        if verify:
            check_test(core.test_model(package))
            check_consumer(core, package, model, image, trained.percentiles, geometry)
        write_atomic(target, lambda f: _copy(package, f))


# --- the model, its test input and output -------------------------------------------------


class Probabilities(nn.Module):
    """The trained net on an image of any size, as ``segunet predict`` runs it
    (:class:`~segunet.export.anysize.AnySize`), with a softmax over the classes: what the
    package's weights compute. ``model``: the net, or its config node (``_target_`` and
    keyword arguments), which is how a package's ``pytorch_state_dict`` weights name their
    architecture: a consumer that runs PyTorch builds this class from it and loads the state
    dict."""

    def __init__(self, model: nn.Module | dict) -> None:
        super().__init__()
        if isinstance(model, dict):
            from segunet.checkpoint import build_model

            model = build_model(model, "the package's architecture")
        self.model = AnySize(model)
        # The whole module in eval mode: torch.onnx.export restores the training flag of the
        # module it is given, recursively, and a deep-supervised net in training mode returns
        # all its heads.
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The probabilities of ``(N, C, *spatial)`` ``x``, computed by PyTorch."""
        with torch.no_grad():
            return self(torch.from_numpy(x)).numpy()


def _load(file: Path) -> Checkpoint:
    trained = load_trained(file, "cpu")
    return Checkpoint(file, load_checkpoint(file), trained.model, trained.config)


def source_image(trained: Checkpoint, path: str | None) -> tuple[np.ndarray, str]:
    """The ``(C, *spatial)`` float32 image the test input is cut from, and where it is from:
    ``path`` with the channels training gave its images, else the first validation image of
    the training data, rebuilt from the checkpoint's config."""
    from segunet.infer.inputs import image_for_model

    model = trained.model
    if path is not None:
        # percentiles=None: the raw values; the package's preprocessing normalises them.
        raw = image_for_model(read_array(path), Path(path), model.in_channels,
                              model.spatial_dims, {**trained.data, "percentiles": None})
        return np.asarray(raw[...], np.float32), str(path)
    if shipped(trained.file):  # its training data is not on the user's machine
        from segunet.data.synthetic import synthetic_cells

        image = synthetic_cells((256,) * model.spatial_dims, seed=0)[0]
        return np.asarray(image, np.float32)[None], "a synthetic nuclei image (segunet's own)"
    from segunet.config.compose import stored_data

    data = stored_data(trained.config, str(trained.file),
                       "no test image without it: pass test_image=<an image like the "
                       "training data>")
    volume = data.val[0]
    return volume.image, f"the validation image {volume.name} of the training data"


def input_tile(
    image: np.ndarray, geometry: Geometry, input_shape: Sequence[int] | None, source: str
) -> np.ndarray:
    """A tile from the centre of ``image``, mirror-padded where it is smaller: of
    ``input_shape``, else as large as the image up to :data:`TEST_SIZE` per axis; at least
    the package's smallest block, which is what bioimageio.core accepts."""
    spatial = image.shape[1:]
    dims = len(spatial)
    if input_shape is not None and len(input_shape) != dims:
        raise SegunetError(f"input_shape={list(input_shape)} needs {dims} sizes for {source}")
    wanted = list(input_shape) if input_shape else [min(n, TEST_SIZE[dims]) for n in spatial]
    shape = [max(geometry.min, s) for s in wanted]
    starts = [max(0, (n - t) // 2) for n, t in zip(spatial, shape)]
    tile = image[(slice(None), *(slice(s, s + t) for s, t in zip(starts, shape)))]
    short = [(0, 0)] + [(0, t - n) for n, t in zip(tile.shape[1:], shape)]
    return np.pad(tile, short, mode="reflect").astype(np.float32)


def normalise(tile: np.ndarray, percentiles: list[float] | None) -> np.ndarray:
    """What segunet feeds the net for ``tile``: its per-channel percentile normalisation."""
    if percentiles is None:
        return tile
    return normalize_percentile(tile, *percentiles, channel_axis=0)


def traced_weights(
    net: Probabilities, trained: Checkpoint, normalised: np.ndarray, opset: int, verify: bool,
    atol: float,
) -> dict[str, bytes]:
    """TorchScript and ONNX of ``net`` traced on the test input; with ``verify`` each run
    against PyTorch there and on a batch of 2 of another size, off every grid: the traced
    graph must keep its size arithmetic, not the example's sizes."""
    model = trained.model
    example = torch.from_numpy(normalised[None])
    meta = metadata(model, trained.config) | {
        "valid_input_sizes": "any: the graph mirror-extends the image as segunet predict does",
        "output": "probabilities (N, classes, *spatial) as large as the input: the softmax "
        "over the classes"}
    other = [s + 11 for s in normalised.shape[1:]]
    inputs = [example, torch.randn(2, model.in_channels, *other, generator=torch.Generator())]
    weights = {}
    for fmt in WEIGHTS:
        weights[fmt] = exported_bytes(net, fmt, example, opset, meta, ("input", "output"))
        if verify:
            verify_export(net, fmt, weights[fmt], inputs, atol)
    return weights


# --- the package's files -------------------------------------------------------------------


def write_files(
    folder: Path, trained: Checkpoint, tile: np.ndarray, normalised: np.ndarray,
    expected: np.ndarray, geometry: Geometry, weights: dict[str, bytes], image_source: str,
) -> None:
    """Everything the description points to, into ``folder``."""
    import imageio.v3 as iio
    import tifffile
    import yaml

    for fmt, name in WEIGHTS.items():
        (folder / name).write_bytes(weights[fmt])
    # The weights themselves, for consumers that run PyTorch natively (Probabilities' keys).
    torch.save(Probabilities(trained.model).state_dict(), folder / STATE_DICT)
    np.save(folder / "test_input.npy", tile[None])
    np.save(folder / "test_output.npy", expected)
    tifffile.imwrite(folder / "sample_input.tif", tile)
    tifffile.imwrite(folder / "sample_output.tif", expected[0])
    iio.imwrite(folder / "cover.png", cover(normalised, expected[0]))
    (folder / RECORD).write_text(json.dumps(record_of(trained.ckpt), indent=1))
    (folder / "training_config.yaml").write_text(
        yaml.safe_dump(without_paths(trained.config), sort_keys=False))
    (folder / "README.md").write_text(readme(trained, geometry, tile.shape[1:], image_source))


def cover(normalised: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Input | prediction side by side, 2:1 as bioimage.io asks (the middle slice of a
    volume): the input's first channel (or RGB) and the probability of not-background, both
    cut to the square at their centre."""
    if normalised.ndim == 4:
        normalised, probs = normalised[:, normalised.shape[1] // 2], probs[:, probs.shape[1] // 2]
    picture = normalised[:3] if normalised.shape[0] == 3 else normalised[:1].repeat(3, 0)
    side = min(probs.shape[1:])
    square = tuple(slice((n - side) // 2, (n - side) // 2 + side) for n in probs.shape[1:])
    panels = [picture[(slice(None), *square)], (1 - probs[(slice(0, 1), *square)]).repeat(3, 0)]
    both = np.concatenate(panels, axis=2)
    return (np.clip(both, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


# --- bioimageio's packages -----------------------------------------------------------------


def _bioimageio() -> tuple[ModuleType, ModuleType]:
    """``bioimageio.spec`` (with its model.v0_5) and ``bioimageio.core``, or the one line
    that says how to get them."""
    try:
        import bioimageio.core as core
        import bioimageio.spec as spec
        import bioimageio.spec.model.v0_5  # noqa: F401  (spec.model.v0_5 below)
    except ImportError:
        raise SegunetError(MISSING) from None
    return spec, core


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without bioimageio's log lines on stderr: the command reports in one line."""
    from loguru import logger

    logger.disable("bioimageio")
    try:
        yield
    finally:
        logger.enable("bioimageio")



def check_test(summary: Any) -> None:
    """A SegunetError naming the first of bioimageio.core's tests the package failed."""
    if summary.status == "passed":
        return
    failed = next((d for d in summary.details if d.status == "failed"), None)
    what = failed.name if failed else summary.status
    error = failed.errors[0].msg if failed and failed.errors else ""
    error = " ".join(error.replace("\\|", "|").split())[:300]  # markdown-escaped bars
    raise SegunetError(
        f"bioimageio.core's test of the package failed: {what}"
        + (f" ({error})" if error else "") + "; nothing written"
    )


def _copy(source: Path, f: Any) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f)
