"""``segunet export format=bioimageio``: packages that bioimage.io's own tools load, validate
and test, that predict what segunet predicts, and one-line refusals of what they cannot say."""

from __future__ import annotations

import dataclasses
import sys
import zipfile

import bioimageio.core
import bioimageio.spec
import numpy as np
import pytest
import tifffile
import torch
from bioimageio.spec.model import v0_5
from helpers import TINY, run_in_process, save_tiny_checkpoint

from segunet.checkpoint import load_checkpoint, load_model, save_atomic
from segunet.cli.export import run as main
from segunet.data.normalize import normalize_percentile
from segunet.data.synthetic import synthetic_cells
from segunet.errors import SegunetError
from segunet.export.bioimageio import MISSING, Probabilities
from segunet.infer.predict import predict_tiled


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """A quickstart run (a 3-level 4-8-16 net) trained for a few steps, exported by the
    command with its defaults: beside best.pt (what a run folder means, as in predict), tested
    on its validation image."""
    folder = tmp_path_factory.mktemp("quickstart")
    run = folder / "run"
    done = run_in_process("train", *TINY, "trainer.max_steps=4", "trainer.val_every=4",
                          "postprocess.enabled=false", f"hydra.run.dir={run}", cwd=folder)
    assert done.returncode == 0, done.stderr
    done = run_in_process("export", f"checkpoint={run}", "format=bioimageio",
                          "authors=Ada Lovelace", "license=MIT", cwd=folder)
    package = run / "checkpoints" / "best.bioimageio.zip"
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"segunet: exported bioimageio model to {package}\n"
    return run, package


def test_quickstart_package_passes_bioimageio_core(quickstart):
    run, package = quickstart
    summary = bioimageio.core.test_model(package)
    assert summary.status == "passed", summary.format()
    descr = bioimageio.spec.load_description(package)
    assert isinstance(descr, v0_5.ModelDescr) and descr.format_version.startswith("0.5")
    assert descr.weights.torchscript is not None and descr.weights.onnx is not None
    # Weights for consumers that run PyTorch natively, tested by test_model above too.
    state = descr.weights.pytorch_state_dict
    assert state.architecture.callable == "Probabilities"
    assert state.architecture.import_from == "segunet.export.bioimageio"
    names = set(zipfile.ZipFile(package).namelist())
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy",
            "weights.onnx", "weights.torchscript.pt", "weights.state_dict.pt"} <= names


def test_the_state_dict_weights_rebuild_the_net_from_segunet_classes_only(quickstart):
    """As a consumer does: the architecture's kwargs build Probabilities, the state dict
    loads into it strictly, and it computes the softmax of the checkpoint's net. A kwargs
    that names anything but a segunet model is refused in one line."""
    import io

    run, package = quickstart
    descr = bioimageio.spec.load_description(package)
    state = descr.weights.pytorch_state_dict
    net = Probabilities(**state.architecture.kwargs)
    stored = torch.load(io.BytesIO(zipfile.ZipFile(package).read("weights.state_dict.pt")),
                        weights_only=True)
    net.load_state_dict(stored, strict=True)
    net.eval()
    model, _ = load_model(run / "checkpoints" / "best.pt")
    x = np.random.default_rng(0).random((1, 61, 70), dtype=np.float32)
    np.testing.assert_allclose(net.predict(x[None])[0], predict_tiled(model, x), atol=1e-5)
    with pytest.raises(SegunetError, match="the package's architecture"):
        Probabilities({"_target_": "os.system", "command": "echo no"})


def test_axes_take_any_size_and_say_the_block_halo(quickstart):
    """Inputs of any size from the smallest block on (step 1), mirrored; outputs as large as
    the input with a halo for blocks: the net's margin plus one pooling period less a
    pixel, rounded up to whole periods (3 levels: margin 20, period 4, halo 24)."""
    run, package = quickstart
    model, _ = load_model(run / "checkpoints" / "best.pt")
    smallest = model.valid_input_shape((1, 1))[0]
    margin = (smallest - model.output_shape((smallest,) * 2)[0]) // 2
    period = model.valid_input_shape((smallest + 1,) * 2)[0] - smallest
    assert (margin, period) == (20, 4)
    descr = bioimageio.spec.load_description(package)
    inputs, outputs = descr.inputs[0], descr.outputs[0]
    assert [a.id for a in inputs.axes] == ["batch", "channel", "y", "x"]
    assert inputs.pad.mode == "reflect"
    for axis in inputs.axes[2:]:
        assert (axis.size.min, axis.size.step) == (2 * 24 + 4, 1)
    for axis in outputs.axes[2:]:
        assert axis.size.axis_id == axis.id and axis.size.offset == 0 and axis.halo == 24
    assert outputs.axes[1].channel_names == ["background", "foreground"]
    scale_range = inputs.preprocessing[1]
    assert scale_range.id == "scale_range"
    assert (scale_range.kwargs.min_percentile, scale_range.kwargs.max_percentile) == (1.0, 99.8)
    assert scale_range.kwargs.axes == ["y", "x"]  # per sample and channel, as segunet's


def camera_image(shape, seed=7) -> np.ndarray:
    """``(1, *shape)`` uint16 cells, as a camera gives them."""
    image, _ = synthetic_cells(shape, seed=seed)
    return (image * 3000 + 200).astype(np.uint16)[None]


def consumer_predicts(package, raw, weight_format, **blocks) -> np.ndarray:
    descr = bioimageio.spec.load_description(package)
    pipeline = bioimageio.core.create_prediction_pipeline(descr, weight_format=weight_format)
    sample = bioimageio.core.predict(model=pipeline, inputs={"input": raw[None]}, **blocks)
    return sample.members["output"].data.values[0]


@pytest.mark.parametrize("weight_format", ["torchscript", "onnx", "pytorch_state_dict"])
def test_blocks_of_the_package_are_segunet_predict(quickstart, weight_format):
    """bioimageio.core in blocks, each through the package's own preprocessing and weights,
    on an image of another intensity scale whose size is a multiple of the pooling period
    (4) but of no valid net size, against segunet's tiled prediction: equal, borders and
    seams included."""
    run, package = quickstart
    raw = camera_image((108, 96))
    got = consumer_predicts(package, raw, weight_format,
                            input_block_shape={"input": {"y": 48 + 32, "x": 48 + 28}})
    model, _ = load_model(run / "checkpoints" / "best.pt")
    expected = predict_tiled(model, normalize_percentile(raw, 1.0, 99.8))
    assert got.shape == expected.shape == (2, 108, 96)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_whole_image_of_any_size_is_segunet_predict_of_what_the_consumer_normalised(
    quickstart,
):
    """An image of a size off every grid, predicted whole: accepted, as large as the input,
    and segunet's prediction of it as bioimageio.core normalises it, which pads the halo (24)
    before it takes the percentiles (here by hand: np.pad and np.percentile)."""
    run, package = quickstart
    raw = camera_image((101, 87), seed=3)
    got = consumer_predicts(package, raw, "torchscript")
    padded = np.pad(raw[0].astype(np.float64), 24, mode="reflect")
    low, high = np.percentile(padded, [1.0, 99.8])
    normalised = ((raw - low) / (high - low + 1e-6)).astype(np.float32)
    model, _ = load_model(run / "checkpoints" / "best.pt")
    assert got.shape == (2, 101, 87)
    np.testing.assert_allclose(got, predict_tiled(model, normalised), atol=1e-4)


def test_readme_has_the_training_command_and_the_validation_scores(quickstart):
    run, package = quickstart
    readme = zipfile.ZipFile(package).read("README.md").decode()
    metrics = load_checkpoint(run / "checkpoints" / "best.pt")["metrics"]
    assert "segunet train experiment=quickstart model.channels=[4,8,16]" in readme
    assert "## Validation" in readme and f"| dice | {metrics['dice']:.4f} |" in readme
    assert "synthetic" in readme and "a halo of 24" in readme


def member(package, name: str) -> np.ndarray:
    """The .npy file ``name`` of a package."""
    with zipfile.ZipFile(package) as z, z.open(name) as f:
        return np.load(f)


def save_with(path, **entries) -> None:
    """The checkpoint at ``path`` with ``entries`` added, as training would store them."""
    ckpt = load_checkpoint(path)
    save_atomic(ckpt | entries, path)


@pytest.fixture
def tiny(tmp_path):
    """A tiny valid-padded checkpoint and a grey test image for it."""
    ckpt = save_tiny_checkpoint(tmp_path, "unet_valid")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (70, 60), np.uint8))
    return ckpt, [f"checkpoint={ckpt}", "format=bioimageio", f"test_image={image}", "license=MIT"]


def test_pixel_size_becomes_the_scale_and_unit_of_the_axes(tiny, capsys):
    ckpt, args = tiny
    save_with(ckpt, pixel_size={"size": [0.5, 0.25], "unit": "micrometer"})
    assert main([*args, "verify=false"]) == 0, capsys.readouterr().err
    descr = bioimageio.spec.load_description(ckpt.with_name("last.bioimageio.zip"))
    for tensor in (descr.inputs[0], descr.outputs[0]):
        axes = {a.id: a for a in tensor.axes}
        assert (axes["y"].scale, axes["x"].scale) == (0.5, 0.25)
        assert axes["y"].unit == axes["x"].unit == "micrometer"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"pixel_size": {"size": [0.5, 0.5], "unit": "furlong"}},
         "the bioimage.io spec knows no unit 'furlong'; give the pixel size in one it knows"),
        ({"pixel_size": {"size": [0.5], "unit": "micrometer"}},
         "is no positive size per axis of the 2D model"),
        ("percentiles", "data.percentiles=[0.0, 1.0] cannot be written as bioimage.io's "
         "scale_range"),
    ],
)
def test_what_the_spec_cannot_say_is_refused_in_one_line(tiny, capsys, entries, message):
    ckpt, args = tiny
    if entries == "percentiles":
        config = load_checkpoint(ckpt)["config"]
        entries = {"config": config | {"data": config["data"] | {"percentiles": [0.0, 1.0]}}}
    save_with(ckpt, **entries)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("segunet: error: ") and message in err
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"]


def test_several_outputs_in_eval_mode_are_refused():
    """Deep-supervision heads that a model still returned in eval mode would be outputs the
    package does not describe (segunet's own models return one tensor in eval mode)."""
    from segunet.models import UNet

    class Heads(UNet):
        def forward(self, x):
            y = super().forward(x)
            return [y, y]

    net = Heads(in_channels=1, out_channels=2, channels=(4, 8), padding="valid")
    with pytest.raises(SegunetError, match="Heads returns 2 outputs in eval mode"):
        Probabilities(net).predict(np.zeros((1, 1, 8, 8), np.float32))


def test_deep_supervision_exports_its_eval_head(tmp_path, capsys):
    """UNet++ trained with deep supervision: one output, the eval head, and bioimageio.core's
    test passes (the export runs it)."""
    cfg = {"_target_": "segunet.models.UNetPlusPlus", "in_channels": 1, "out_channels": 2,
           "spatial_dims": 2, "channels": [4, 8, 16], "norm": None, "deep_supervision": True}
    from hydra.utils import instantiate

    model = instantiate(cfg)
    save_atomic({"model": model.state_dict(), "config": {"model": cfg, "data": {}}},
                tmp_path / "last.pt")
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.random.default_rng(1).normal(size=(48, 48)).astype(np.float32))
    assert main([f"checkpoint={tmp_path / 'last.pt'}", "format=bioimageio",
                 f"test_image={image}", "license=MIT"]) == 0, capsys.readouterr().err
    package = tmp_path / "last.bioimageio.zip"
    descr = bioimageio.spec.load_description(package)
    assert len(descr.outputs) == 1
    test_output = member(package, "test_output.npy")
    x = normalize_percentile(tifffile.imread(image)[None], 1.0, 99.8)[None]
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(test_output, expected, atol=1e-5)


def test_3d_same_padded_package_passes_bioimageio_core(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path, "unet_same", spatial_dims=3)
    image = tmp_path / "volume.tif"
    volume = np.random.default_rng(2).integers(0, 4000, (20, 40, 36)).astype(np.uint16)
    tifffile.imwrite(image, volume)
    assert main([f"checkpoint={ckpt}", "format=bioimageio", f"test_image={image}",
                 "license=MIT"]) == 0, capsys.readouterr().err
    package = ckpt.with_name("last.bioimageio.zip")
    assert bioimageio.core.test_model(package).status == "passed"
    descr = bioimageio.spec.load_description(package)
    assert [a.id for a in descr.inputs[0].axes] == ["batch", "channel", "z", "y", "x"]
    assert all(a.size.offset == 0 for a in descr.outputs[0].axes[2:])
    assert member(package, "test_input.npy").shape == (1, 1, 20, 40, 36)


def test_output_folder_zip_name_and_existing_files(tiny, tmp_path, capsys):
    """output= as for the other formats: a folder (existing, or ending in /) gets the default
    name, an existing file needs overwrite=true; the file must be a .zip."""
    ckpt, args = tiny
    args = [*args, "verify=false"]
    folder = tmp_path / "exports"
    folder.mkdir()
    assert main([*args, f"output={folder}"]) == 0
    written = folder / "last.bioimageio.zip"
    assert written.is_file() and zipfile.is_zipfile(written)
    capsys.readouterr()
    assert main([*args, f"output={folder}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"output {written} exists" in err and "overwrite=true" in err
    assert main([*args, f"output={tmp_path / 'model.bioimageio'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a bioimage.io package is a .zip file" in err
    assert main([*args, f"output={tmp_path / 'named.zip'}"]) == 0
    assert (tmp_path / "named.zip").is_file()


def test_failed_verification_writes_nothing(tiny, capsys):
    ckpt, args = tiny
    assert main([*args, "atol=1e-30"]) == 2  # ONNX Runtime's convolutions differ by more
    assert "differs from PyTorch" in capsys.readouterr().err
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"]


def test_a_package_bioimageio_core_runs_unlike_segunet_is_not_written(tiny, capsys,
                                                                         monkeypatch):
    """A halo one period short of what a pixel of every phase needs: bioimageio.core's own
    test passes (its expected output came from the same short-sighted package), but its
    prediction differs from segunet's near the borders, and export's check refuses it."""
    from segunet.export import bioimageio as package

    real = package.Geometry.of

    def short(model):
        g = real(model)
        return dataclasses.replace(g, halo=g.halo - g.period, min=g.min - 2 * g.period)

    monkeypatch.setattr(package.Geometry, "of", short)
    ckpt, args = tiny
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bioimageio.core's prediction differs from segunet's" in err
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"]


def test_bad_arguments_are_one_line(tiny, capsys, monkeypatch):
    ckpt, args = tiny
    assert main([f"checkpoint={ckpt}", "format=onnx", "license=MIT"]) == 2
    assert "license= is for format=bioimageio, not format=onnx" in capsys.readouterr().err
    assert main([f"checkpoint={ckpt}", "format=bioimageio"]) == 2  # no data to rebuild
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no test image" in err and "pass test_image=" in err
    unlicensed = [a for a in args if not a.startswith("license=")]
    assert main([*unlicensed, "license=Not-A-Licence", "verify=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the bioimage.io spec refuses the package: license" in err
    # Its training data is synthetic, whose licence segunet does not know: one line, nothing
    # written.
    assert main([*unlicensed, "verify=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give license=<the weights' SPDX id>" in err
    assert not list(ckpt.parent.glob("*.zip"))
    monkeypatch.setitem(sys.modules, "bioimageio.core", None)  # as if not installed
    assert main(args) == 2
    assert capsys.readouterr().err == f"segunet: error: {MISSING}\n"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.pt"]


def test_maintainers_without_network_are_one_line(tiny, capsys, monkeypatch):
    """The spec asks GitHub whether a maintainer exists; offline (a cluster node) that was a
    traceback of httpx."""
    import httpx

    def offline(*args, **kwargs):
        raise httpx.ConnectError("Name or service not known")

    monkeypatch.setattr(httpx, "get", offline)
    ckpt, args = tiny
    assert main([*args, "maintainers=segunet-test-user", "verify=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checks maintainers= on GitHub and could not reach it " \
        "(ConnectError)" in err
    assert not list(ckpt.parent.glob("*.zip"))


def test_segunet_load_of_the_package_segments_as_its_checkpoint(quickstart, tmp_path):
    """segunet.load of a package segunet exported: the same objects and probabilities as
    the checkpoint it came from, its tuned decoding and training config included. A zip that
    is not such a package is one line."""
    import segunet

    run, package = quickstart
    image = camera_image((90, 77), seed=5)[0]
    from_package, from_run = segunet.load(package, "cpu"), segunet.load(run, "cpu")
    assert from_package.class_names == from_run.class_names
    np.testing.assert_array_equal(from_package.segment(image), from_run.segment(image))
    np.testing.assert_array_equal(from_package.predict(image), from_run.predict(image))
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("rdf.yaml", "type: model\n")
    with pytest.raises(SegunetError, match="is no bioimage.io package written by segunet export"):
        segunet.load(other, "cpu")
    with pytest.raises(SegunetError, match="missing.zip does not exist: give a .zip"):
        segunet.load(tmp_path / "missing.zip", "cpu")
    (tmp_path / "broken.zip").write_bytes(b"PK no zip")
    with pytest.raises(SegunetError, match="is no readable bioimage.io package"):
        segunet.load(tmp_path / "broken.zip", "cpu")


def test_the_package_carries_the_tuned_decoding_and_sizes(tiny, capsys):
    import segunet

    ckpt, args = tiny
    post = {"settings": {"threshold": 0.7, "min_size": 5, "grow": 1, "seed_threshold": 0.5},
            "metric": "ap", "target": "foreground", "score": 0.5, "default_score": 0.4}
    save_with(ckpt, postprocess=post, pixel_size={"size": [0.5, 0.5], "unit": "micrometer"},
              object_size={"diameter": 12.0, "range": [9.0, 15.0]})
    assert main([*args, "verify=false"]) == 0, capsys.readouterr().err
    model = segunet.load(ckpt.with_name("last.bioimageio.zip"), "cpu")
    assert model.trained.postprocess == post
    assert model.trained.pixel_size == {"size": [0.5, 0.5], "unit": "micrometer"}
    assert model.trained.object_size == {"diameter": 12.0, "range": [9.0, 15.0]}


def test_git_repo_is_the_packages_and_a_bad_one_is_one_line(tiny, capsys):
    ckpt, args = tiny
    url = "https://github.com/example/segunet-models"
    assert main([*args, "verify=false", f"git_repo={url}"]) == 0, capsys.readouterr().err
    descr = bioimageio.spec.load_description(ckpt.with_name("last.bioimageio.zip"))
    assert str(descr.git_repo) == url
    capsys.readouterr()
    assert main([*args, "verify=false", "git_repo=not-a-url", "overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "git_repo: Input should be a valid URL" in err
