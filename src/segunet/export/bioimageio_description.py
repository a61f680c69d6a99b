"""What a bioimage.io model package (model spec 0.5) says: its ``ModelDescr``, built from
``bioimageio.spec``'s own classes (and so validated by them), and its README. The package's
files are made and tested by :mod:`segunet.export.bioimageio`. What the package says:

- input ``(batch, channel, [z,] y, x)`` float32 of any spatial size, with the physical pixel
  size of the training data where the checkpoint has one. The weights mirror-extend it as
  ``segunet predict`` does (:mod:`segunet.export.anysize`), so a consumer that runs the whole
  image gets segunet's prediction, borders included, whatever its size;
- blocks for consumers that tile: any size from ``min`` on, with a reflect-padded ``halo``
  (an output axis' ``halo``, which consumers pad and crop); blocks that start at multiples
  of the net's pooling period are exact (see :class:`Geometry`);
- preprocessing ``ensure_dtype`` and ``scale_range`` per sample and channel with the training
  percentiles: segunet's per-image normalisation, but for the spec's ``eps`` (1e-6) in the
  denominator and segunet's fallback to min/max for a flat channel;
- output: per-class probabilities as large as the input. The softmax is in the graph, so
  that consumers running no post-processing (ilastik, deepImageJ) still get probabilities;
- weights: TorchScript and ONNX, traced from the same eval-mode model and each verified
  against PyTorch;
- test tensors: a tile of ``test_image`` and segunet's own prediction of it (normalised by
  :func:`segunet.data.normalize.normalize_percentile`, run by PyTorch), so a passing
  ``test_model`` shows that the spec's preprocessing reproduces segunet's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from segunet.checkpoint import pixel_size_of
from segunet.data.normalize import DEFAULT_PERCENTILES
from segunet.data.sources import class_names_of
from segunet.errors import SegunetError
from segunet.train.run_folder import recorded_overrides

AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
WEIGHTS = {"torchscript": "weights.torchscript.pt", "onnx": "weights.onnx"}
STATE_DICT = "weights.state_dict.pt"
# DOIs only: a URL would be fetched by the spec's validation, which must work offline.
CITE = {
    "UNet": ("Ronneberger et al. 2015, U-Net", "10.1007/978-3-319-24574-4_28"),
    "UNet3D": ("Cicek et al. 2016, 3D U-Net", "10.1007/978-3-319-46723-8_49"),
    "AttentionUNet": ("Oktay et al. 2018, Attention U-Net", "10.48550/arXiv.1804.03999"),
    "UNetPlusPlus": ("Zhou et al. 2018, UNet++", "10.1007/978-3-030-00889-5_1"),
    "UNet3Plus": ("Huang et al. 2020, UNet 3+", "10.1109/ICASSP40776.2020.9053405"),
    "ResUNet": ("Dhariwal and Nichol 2021, the ResUNet", "10.48550/arXiv.2105.05233"),
}

#: The datasets segunet's data configs read (``data.name``): their citation, and their
#: licence where it is one a package can carry (an SPDX id; ISBI 2012 is free for
#: non-commercial research, Lucchi++ EPFL's own terms: neither is one).
DATA_CITE = {
    "dsb2018": ("Caicedo et al. 2019, the 2018 Data Science Bowl (training data)",
                "10.1038/s41592-019-0612-7"),
    "isbi2012": ("Arganda-Carreras et al. 2015, the ISBI 2012 challenge (training data)",
                 "10.3389/fnana.2015.00142"),
    "lucchi": ("Lucchi et al. 2012, EM mitochondria (training data)",
               "10.1109/TMI.2011.2171705"),
}
DATA_LICENSE = {"dsb2018": "CC0-1.0"}
#: The modality and objects of those datasets, as the zoo tags them.
DATA_TAGS = {
    "dsb2018": ("fluorescence-light-microscopy", "nuclei"),
    "isbi2012": ("electron-microscopy", "membranes"),
    "lucchi": ("electron-microscopy", "mitochondria"),
}
#: What the target's classes let a consumer make, as the zoo tags it.
TARGET_TAGS = {"boundary": "instance-segmentation", "foreground": "semantic-segmentation"}


@dataclasses.dataclass(frozen=True)
class PackageInfo:
    """What a package needs beyond the checkpoint (see
    :class:`segunet.cli.export.ExportConfig`)."""

    test_image: str | None = None
    authors: Sequence[str] = ()
    license: str | None = None
    tags: Sequence[str] = ()
    maintainers: Sequence[str] = ()  # GitHub user names
    version: str | None = None
    git_repo: str | None = None


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a consumer may cut an image into blocks for the package's weights, which take
    any size (:class:`~segunet.export.anysize.AnySize`): blocks of ``min + n * step``
    pixels per axis with a ``halo`` of context on each side, cropped from their output.

    A valid-padded net is not shift-equivariant below its pooling ``period``: a block equals
    ``segunet predict`` where it starts at a multiple of it, as segunet's own tiles do.
    ``halo``, a multiple of the period, is the context a pixel of any phase needs: the net's
    own margin ``net_halo`` plus ``period - 1``, rounded up. ``step`` is 1, because
    bioimageio.core refuses an image whose size is not ``min + n * step``: aligned blocks
    are the consumer's choice (inner sizes that are multiples of the period). A same-padded
    net gets no halo (segunet blends its tiles instead)."""

    min: int
    step: int
    halo: int
    net_halo: int
    period: int

    @classmethod
    def of(cls, model: nn.Module) -> Geometry:
        d = model.spatial_dims
        smallest = model.valid_input_shape((1,) * d)[0]
        period = model.valid_input_shape((smallest + 1,) * d)[0] - smallest
        trims = {s - model.output_shape((s,) * d)[0] for s in (smallest, smallest + period)}
        trim = trims.pop()
        if trims or trim % 2:  # no segunet net does this: a size rule the spec cannot say
            raise SegunetError(
                f"{type(model).__name__}'s output is not its input less a fixed margin per "
                "side, which a bioimage.io package cannot describe: export format=onnx"
            )
        net_halo = trim // 2
        halo = math.ceil((net_halo + period - 1) / period) * period if net_halo else 0
        return cls(2 * halo + period, 1, halo, net_halo, period)


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
        p = self.data.get("percentiles", list(DEFAULT_PERCENTILES))  # synthetic: as predict
        return None if p is None else [float(v) for v in p]

    @property
    def class_names(self) -> list[str]:
        """The output channels' names, as predict's outputs name them."""
        return class_names_of(self.data, self.model.out_channels)


# --- the README --------------------------------------------------------------------------


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
    if args is not None:
        args = [f"{k}={_shown(v)}" if sep else k
                for k, sep, v in (a.partition("=") for a in args)]
    command = ("segunet train " + " ".join(args)) if args is not None else (
        "not recorded (the checkpoint is not in its run folder); the resolved config is "
        "training_config.yaml")
    return [
        f"- command: `{command}`",
        f"- steps: {trained.ckpt.get('step')}; model: {_call(config.get('model'))}",
        f"- optimiser: {_call(config.get('optim'))}; loss: {_call(config.get('loss'))}",
    ]


def _validation_lines(trained: Checkpoint) -> list[str]:
    from segunet.postprocess.tune import describe_tuned

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
        ("- " + describe_tuned(post)) if isinstance(post, dict) and "settings" in post else
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
        f"- input: {model.in_channels} channel(s), float32, any spatial size "
        f"({', '.join(AXES[model.spatial_dims])}): the weights mirror-extend the image as "
        "`segunet predict` does and return the output at the input's size",
        f"- preprocessing: per image and channel (x - p_low) / (p_high - p_low + 1e-6) with the "
        f"percentiles {percentiles} (scale_range)" if percentiles else
        "- preprocessing: none (training used the images as they are)",
        f"- output: probabilities of {', '.join(trained.class_names)} (softmax in the weights)",
        f"- blocks: at least {geometry.min} pixels per axis, with a halo of {geometry.halo} "
        "(reflect padding) cropped from each output. The net (valid convolutions, a margin of "
        f"{geometry.net_halo} px) is not shift-equivariant below {geometry.period} px: a block "
        f"is exactly `segunet predict` where it starts at a multiple of {geometry.period} px, "
        f"so choose blocks whose size less twice the halo is a multiple of {geometry.period}. "
        "bioimageio.core moves the last block of an axis back to the image's end, which keeps "
        f"that only where the image's size is a multiple of {geometry.period}"
        if geometry.halo else
        "- blocks: no halo (same-padded convolutions; `segunet predict` blends overlapping "
        "tiles, which blocks cropped edge to edge do not reproduce)",
    ]


def tags_of(trained: Checkpoint, info: PackageInfo) -> list[str]:
    """The zoo's tags: the net and its dimensions, what its target's classes are for, the
    modality and objects of a dataset segunet knows, then ``tags=``."""
    data = trained.data
    derived = ["unet", f"{trained.model.spatial_dims}d", "pytorch", "segunet",
               "semantic-segmentation",
               TARGET_TAGS.get(str(data.get("target", "foreground")), "semantic-segmentation"),
               *DATA_TAGS.get(str(data.get("name", "")), ())]
    return list(dict.fromkeys([*derived, *info.tags]))


def model_node(trained: Checkpoint) -> dict[str, Any]:
    """The checkpoint's model config, plain YAML values: the architecture of the
    ``pytorch_state_dict`` weights."""
    return {k: v for k, v in trained.config["model"].items()}


def license_of(trained: Checkpoint, info: PackageInfo) -> str:
    """``license=``, else the training data's where segunet knows it (:data:`DATA_LICENSE`);
    else a one-line error asking for it (a package without one is no package to share)."""
    data = str(trained.data.get("name", ""))
    found = info.license or DATA_LICENSE.get(data)
    if not found:
        raise SegunetError(
            f"{trained.file}: give license=<the weights' SPDX id> (e.g. license=CC-BY-4.0): "
            f"the licence of its training data ({data or 'unnamed'}) is not one segunet knows"
        )
    return found


def _inline(node: dict) -> str:
    return ", ".join(f"{k}={_shown(v)}" for k, v in node.items()) or "defaults"


def _shown(value: Any) -> Any:
    """A config value as the README shows it: a path of the machine that trained as its
    last part (``<trainval>``), which says what it was without where."""
    text = str(value).strip("'\"")
    if isinstance(value, str) and (os.path.isabs(text) or text.startswith("~")):
        return f"<{Path(text).name or text}>"
    return value


def without_paths(node: Any) -> Any:
    """A config with every path of the machine that trained shown as :func:`_shown` shows
    it: what the package's ``training_config.yaml`` holds."""
    if isinstance(node, dict):
        return {k: without_paths(v) for k, v in node.items()}
    if isinstance(node, list):
        return [without_paths(v) for v in node]
    return _shown(node)


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
        f"segmentation into {', '.join(trained.class_names)}, trained with segunet; outputs "
        "per-class probabilities."
    )


# --- the description -----------------------------------------------------------------------


def model_descr(spec: ModuleType, folder: Path, trained: Checkpoint, geometry: Geometry,
             info: PackageInfo, opset: int) -> Any:
    """The ``ModelDescr`` of the files in ``folder``, built (and so validated) by the spec."""
    v = spec.model.v0_5
    model = trained.model
    name = type(model).__name__
    cite_keys = ["UNet", *(["UNet3D"] if model.spatial_dims == 3 else []), name]
    cites = [CITE[k] for k in dict.fromkeys(cite_keys) if k in CITE]
    cites += [DATA_CITE[trained.data["name"]]] if trained.data.get("name") in DATA_CITE else []
    return spec_call(
        v.ModelDescr,
        name=name_of(trained),
        description=description_of(trained),
        authors=[v.Author(name=a) for a in info.authors],
        maintainers=[spec_call(v.Maintainer, github_user=u) for u in info.maintainers],
        cite=[v.CiteEntry(text=text, doi=v.Doi(doi)) for text, doi in cites],
        license=license_of(trained, info),
        tags=tags_of(trained, info),
        version=info.version,
        git_repo=info.git_repo,
        documentation=v.FileDescr(source=folder / "README.md"),
        covers=[v.FileDescr(source=folder / "cover.png")],
        # segunet.json: what segunet.load() of the package reads besides the weights.
        attachments=[v.FileDescr(source=folder / "training_config.yaml"),
                     v.FileDescr(source=folder / "segunet.json")],
        inputs=[input_tensor(v, folder, trained, geometry)],
        outputs=[output_tensor(v, folder, trained, geometry)],
        weights=v.WeightsDescr(
            pytorch_state_dict=v.PytorchStateDictWeightsDescr(
                source=folder / STATE_DICT,
                architecture=v.ArchitectureFromLibraryDescr(
                    callable="Probabilities", import_from="segunet.export.bioimageio",
                    kwargs={"model": model_node(trained)}),
                pytorch_version=v.Version(torch.__version__.split("+")[0])),
            torchscript=v.TorchscriptWeightsDescr(
                source=folder / WEIGHTS["torchscript"],
                pytorch_version=v.Version(torch.__version__.split("+")[0]),
                parent="pytorch_state_dict"),
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


def check_expressible(trained: Checkpoint) -> None:
    """One line, before any work, for a model whose input preparation the spec's
    preprocessing cannot say."""
    if trained.data.get("polarity", "as_is") != "as_is":
        raise SegunetError(
            f"{trained.file}: trained with data.polarity={trained.data['polarity']}, which "
            "bioimage.io's preprocessing cannot express (an image is inverted by its "
            "background): export format=torchscript or onnx, or train with data.polarity=as_is"
        )


def input_tensor(v: ModuleType, folder: Path, trained: Checkpoint, geometry: Geometry) -> Any:
    model = trained.model
    size = v.ParameterizedSize(min=geometry.min, step=geometry.step)
    check_expressible(trained)
    preprocessing = [v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32"))]
    if trained.percentiles is not None:
        preprocessing.append(scale_range(v, trained))
    return v.InputTensorDescr(
        id=v.TensorId("input"),
        # The border segunet mirrors: a consumer pads blocks (and the whole image by the
        # halo) as np.pad(mode="reflect") does, which is segunet's own extrapolation.
        pad=v.ReflectPadding(mode="reflect"),  # set explicitly, or the dump says `pad: {}`,
        # which the spec reads back as ConstantPadding (bioimageio.spec 0.5.12)
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
            f"scale_range ({first_error(e)}); retrain with e.g. data.percentiles=[1.0,99.8]"
        ) from None
    return v.ScaleRangeDescr(kwargs=kwargs)


def output_tensor(v: ModuleType, folder: Path, trained: Checkpoint, geometry: Geometry) -> Any:
    """Per-class probabilities as large as the input; for a valid-padded net, with the
    block halo a consumer crops (see :class:`Geometry`)."""

    def size(axis: Any) -> Any:
        return v.SizeReference(tensor_id=v.TensorId("input"), axis_id=axis)

    if geometry.halo:
        def axis_of(**kwargs: Any) -> Any:
            return v.SpaceOutputAxisWithHalo(halo=geometry.halo, **kwargs)
    else:
        axis_of = v.SpaceOutputAxis
    return v.OutputTensorDescr(
        id=v.TensorId("output"),
        description="class probabilities, as large as the input",
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=trained.class_names),
              *spatial_axes(v, trained, axis_of, size)],
        test_tensor=v.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=v.FileDescr(source=folder / "sample_output.tif"),
        data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )


# --- the spec's refusals ---------------------------------------------------------------


def spec_call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(...)`` of bioimageio.spec, its refusal as one line."""
    try:
        return function(*args, **kwargs)
    except Exception as e:
        # The spec asks GitHub whether each maintainer exists and fails with a traceback
        # where there is no network (a cluster node).
        if type(e).__module__.startswith("httpx"):
            raise SegunetError(
                "the bioimage.io spec checks maintainers= on GitHub and could not reach it "
                f"({type(e).__name__}): export where there is network, or without "
                "maintainers=; nothing written"
            ) from None
        if not isinstance(e, ValueError):
            raise
        # pydantic's ValidationError, or the package's own check
        raise SegunetError(
            f"the bioimage.io spec refuses the package: {first_error(e)}; nothing written"
        ) from None


def first_error(e: ValueError) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"]
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return " ".join(lines[:2])
