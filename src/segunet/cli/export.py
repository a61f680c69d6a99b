"""``segunet export checkpoint=... | model=nuclei [format=...] [output=...]``: its arguments,
usage and run; the export itself is :func:`segunet.export.run.export_model`."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence

from segunet.config.args import check_range, option, parse, run_command, usage
from segunet.errors import SegunetError
from segunet.export.bioimageio_description import PackageInfo
from segunet.export.run import MAX_EXAMPLE, MIN_OPSET, Format, export_model, max_opset
from segunet.pretrained import checkpoint_or_model

USAGE = """usage: segunet export checkpoint=<file or run folder> | model=nuclei
                      [format=onnx|torchscript|bioimageio] [output=<file or folder>]
                      [key=value ...]

Exports the trained model (rebuilt from the config stored in the checkpoint) with dynamic
batch and spatial axes, then checks the exported file against PyTorch (max abs diff
< atol). format=bioimageio writes a bioimage.io model package (a .zip: TorchScript and ONNX
weights, test tensors, cover, README) built and validated by bioimageio.spec and, with
verify=true, tested by bioimageio.core (pip install 'segunet[bioimageio]'). An output that is
an existing folder, or ends in /, gets the default file name inside it. An existing file is
kept unless overwrite=true, as in segunet predict.
"""


@dataclasses.dataclass
class ExportConfig:
    """The arguments of ``segunet export`` (see :func:`export_model`)."""

    checkpoint: str | None = option(
        None, "a checkpoint file, or a run folder (its best.pt where it has one, as predict); "
        "or give model=")
    model: str | None = option(
        None, "a model that ships with segunet instead of a checkpoint: nuclei")
    format: Format = option(
        "onnx", "onnx needs onnx (and onnxruntime to verify); bioimageio needs "
        "segunet[bioimageio]")
    output: str | None = option(
        None, "the file, or a folder for the default name; null: beside the checkpoint, "
        "<name>.onnx, <name>.torchscript.pt or <name>.bioimageio.zip (best.onnx for "
        "a run folder's checkpoints/best.pt; required with model=); a bioimageio package is a "
        ".zip file")
    overwrite: bool = option(False, "replace an existing output file")
    input_shape: list[int] | None = option(
        None, "spatial size of the example traced and verified, e.g. 64,64; rounded up to a "
        "valid size; null: the smallest valid size of at least 64 per axis (bioimageio: the "
        "size of the test input cut from test_image, at least the package's smallest block; "
        "null: as much of the image as fits 256 per axis, 64 in 3D)")
    opset: int = option(17, "the ONNX opset")
    verify: bool = option(
        True, "run the export against PyTorch before it is written (bioimageio: and test the "
        "package with bioimageio.core)")
    atol: float = option(1e-4, "the largest absolute difference verification accepts")
    test_image: str | None = option(
        None, "bioimageio: an image like the training data, for the package's test input "
        "and cover; null: the first validation image of the training data (rebuilt from "
        "the checkpoint's config, so that data must be where training found it)")
    authors: list[str] = option([], "bioimageio: the authors' names")
    maintainers: list[str] = option(
        [], "bioimageio: the GitHub user names of who maintains the package (the zoo asks "
        "for one)")
    license: str | None = option(
        None, "bioimageio: an SPDX licence id of the weights, e.g. CC-BY-4.0 or MIT")
    tags: list[str] = option(
        [], "bioimageio: tags beyond the derived ones, e.g. fluorescence-light-microscopy,nuclei")
    version: str | None = option(
        None, "bioimageio: the package's version, e.g. 1.0.0 (null: none)")
    git_repo: str | None = option(
        None, "bioimageio: the URL of the Git repository the model is developed in")

    def __post_init__(self) -> None:
        shape = self.input_shape
        check_range("input_shape", shape, not shape or min(shape) >= 1,
                    "positive sizes, e.g. 64,64")
        # The example is only traced and checked (the axes stay dynamic): no need for more.
        check_range("input_shape", shape, not shape or math.prod(shape) <= MAX_EXAMPLE,
                    f"at most {MAX_EXAMPLE} pixels in all, e.g. 2048,2048 or 160,160,160 "
                    "(the exported model takes any valid size)")
        check_range("atol", self.atol, math.isfinite(self.atol) and self.atol > 0,
                    "a positive number, e.g. 1e-4")
        if self.format != "torchscript":
            top = max_opset()
            check_range("opset", self.opset, MIN_OPSET <= self.opset <= top,
                        f"an ONNX opset from {MIN_OPSET} (dynamic slicing) to {top} (this torch's "
                        "newest)")
        given = [k for k in ("test_image", "authors", "maintainers", "license", "tags",
                             "version", "git_repo")
                 if getattr(self, k)]
        if given and self.format != "bioimageio":
            raise SegunetError(f"{given[0]}= is for format=bioimageio, not format={self.format}")


def run(argv: Sequence[str]) -> int:
    """``segunet export key=value ...``; returns the exit status (2 on a bad argument)."""
    argv = list(argv)

    def body() -> None:
        args = parse(ExportConfig, argv, "export")
        package = PackageInfo(args.test_image, args.authors, args.license, args.tags,
                              args.maintainers, args.version, args.git_repo)
        path = export_model(
            checkpoint_or_model(args.checkpoint, args.model), format=args.format,
            output=args.output or None,
            input_shape=args.input_shape, opset=args.opset, verify=args.verify,
            atol=args.atol, overwrite=args.overwrite, package=package,
        )
        print(f"segunet: exported {args.format} model to {path}", file=sys.stderr)

    return run_command(body, usage(ExportConfig, USAGE), argv)
