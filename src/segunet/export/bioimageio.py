"""``segunet export format=bioimageio``: a bioimage.io model package (model spec 0.5).

The description is built from ``bioimageio.spec``'s own classes and validated by it while it
packs the zip; ``bioimageio.core``'s ``test_model`` then runs both weight formats on the test
input, compares them with the expected output and tries further valid sizes and batch 2,
before the zip is kept (``verify=true``). What the package says:

- input ``(batch, channel, [z,] y, x)`` float32 whose spatial sizes are the net's valid sizes
  ``min + n * step``, with the physical pixel size of the training data where the checkpoint
  has one;
- preprocessing ``ensure_dtype`` and ``scale_range`` per sample and channel with the training
  percentiles: segunet's per-image normalisation, but for the spec's ``eps`` (1e-6) in the
  denominator and segunet's fallback to min/max for a flat channel;
- output: per-class probabilities. The softmax is in the graph, so that consumers running no
  post-processing (ilastik, deepImageJ) still get probabilities. A valid-padded net crops a
  halo of ``h`` pixels per side itself: the output size is the input's ``- 2h``, which the
  spec asks to document as the size's ``offset`` (its ``halo`` field is what a consumer
  should crop, here nothing more);
- weights: TorchScript and ONNX, traced from the same eval-mode model and each verified
  against PyTorch;
- test tensors: a tile of ``test_image`` and segunet's own prediction of it (normalised by
  :func:`segunet.data.normalize.normalize_percentile`, run by PyTorch), so a passing
  ``test_model`` shows that the spec's preprocessing reproduces segunet's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shutil
import tempfile
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from segunet.atomic import write_atomic
from segunet.checkpoint import load_checkpoint, load_trained, pixel_size_of
from segunet.data.io import read_array
from segunet.data.normalize import normalize_percentile
from segunet.data.sources import class_names_for
from segunet.errors import SegunetError
from segunet.export.traced import exported_bytes, metadata, verify_export
from segunet.pretrained import shipped
from segunet.train.run_folder import recorded_overrides

MISSING = ("format=bioimageio needs bioimageio.spec and bioimageio.core: "
           "pip install 'segunet[bioimageio]'")
# The largest test input cut from the test image by default, per axis: small packages.
TEST_SIZE = {2: 256, 3: 64}
AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
WEIGHTS = {"torchscript": "weights.torchscript.pt", "onnx": "weights.onnx"}
# DOIs only: a URL would be fetched by the spec's validation, which must work offline.
CITE = {
    "UNet": ("Ronneberger et al. 2015, U-Net", "10.1007/978-3-319-24574-4_28"),
    "UNet3D": ("Cicek et al. 2016, 3D U-Net", "10.1007/978-3-319-46723-8_49"),
    "AttentionUNet": ("Oktay et al. 2018, Attention U-Net", "10.48550/arXiv.1804.03999"),
    "UNetPlusPlus": ("Zhou et al. 2018, UNet++", "10.1007/978-3-030-00889-5_1"),
    "UNet3Plus": ("Huang et al. 2020, UNet 3+", "10.1109/ICASSP40776.2020.9053405"),
    "ResUNet": ("Dhariwal and Nichol 2021, the ResUNet", "10.48550/arXiv.2105.05233"),
}


@dataclasses.dataclass(frozen=True)
class PackageInfo:
    """What a package needs beyond the checkpoint (see
    :class:`segunet.cli.export.ExportConfig`)."""

    test_image: str | None = None
    authors: Sequence[str] = ()
    license: str | None = None
    tags: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The valid spatial sizes ``min + n * step`` of a net (the same on every axis) and the
    ``halo`` it crops from each side of its output (0 when same-padded)."""

    min: int
    step: int
    halo: int

    @classmethod
    def of(cls, model: nn.Module) -> Geometry:
        d = model.spatial_dims
        smallest = model.valid_input_shape((1,) * d)[0]
        step = model.valid_input_shape((smallest + 1,) * d)[0] - smallest
        trims = {s - model.output_shape((s,) * d)[0] for s in (smallest, smallest + step)}
        trim = trims.pop()
        if trims or trim % 2:  # no segunet net does this: a size rule the spec cannot say
            raise SegunetError(
                f"{type(model).__name__}'s output is not its input less a fixed margin per "
                "side, which a bioimage.io package cannot describe: export format=onnx"
            )
        return cls(smallest, step, trim // 2)

    def at_most(self, size: int) -> int:
        """The largest valid size <= ``size``, or the smallest one."""
        return self.min + max(0, (size - self.min) // self.step) * self.step

    def at_least(self, size: int) -> int:
        return self.min + max(0, math.ceil((size - self.min) / self.step)) * self.step


@dataclasses.dataclass
class Checkpoint:
    """What the package is made of: the checkpoint's file and contents, its model and its
    training config."""

    file: Path
    ckpt: dict
    model: nn.Module
    config: dict

    @property
    def data(self) -> dict:
        return self.config.get("data") or {}

    @property
    def percentiles(self) -> list[float] | None:
        p = self.data.get("percentiles", [1.0, 99.8])  # synthetic data: as predict assumes
        return None if p is None else [float(v) for v in p]


def export_package(
    file: Path, target: Path, info: PackageInfo, input_shape: Sequence[int] | None,
    opset: int, verify: bool, atol: float,
) -> None:
    """Write the bioimage.io package of checkpoint ``file`` to ``target`` (a .zip), all or
    nothing: it is staged in a temp folder and copied to a temp name beside ``target``."""
    spec, core = _bioimageio()
    trained = _load(file)
    model = trained.model
    geometry = Geometry.of(model)
    image, image_source = source_image(trained, info.test_image)
    tile = input_tile(image, geometry, input_shape, image_source)
    normalised = normalise(tile, trained.percentiles)
    net = Probabilities(model)
    expected = net.predict(normalised[None])
    weights = traced_weights(net, trained, normalised, geometry, opset, verify, atol)
    with tempfile.TemporaryDirectory(prefix="segunet-bioimageio-") as tmp, _quiet():
        folder = Path(tmp)
        write_files(folder, trained, tile, normalised, expected, geometry, weights, image_source)
        descr = describe(spec, folder, trained, geometry, info, opset)
        package = _spec_call(spec.save_bioimageio_package, descr,
                             output_path=folder / "package.zip")
        if verify:
            check_test(core.test_model(package))
        write_atomic(target, lambda f: _copy(package, f))


# --- the model, its test input and output -------------------------------------------------


class Probabilities(nn.Module):
    """The trained net with a softmax over the classes: what the package's weights compute."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # The whole module in eval mode: torch.onnx.export restores the training flag of the
        # module it is given, recursively, and a deep-supervised net in training mode returns
        # all its heads.
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The probabilities of ``x``; a SegunetError if the model gives several outputs
        (deep-supervision heads), which would leak into a traced graph as extra outputs."""
        with torch.no_grad():
            logits = self.model(torch.from_numpy(x))
        if not isinstance(logits, torch.Tensor):
            raise SegunetError(
                f"{type(self.model).__name__} returns {len(logits)} outputs in eval mode (its "
                "deep-supervision heads); a bioimage.io package of it would describe only one: "
                "export a model whose eval forward returns one tensor"
            )
        return torch.softmax(logits, dim=1).numpy()


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
    """A valid-sized tile from the centre of ``image``, mirror-padded where it is smaller:
    ``input_shape`` rounded up, else the largest valid size within the image and
    :data:`TEST_SIZE`."""
    spatial = image.shape[1:]
    dims = len(spatial)
    if input_shape is not None and len(input_shape) != dims:
        raise SegunetError(f"input_shape={list(input_shape)} needs {dims} sizes for {source}")
    shape = [geometry.at_least(s) for s in input_shape] if input_shape else [
        geometry.at_most(min(n, TEST_SIZE[dims])) for n in spatial
    ]
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
    net: Probabilities, trained: Checkpoint, normalised: np.ndarray, geometry: Geometry,
    opset: int, verify: bool, atol: float,
) -> dict[str, bytes]:
    """TorchScript and ONNX of ``net`` traced on the test input; with ``verify`` each run
    against PyTorch there and on a batch of 2 at the next larger valid size."""
    model = trained.model
    example = torch.from_numpy(normalised[None])
    meta = metadata(model, trained.config) | {
        "output": "probabilities (N, classes, *spatial): the softmax over the classes"}
    bigger = [s + geometry.step for s in normalised.shape[1:]]
    inputs = [example, torch.randn(2, model.in_channels, *bigger, generator=torch.Generator())]
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
    np.save(folder / "test_input.npy", tile[None])
    np.save(folder / "test_output.npy", expected)
    tifffile.imwrite(folder / "sample_input.tif", tile)
    tifffile.imwrite(folder / "sample_output.tif", expected[0])
    iio.imwrite(folder / "cover.png", cover(normalised, expected[0], geometry.halo))
    (folder / "training_config.yaml").write_text(yaml.safe_dump(trained.config, sort_keys=False))
    (folder / "README.md").write_text(readme(trained, geometry, tile.shape[1:], image_source))


def cover(normalised: np.ndarray, probs: np.ndarray, halo: int) -> np.ndarray:
    """Input | prediction side by side, 2:1 as bioimage.io asks (the middle slice of a
    volume): the input's first channel (or RGB) over the output's region, and the
    probability of not-background, both cut to the square at their centre."""
    if normalised.ndim == 4:
        normalised, probs = normalised[:, normalised.shape[1] // 2], probs[:, probs.shape[1] // 2]
    inner = normalised[(slice(None), *(slice(halo, n - halo) for n in normalised.shape[1:]))]
    picture = inner[:3] if inner.shape[0] == 3 else inner[:1].repeat(3, 0)
    side = min(probs.shape[1:])
    square = tuple(slice((n - side) // 2, (n - side) // 2 + side) for n in probs.shape[1:])
    panels = [picture[(slice(None), *square)], (1 - probs[(slice(0, 1), *square)]).repeat(3, 0)]
    both = np.concatenate(panels, axis=2)
    return (np.clip(both, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def class_names(trained: Checkpoint) -> list[str]:
    """The output channels' names as training named the classes, or generic ones."""
    data, classes = trained.data, trained.model.out_channels
    targets = data.get("targets") or {}
    try:
        names = class_names_for(data.get("class_names"), targets.get("label_kind", "instances"),
                                targets.get("num_classes", 2), data.get("target", "foreground"))
    except SegunetError:
        names = []
    return names if len(names) == classes else [f"class{i}" for i in range(classes)]


def overrides(file: Path, ckpt: dict | None = None) -> list[str] | None:
    """The ``segunet train`` overrides of the run ``file`` is a checkpoint of (Hydra's record
    in the run folder, or the record a shipped model carries), or None when unknown."""
    import yaml

    carried = ((ckpt or {}).get("source") or {}).get("overrides")
    if isinstance(carried, list) and carried:
        return [str(o) for o in carried]
    try:
        return recorded_overrides(file)
    except yaml.YAMLError:  # a damaged record: the command is unknown, as without one
        return None


def readme(trained: Checkpoint, geometry: Geometry, tile: Sequence[int], image_source: str) -> str:
    """The package's documentation: training data and command, validation scores, what the
    input and output are and what the package leaves out."""
    sections = [
        [f"# {name_of(trained)}", "", description_of(trained)],
        ["## Training data", "", *_data_lines(trained)],
        ["## Training", "", *_training_lines(trained)],
        ["## Validation", "", *_validation_lines(trained)],
        ["## Input and output", "", *_io_lines(trained, geometry),
         f"- test input: a {'x'.join(map(str, tile))} tile of {image_source}"],
        ["## Not in this package", "",
         "- segunet's object decoding (connected components or watershed, with the tuned "
         "settings above): run `segunet predict` on the checkpoint for instance labels",
         "- segunet normalises a (nearly) constant channel by its min and max; scale_range "
         "does not"],
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _data_lines(trained: Checkpoint) -> list[str]:
    data = trained.data
    shown = {k: v for k, v in data.items() if k not in ("targets", "_target_")}
    scale = pixel_size_of(trained.ckpt)
    return [
        f"- source: `{data.get('_target_')}` with {_inline(shown)}",
        f"- targets: {_inline(data.get('targets') or {})}",
        f"- pixel size: {scale[0]} {scale[1]}" if scale else
        "- pixel size: not recorded (the axes carry no physical scale)",
    ]


def _training_lines(trained: Checkpoint) -> list[str]:
    args, config = overrides(trained.file, trained.ckpt), trained.config
    command = ("segunet train " + " ".join(args)) if args is not None else (
        "not recorded (the checkpoint is not in its run folder); the resolved config is "
        "training_config.yaml")
    return [
        f"- command: `{command}`",
        f"- steps: {trained.ckpt.get('step')}; model: {_call(config.get('model'))}",
        f"- optimiser: {_call(config.get('optim'))}; loss: {_call(config.get('loss'))}",
    ]


def _validation_lines(trained: Checkpoint) -> list[str]:
    from segunet.postprocess.tune import describe as tuned

    ckpt = trained.ckpt
    scores = [f"| {k} | {_score(v)} |" for k, v in (ckpt.get("metrics") or {}).items()]
    best = _score(ckpt.get("best_metric"))
    post = ckpt.get("postprocess")
    return [
        f"Scores on the validation images at step {ckpt.get('step')} (best "
        f"{trained.data.get('metric', 'dice')} during training: {best}):",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(scores or ["| none | |"]),
        "",
        ("- " + tuned(post)) if isinstance(post, dict) and "settings" in post else
        "- post-processing: not tuned",
    ]


def _score(value: Any) -> str:
    """A recorded score in the README: a number to 4 places; anything else (a received
    file's) is "unknown"."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.4f}" if number else "unknown"


def _io_lines(trained: Checkpoint, geometry: Geometry) -> list[str]:
    model, percentiles = trained.model, trained.percentiles
    return [
        f"- input: {model.in_channels} channel(s), float32, spatial sizes {geometry.min} + "
        f"{geometry.step} * n per axis ({', '.join(AXES[model.spatial_dims])})",
        f"- preprocessing: per image and channel (x - p_low) / (p_high - p_low + 1e-6) with the "
        f"percentiles {percentiles} (scale_range)" if percentiles else
        "- preprocessing: none (training used the images as they are)",
        f"- output: probabilities of {', '.join(class_names(trained))} (softmax in the weights)",
        f"- halo: the net uses valid convolutions and crops {geometry.halo} pixels per side "
        "itself: the output is the input less that on each side, centred on it; give images "
        "mirror-padded by it to predict their borders" if geometry.halo else
        "- halo: none (same-padded convolutions: the output is as large as the input)",
    ]


def _inline(node: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in node.items()) or "defaults"


def _call(node: dict | None) -> str:
    """A config group as the call it stands for: ``Adam(lr=0.001, ...)``, unset keys left
    out."""
    node = node or {}
    kwargs = {k: v for k, v in node.items() if not k.startswith("_") and v is not None}
    return f"{str(node.get('_target_', '?')).rsplit('.', 1)[-1]}({_inline(kwargs)})"


def name_of(trained: Checkpoint) -> str:
    data_name = trained.data.get("name") or str(trained.data.get("_target_", "data"))
    text = f"segunet {type(trained.model).__name__} {data_name.rsplit('.', 1)[-1]}"
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text)[:64]


def description_of(trained: Checkpoint) -> str:
    model = trained.model
    return (
        f"{type(model).__name__} ({model.padding} padding, {model.levels} levels, channels "
        f"{list(getattr(model, 'channels', []))}) for {model.spatial_dims}D semantic "
        f"segmentation into {', '.join(class_names(trained))}, trained with segunet; outputs "
        "per-class probabilities."
    )


# --- the description -----------------------------------------------------------------------


def describe(spec: ModuleType, folder: Path, trained: Checkpoint, geometry: Geometry,
             info: PackageInfo, opset: int) -> Any:
    """The ``ModelDescr`` of the files in ``folder``, built (and so validated) by the spec."""
    v = spec.model.v0_5
    model = trained.model
    name = type(model).__name__
    cite_keys = ["UNet", *(["UNet3D"] if model.spatial_dims == 3 else []), name]
    return _spec_call(
        v.ModelDescr,
        name=name_of(trained),
        description=description_of(trained),
        authors=[v.Author(name=a) for a in info.authors],
        cite=[v.CiteEntry(text=CITE[k][0], doi=v.Doi(CITE[k][1]))
              for k in dict.fromkeys(cite_keys) if k in CITE],
        license=info.license,
        tags=list(dict.fromkeys(["unet", f"{model.spatial_dims}d", "pytorch",
                                 "semantic-segmentation", "segunet", *info.tags])),
        documentation=v.FileDescr(source=folder / "README.md"),
        covers=[v.FileDescr(source=folder / "cover.png")],
        attachments=[v.FileDescr(source=folder / "training_config.yaml")],
        inputs=[input_tensor(v, folder, trained, geometry)],
        outputs=[output_tensor(v, folder, trained, geometry)],
        weights=v.WeightsDescr(
            torchscript=v.TorchscriptWeightsDescr(
                source=folder / WEIGHTS["torchscript"],
                pytorch_version=v.Version(torch.__version__.split("+")[0])),
            onnx=v.OnnxWeightsDescr(source=folder / WEIGHTS["onnx"], opset_version=opset,
                                    parent="torchscript"),
        ),
        config=v.Config(bioimageio=v.BioimageioConfig(
            architecture_type=name[:32],
            model_parameter_count=sum(p.numel() for p in model.parameters()))),
    )


def spatial_axes(v: ModuleType, trained: Checkpoint, cls: type, size: Any) -> list[Any]:
    """The space axes (of class ``cls``), each of ``size(axis_id)``, with the checkpoint's
    pixel size."""
    scales, unit = pixel_scale(v, trained)
    return [cls(id=v.AxisId(a), size=size(v.AxisId(a)), scale=s, unit=unit)
            for a, s in zip(AXES[trained.model.spatial_dims], scales)]


def pixel_scale(v: ModuleType, trained: Checkpoint) -> tuple[list[float], str | None]:
    """Per spatial axis the pixel size of the training data, and its unit, where the
    checkpoint records one (:func:`segunet.checkpoint.pixel_size_of`); else 1 and no unit."""
    dims = trained.model.spatial_dims
    record = pixel_size_of(trained.ckpt)
    if record is None:
        return [1.0] * dims, None
    size, unit = record
    where = f"{trained.file}: its pixel size {size} {unit or ''}".rstrip()
    if len(size) != dims or min(size) <= 0:
        raise SegunetError(f"{where} is no positive size per axis of the {dims}D model; "
                           "retrain with a pixel size per spatial axis")
    units = typing.get_args(v.SpaceUnit)
    if unit is not None and unit not in units:
        raise SegunetError(
            f"{where}: the bioimage.io spec knows no unit {unit!r}; give the pixel size in "
            f"one it knows ({', '.join(u for u in units if u.endswith('meter'))[:80]}...)"
        )
    return size, unit


def input_tensor(v: ModuleType, folder: Path, trained: Checkpoint, geometry: Geometry) -> Any:
    model = trained.model
    size = v.ParameterizedSize(min=geometry.min, step=geometry.step)
    preprocessing = [v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32"))]
    if trained.percentiles is not None:
        preprocessing.append(scale_range(v, trained))
    return v.InputTensorDescr(
        id=v.TensorId("input"),
        description=f"{model.spatial_dims}D image, channels first",
        axes=[v.BatchAxis(),
              v.ChannelAxis(channel_names=[f"channel{i}" for i in range(model.in_channels)]),
              *spatial_axes(v, trained, v.SpaceInputAxis, lambda _: size)],
        test_tensor=v.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=v.FileDescr(source=folder / "sample_input.tif"),
        data=v.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=preprocessing,
    )


def scale_range(v: ModuleType, trained: Checkpoint) -> Any:
    """segunet's percentile normalisation, per sample and channel, as the spec's op."""
    low, high = trained.percentiles
    axes = [v.AxisId(a) for a in AXES[trained.model.spatial_dims]]
    try:
        kwargs = v.ScaleRangeKwargs(axes=axes, min_percentile=low, max_percentile=high)
    except ValueError as e:  # pydantic's ValidationError
        raise SegunetError(
            f"{trained.file}: data.percentiles={[low, high]} cannot be written as bioimage.io's "
            f"scale_range ({_first_error(e)}); retrain with e.g. data.percentiles=[1.0,99.8]"
        ) from None
    return v.ScaleRangeDescr(kwargs=kwargs)


def output_tensor(v: ModuleType, folder: Path, trained: Checkpoint, geometry: Geometry) -> Any:
    def size(axis: Any) -> Any:
        # The halo the net crops itself is the size's offset (see the module's docstring).
        return v.SizeReference(tensor_id=v.TensorId("input"), axis_id=axis,
                               offset=-2 * geometry.halo)

    return v.OutputTensorDescr(
        id=v.TensorId("output"),
        description="class probabilities" + (
            f"; valid convolutions crop {geometry.halo} px per side" if geometry.halo else ""),
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=class_names(trained)),
              *spatial_axes(v, trained, v.SpaceOutputAxis, size)],
        test_tensor=v.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=v.FileDescr(source=folder / "sample_output.tif"),
        data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )


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


def _spec_call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(...)`` of bioimageio.spec, its refusal as one line."""
    try:
        return function(*args, **kwargs)
    except ValueError as e:  # pydantic's ValidationError, or the package's own check
        raise SegunetError(
            f"the bioimage.io spec refuses the package: {_first_error(e)}; nothing written"
        ) from None


def _first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"]
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2])


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
