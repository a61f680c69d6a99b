"""``segunet predict`` end to end on a tiny checkpoint: outputs, formats, lazy reading, errors."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import zarr
from helpers import error_line, save_tiny_checkpoint, wait_for
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from segunet.cli.predict import run as main
from segunet.data.io import read_pixel_size
from segunet.data.normalize import image_channels_first, prepare_image
from segunet.infer.inputs import NormalizedImage, image_for_model
from segunet.infer.outputs import OUTPUTS

SHAPE = (50, 60)



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    save_tiny_checkpoint(folder, "unet_valid")
    return folder


def picture(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def check_outputs(folder, stem, suffix=".tif"):
    read = tifffile.imread if suffix == ".tif" else lambda p: zarr.open_array(str(p))[...]
    probs = read(folder / f"{stem}_probabilities{suffix}")
    labels = read(folder / f"{stem}_labels{suffix}")
    instances = read(folder / f"{stem}_instances{suffix}")
    assert probs.shape == (2, *SHAPE) and probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1, atol=2e-3)
    assert labels.shape == SHAPE and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, probs.argmax(0))
    assert instances.shape == SHAPE and instances.dtype == np.uint16
    np.testing.assert_array_equal(instances > 0, probs[1] > 0.5)
    return probs


def test_tiff_and_png_end_to_end(run_dir, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "a.tif", picture(0))  # uncompressed: memory-mapped
    iio.imwrite(inputs / "b.png", picture(1))
    (inputs / "notes.txt").write_text("not an image")  # skipped by the folder listing
    out = tmp_path / "out"
    assert main([f"checkpoint={run_dir}", f"input={inputs}", f"output={out}"]) == 0, (
        capsys.readouterr().err
    )
    check_outputs(out, "a")
    check_outputs(out, "b")
    assert "wrote 6 files" in capsys.readouterr().err


def test_zarr_format_streams_and_matches_tif(run_dir, tmp_path):
    image = picture(2)
    tifffile.imwrite(tmp_path / "c.tif", image, compression="zlib", tile=(32, 32))  # via zarr
    args = [f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", f"input={tmp_path / '*.tif'}"]
    assert main([*args, f"output={tmp_path / 'z'}", "format=zarr"]) == 0
    assert main([*args, f"output={tmp_path / 't'}"]) == 0
    from_zarr = check_outputs(tmp_path / "z", "c", ".zarr")
    np.testing.assert_array_equal(from_zarr, tifffile.imread(tmp_path / "t/c_probabilities.tif"))
    # Labels only, zarr: the streamed probabilities are a temporary store, removed after.
    assert main([*args, f"output={tmp_path / 'l'}", "format=zarr", "outputs=labels"]) == 0
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == ["c_labels.zarr"]
    labels = zarr.open_array(str(tmp_path / "l" / "c_labels.zarr"))  # written block by block
    assert labels.chunks == SHAPE and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[...], from_zarr.argmax(0))


def _failing_backend(graph_module, example_inputs):
    raise RuntimeError("no compiler here")


@pytest.mark.parametrize("backend", ["eager", "failing"])
def test_compile_option_predicts_what_eager_predicts(run_dir, tmp_path, monkeypatch, backend):
    """compile=true: real dynamo tracing (its "eager" backend needs no C++ toolchain) gives
    the eager outputs; a backend that fails gives one warning and the eager outputs."""
    import torch

    real_compile = torch.compile
    chosen = "eager" if backend == "eager" else _failing_backend
    monkeypatch.setattr(torch, "compile", lambda m: real_compile(m, backend=chosen))
    for i in range(2):
        tifffile.imwrite(tmp_path / f"i{i}.tif", picture(i))
    args = [f"checkpoint={run_dir}", f"input={tmp_path / '*.tif'}", "outputs=probabilities"]
    assert main([*args, f"output={tmp_path / 'eager'}"]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, f"output={tmp_path / 'compiled'}", "compile=true"]) == 0
    failed = [w for w in caught if "torch.compile failed" in str(w.message)]
    assert len(failed) == (backend == "failing")  # once, not once per image
    for i in range(2):
        name = f"i{i}_probabilities.tif"
        compiled, eager = (tifffile.imread(tmp_path / d / name) for d in ("compiled", "eager"))
        np.testing.assert_array_equal(compiled, eager)


def test_watershed_instances_option(run_dir, tmp_path):
    tifffile.imwrite(tmp_path / "d.tif", picture(3))
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'd.tif'}", f"output={tmp_path}"]
    assert main([*args, "outputs=instances", "instances.method=watershed",
                 "instances.min_size=5"]) == 0
    labels = tifffile.imread(tmp_path / "d_instances.tif")
    sizes = np.bincount(labels.ravel())[1:]
    assert labels.shape == SHAPE and (sizes >= 5).all() and len(sizes) == labels.max()


def test_existing_output_refused_unless_overwrite(run_dir, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "e.tif", picture(4))
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'e.tif'}", f"output={tmp_path}",
            "outputs=labels"]
    assert main(args) == 0
    before = (tmp_path / "e_labels.tif").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2
    err = error_line(capsys)
    assert "e_labels.tif exists" in err and "overwrite=true" in err
    assert (tmp_path / "e_labels.tif").stat().st_mtime_ns == before
    assert main([*args, "overwrite=true"]) == 0


def test_channel_mismatch_and_unreadable_file(run_dir, tmp_path, capsys):
    rgb = np.random.default_rng(5).integers(0, 255, (*SHAPE, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    common = [f"checkpoint={run_dir}", f"output={tmp_path / 'out'}"]
    assert main([*common, f"input={tmp_path / 'rgb.png'}"]) == 2
    err = error_line(capsys)
    assert "rgb.png has 3 channels" in err and "expects 1" in err
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 definitely not a tiff")
    assert main([*common, f"input={tmp_path / 'bad.tif'}"]) == 2
    err = error_line(capsys)
    assert "cannot read" in err and "bad.tif" in err
    assert main([*common, f"input={tmp_path / 'missing.tif'}"]) == 2
    assert "no such file" in error_line(capsys)
    assert main([*common, f"input={tmp_path / '*.tif'}", "outputs=edges"]) == 2
    assert ("outputs=['edges'] is not valid: expected some of probabilities, labels, "
            "instances") in error_line(capsys)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "override, key",
    [
        ("batch_size=null", "batch_size="),
        ("batch_size=0", "batch_size="),
        ("overlap=1", "overlap="),
        ("instances.threshold=1.5", "instances.threshold="),
        ("instances.seed_threshold=-0.1", "instances.seed_threshold="),
        ("instances.grow=-1", "instances.grow="),
        ("instances.min_distance=null", "instances.min_distance="),
        ("instances.min_size=-1", "instances.min_size="),
        ("instances.h=-1", "instances.h="),
    ],
)
def test_bad_values_stop_before_any_output(run_dir, tmp_path, capsys, override, key):
    """Checked up front: these used to fail with a traceback, some only after the
    probabilities and labels were written."""
    tifffile.imwrite(tmp_path / "a.tif", picture(0))
    out = tmp_path / "out"
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'a.tif'}", f"output={out}"]
    assert main([*args, override]) == 2
    assert key in error_line(capsys)
    assert not out.exists() or not any(out.iterdir())


def test_one_tile_size_is_for_every_axis(run_dir, tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", picture(0))
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'a.tif'}", "outputs=probabilities"]
    assert main([*args, f"output={tmp_path / 'one'}", "tile=92"]) == 0
    assert main([*args, f"output={tmp_path / 'two'}", "tile=92,92"]) == 0
    one, two = (tifffile.imread(tmp_path / d / "a_probabilities.tif") for d in ("one", "two"))
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), SHAPE])
def test_four_level_net_predicts_tiny_images_and_tiles(tmp_path, shape):
    # The quickstart's 4 levels: tile=60 or 92 (and the default tile of a 1x1 or 2x2 image)
    # predicts 4 pixels, fewer than the 8 between tile starts. tile=188 (-> 100 pixels), which
    # always worked, is the reference: a valid net's result does not depend on the tile.
    run = tmp_path / "run"
    save_tiny_checkpoint(run, channels=(2, 4, 8, 16))
    tifffile.imwrite(tmp_path / "a.tif", picture(0, shape))
    args = [f"checkpoint={run}", f"input={tmp_path / 'a.tif'}", "outputs=probabilities"]
    results = []
    for tile in ("tile=188", "tile=60", "tile=92", None):
        out = tmp_path / str(tile)
        assert main([*args, f"output={out}", *filter(None, [tile])]) == 0
        results.append(tifffile.imread(out / "a_probabilities.tif").astype(np.float32))
    assert results[0].shape == (2, *shape)
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], atol=1e-3)  # float16 files


def test_lazy_normalisation_matches_training():
    # The tile-by-tile normalisation equals what training did to the whole image.
    rgba = np.random.default_rng(6).integers(0, 255, (*SHAPE, 4), dtype=np.uint8)
    lazy = image_for_model(rgba, "x.png", 1, 2, {"channels": 1, "percentiles": [1, 99.8]})
    chw = image_channels_first(rgba, SHAPE, "x.png", "y.png")
    expected = prepare_image(chw, 1, (1, 99.8), "x.png")
    np.testing.assert_allclose(lazy[:, 5:20, 7:30], expected[:, 5:20, 7:30], atol=1e-5)
    assert lazy.shape == (1, *SHAPE)
    # Strided percentiles of a large image stay close to the exact ones.
    import segunet.infer.inputs as cli

    big = np.random.default_rng(7).gamma(2.0, size=(1, 400, 400)).astype(np.float32)
    old, cli.PERCENTILE_SAMPLE = cli.PERCENTILE_SAMPLE, 10_000
    try:
        sampled = NormalizedImage(big, "first", 1, None, (1, 99.8), "big")[...]
    finally:
        cli.PERCENTILE_SAMPLE = old
    exact = prepare_image(big, None, (1, 99.8), "big")
    # A 1-in-16 sample of a heavy-tailed image: the 99.8th percentile moves by a few percent.
    assert not np.array_equal(sampled, exact) and np.abs(sampled - exact).max() < 0.1


# --- outputs checked before predicting, skip_existing, Ctrl-C, stale temps -------------------


def cli(*args: str) -> list[str]:
    """The ``segunet predict`` command line, to run as a user would (as conftest.run_cli does; its
    environment is ENV)."""
    return [sys.executable, "-m", "segunet.cli", "predict", *args]


ENV = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}


def hidden(folder) -> list[str]:
    """Temp files and stores (every temp name starts with '.')."""
    names = [p.name for p in folder.iterdir()] if folder.exists() else []
    return sorted(name for name in names if name.startswith("."))


@pytest.mark.parametrize("output", ["taken", "taken/sub"])
def test_output_that_is_or_lies_under_a_file(run_dir, tmp_path, capsys, output):
    """Used to be a FileExistsError / NotADirectoryError traceback."""
    tifffile.imwrite(tmp_path / "a.tif", picture(0))
    (tmp_path / "taken").write_text("a file")
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'a.tif'}"]
    assert main([*args, f"output={tmp_path / output}"]) == 2
    err = error_line(capsys)
    assert f"output={tmp_path / output}: {tmp_path / 'taken'} is a file, not a folder" in err
    assert (tmp_path / "taken").read_text() == "a file"


def as_user_without_root_override() -> list[str]:
    """A prefix that makes permission bits count for root too (which ignores them): the
    command runs without CAP_DAC_OVERRIDE."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return ["setpriv", "--bounding-set=-dac_override", "--"]


@pytest.mark.parametrize("output, message", [("ro", "is not writable"),
                                             ("ro/new", "cannot create")])
def test_unwritable_output_refused_before_predicting(run_dir, tmp_path, output, message):
    """An unwritable folder used to be noticed only when the first output was written, after
    the whole prediction; a folder that cannot be created was a PermissionError traceback."""
    tifffile.imwrite(tmp_path / "a.tif", picture(0))
    (tmp_path / "ro").mkdir(mode=0o555)
    try:
        result = subprocess.run(
            [*as_user_without_root_override(),
             *cli(f"checkpoint={run_dir}", f"input={tmp_path / 'a.tif'}",
                  f"output={tmp_path / output}")],
            capture_output=True, text=True, timeout=240, env=ENV,
        )
    finally:
        (tmp_path / "ro").chmod(0o755)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith(f"segunet: error: output={tmp_path / output}: ")
    assert message in lines[-1] and "Permission denied" in lines[-1]
    assert not any("[1/1]" in line for line in lines)  # nothing was predicted
    assert not any((tmp_path / "ro").iterdir())


def test_skip_existing_continues_a_batch_stopped_by_a_corrupt_file(run_dir, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name, seed in (("a", 0), ("c", 2)):
        tifffile.imwrite(inputs / f"{name}.tif", picture(seed))
    (inputs / "b.tif").write_bytes(b"II*\x00 truncated")
    args = [f"checkpoint={run_dir}", f"input={inputs}", f"output={out}"]
    assert main(args) == 2
    err = error_line(capsys)
    assert "b.tif" in err and "1 of 3 images done" in err and "skip_existing=true" in err
    assert sorted(p.name for p in out.iterdir()) == [f"a_{o}.tif" for o in sorted(OUTPUTS)]
    # Without skip_existing the finished outputs are refused, not silently redone.
    tifffile.imwrite(inputs / "b.tif", picture(1))
    assert main(args) == 2
    assert "a_probabilities.tif exists" in error_line(capsys)
    assert main([*args, "skip_existing=true", "overwrite=true"]) == 2
    assert "contradict" in error_line(capsys)
    (out / "a_labels.tif").unlink()  # as if killed between two outputs of one image
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*args, "skip_existing=true"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in kept} == kept
    for name in ("a", "b", "c"):
        check_outputs(out, name)
    # The continued batch gives what one uninterrupted run gives.
    assert main([f"checkpoint={run_dir}", f"input={inputs}", f"output={tmp_path / 'ref'}"]) == 0
    for p in (tmp_path / "ref").iterdir():
        np.testing.assert_array_equal(tifffile.imread(out / p.name), tifffile.imread(p))
    capsys.readouterr()
    assert main([*args, "skip_existing=true"]) == 0  # nothing left to do
    assert "3 of 3 images have all their outputs" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["loading", "zarr", "stack"])
def test_ctrl_c_is_one_line_and_leaves_no_temp(run_dir, tmp_path, case):
    """SIGINT while the image loads or while outputs stream to their temp: one line, no
    traceback, no temp file or store left, nothing half-written."""
    shape = (12, 300, 300) if case == "stack" else (2000, 2000)
    # Compressed: read through zarr, whose I/O thread must not outlive the interrupt.
    tifffile.imwrite(tmp_path / "big.tif", picture(0, shape), compression="zlib", tile=(256, 256))
    out = tmp_path / "out"
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'big.tif'}", f"output={out}",
            "tile=92", "format=zarr" if case == "zarr" else "format=tif"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(cli(*args), stderr=stderr, text=True, env=ENV)
    try:
        if case == "loading":
            wait_for(lambda: "[1/1]" in log.read_text(), "progress line", process)
        else:
            wait_for(lambda: any(n.endswith(".tmp") for n in hidden(out)), "temp", process)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
    finally:
        process.kill()
    err = log.read_text()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("segunet: error: interrupted"), err
    assert sum(line.startswith("segunet: error") for line in lines) == 1
    assert hidden(out) == []
    for done in out.iterdir():  # an output finished before the interrupt is whole
        whole = zarr.open_array(str(done))[...] if done.suffix == ".zarr" else tifffile.imread(done)
        assert whole.shape[-2:] == shape[-2:]


def test_temps_of_killed_runs_removed_by_the_next_run(run_dir, tmp_path, capsys):
    """kill -9 leaves the hidden temp stores of predict behind; the next predict into the
    folder removes those of dead writers, and keeps a live writer's and other hosts'."""
    tifffile.imwrite(tmp_path / "big.tif", picture(0, (2000, 2000)))
    out = tmp_path / "out"
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'big.tif'}", f"output={out}",
            "tile=92", "format=zarr", "outputs=labels"]
    killed = subprocess.Popen(cli(*args), stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for(lambda: any(n.endswith(".tmp") for n in hidden(out)), "temp", killed)
    finally:
        killed.kill()  # SIGKILL: no clean-up runs
        killed.wait()
    left = hidden(out)
    assert left and all(str(killed.pid) in name for name in left)
    # A writer still at work (another predict, say): its temp must survive.
    live = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from segunet.data.io import atomic_path\n"
         f"with atomic_path(Path({str(out / 'z_labels.tif')!r})) as tmp:\n"
         "    tmp.write_bytes(b'partial'); print(tmp.name, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        live_temp = live.stdout.readline().strip()
        elsewhere = out / ".x_labels.tif.42@otherhost.0123abcd.tmp"  # cannot be checked
        elsewhere.write_bytes(b"")
        tifffile.imwrite(tmp_path / "a.tif", picture(1))
        capsys.readouterr()
        assert main([f"checkpoint={run_dir}", f"input={tmp_path / 'a.tif'}", f"output={out}",
                     "outputs=labels"]) == 0
        assert f"removed {len(left)} temporary file" in capsys.readouterr().err
        assert hidden(out) == sorted([live_temp, elsewhere.name])
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
            "a_labels.tif"
        ]
    finally:
        live.kill()
        live.wait()


# --- Z-stacks and 2D models ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_stack_predicted_slice_by_slice_by_a_2d_model(run_dir, tmp_path, capsys, fmt):
    """A (Z, Y, X) stack whose depth is no channel count of the 2D model used to be refused
    as having Z channels; each slice now equals a 2D prediction of it done by hand, with the
    stack normalised as a whole (as training on a stack does)."""
    from scipy import ndimage as ndi

    from segunet.checkpoint import load_model
    from segunet.infer.predict import predict_tiled

    stack = np.random.default_rng(8).gamma(2.0, 30.0, (7, *SHAPE)).astype(np.float32)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    out = tmp_path / "out"
    # A high threshold cuts this random model's foreground into many objects per slice.
    assert main([f"checkpoint={run_dir}", f"input={tmp_path / 's.tif'}", f"output={out}",
                 f"format={fmt}", "instances.threshold=0.9"]) == 0
    assert "s.tif is a stack of 7 slices" in capsys.readouterr().err
    suffix = "." + fmt
    read = tifffile.imread if fmt == "tif" else lambda p: zarr.open_array(str(p))[...]
    probs, labels, instances = (read(out / f"s_{o}{suffix}") for o in OUTPUTS)
    assert probs.shape == (7, 2, *SHAPE) and probs.dtype == np.float16
    assert labels.shape == instances.shape == (7, *SHAPE) and instances.dtype == np.uint32

    model, _ = load_model(run_dir)
    low, high = np.percentile(stack, [1.0, 99.8])
    low, scale = np.float32(low), np.float32(high - low)  # in float32, as predict does
    first_id = 1
    for z in range(7):
        by_hand = predict_tiled(model, ((stack[z] - low) / scale)[None])
        np.testing.assert_allclose(probs[z], by_hand, atol=1e-3)
        np.testing.assert_array_equal(labels[z], probs[z].argmax(0))
        # Objects: the slice's components, numbered on from the previous slice's last.
        components, n = ndi.label(by_hand[1] > 0.9)
        ids = np.unique(instances[z][instances[z] > 0])
        np.testing.assert_array_equal(ids, np.arange(first_id, first_id + n))
        pairs = np.unique(np.stack([components.ravel(), instances[z].ravel()]), axis=1)
        assert pairs.shape[1] == n + 1  # one to one, background included
        first_id += n
    assert first_id > 7 * 50  # many objects per slice: the numbering was really tested
    if fmt == "zarr":  # written slice by slice, one chunk deep
        assert zarr.open_array(str(out / "s_probabilities.zarr")).chunks == (1, 2, *SHAPE)


def test_stack_depth_that_fits_the_channels_is_channels(tmp_path):
    """Only a depth the model cannot take as channels makes a stack."""
    from segunet.infer.inputs import stack_for_model

    rgb_planes = np.zeros((3, *SHAPE), np.uint8)
    grey_model = {"channels": 1, "percentiles": [1, 99.8]}
    assert stack_for_model(rgb_planes, tmp_path / "x.tif", 1, 2, grey_model) is None
    assert stack_for_model(rgb_planes, tmp_path / "x.tif", 1, 2, {}).shape == (1, 3, *SHAPE)
    assert stack_for_model(rgb_planes, tmp_path / "x.tif", 3, 2, {}) is None
    assert stack_for_model(rgb_planes, tmp_path / "x.tif", 1, 3, {}) is None  # a 3D model


def boundary_checkpoint(folder, tuned: dict | None):
    """A tiny 3-class net of the boundary target, with the settings a search chose."""
    import torch

    path = save_tiny_checkpoint(folder, "unet_valid", out_channels=3)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["data"]["target"] = "boundary"
    ckpt["postprocess"] = tuned
    torch.save(ckpt, path)
    return path


def test_instances_decode_the_target_with_the_tuned_settings(tmp_path, capsys):
    from segunet.postprocess.decoding import PostProcess, decode

    settings = {"threshold": 0.3, "min_size": 0, "grow": 0, "seed_threshold": 0.2,
                "tta": False}
    ckpt = boundary_checkpoint(tmp_path / "run", {"settings": settings, "metric": "ap"})
    tifffile.imwrite(tmp_path / "a.tif", picture(0))
    out = tmp_path / "out"
    assert main([f"checkpoint={ckpt}", f"input={tmp_path / 'a.tif'}", f"output={out}",
                 "outputs=probabilities,instances"]) == 0
    assert "instances of the boundary target, tuned on its validation images" in (
        capsys.readouterr().err
    )
    # The probabilities as predict computes them (its file holds them in float16).
    from segunet.checkpoint import load_model
    from segunet.infer.predict import predict_tiled

    model, config = load_model(ckpt)
    probs = predict_tiled(model, image_for_model(picture(0), tmp_path / "a.tif", 1, 2,
                                                  config["data"]), device="cpu")
    np.testing.assert_allclose(tifffile.imread(out / "a_probabilities.tif"), probs, atol=1e-3)
    # Decoded from the probabilities as every format stores them, so that a zarr's
    # instances (decoded block by block from its store) equal a TIFF's.
    probs = probs.astype(np.float16)
    expected = decode(probs, "boundary", PostProcess(**settings))
    np.testing.assert_array_equal(tifffile.imread(out / "a_instances.tif"), expected)
    # A key given on the command line wins over the tuned value.
    again = tmp_path / "again"
    assert main([f"checkpoint={ckpt}", f"input={tmp_path / 'a.tif'}", f"output={again}",
                 "outputs=instances", "instances.min_size=30"]) == 0
    expected = decode(probs, "boundary", PostProcess(**{**settings, "min_size": 30}))
    np.testing.assert_array_equal(tifffile.imread(again / "a_instances.tif"), expected)


# --- pixel size: resampling to the training one, outputs on the input's grid ---------------

#: One axis of four 3x3 box filters in a row: what the blur model below applies.
BOX4 = np.convolve(np.convolve(np.ones(3), np.ones(3)), np.convolve(np.ones(3), np.ones(3))) / 81


def blur_threshold(model, threshold: float = 0.97, gain: float = 200.0) -> None:
    """Weights that make a 2-level valid U-Net a known detector of objects of a scale:
    foreground probability ``sigmoid(gain * (K * x - threshold))``, ``K`` four 3x3 box
    filters (two convolutions of the first encoder level, two of the last decoder level,
    through the skip connection; everything else zero). A disc of radius 8 px keeps
    ``K * x`` at 1 inside; one of radius 4 px peaks at 0.94, below the threshold."""
    for p in model.parameters():
        p.zero_()
    box = torch.full((3, 3), 1 / 9)
    for conv in (model.encoders[0][0], model.encoders[0][2], model.decoders[0][0],
                 model.decoders[0][2]):
        conv.weight[0, 0] = box  # channel 0 to channel 0; the skip is channel 0 of the concat
    model.head.weight[1, 0] = gain
    model.head.bias[1] = -gain * threshold


def discs(pixel_size: float, shape: tuple[int, int], supersample: int = 8) -> np.ndarray:
    """The same scene of six discs of radius 4 um (centres in um), rendered at
    ``pixel_size`` um by area coverage, 0..200."""
    centres = [(12, 12), (12, 36), (34, 20), (40, 44), (50, 10), (26, 52)]
    coords = [(np.arange(n * supersample) + 0.5) / supersample * pixel_size for n in shape]
    yy, xx = np.meshgrid(*coords, indexing="ij")
    inside = np.zeros(yy.shape, bool)
    for cy, cx in centres:
        inside |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 4.0**2
    coverage = inside.reshape(shape[0], supersample, shape[1], supersample).mean((1, 3))
    return (200 * coverage).astype(np.float32)


@pytest.fixture(scope="module")
def blur_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blur")
    save_tiny_checkpoint(folder, channels=(2, 2), pixel_size=[0.5, 0.5], weights=blur_threshold)
    return folder


def predict_instances(run, image, pixel_size, folder, *extra) -> np.ndarray:
    tifffile.imwrite(folder / "in.tif", image, resolution=(1e4 / pixel_size,) * 2,
                     resolutionunit="CENTIMETER")
    out = folder / "out"
    args = [f"checkpoint={run}", f"input={folder / 'in.tif'}", f"output={out}",
            "outputs=instances", "overwrite=true", *extra]
    assert main(args) == 0
    return tifffile.imread(out / "in_instances.tif")


def test_discs_at_p_and_2p_give_the_same_instances(blur_run, tmp_path):
    """The issue's test. The model is built, not trained, so that its output is exactly
    known and, above all, depends on scale: it finds discs of radius 8 px and misses discs
    of radius 4 px. So the scene at 2p (radius 4 px) is found only if predict resamples it
    to the training pixel size p (radius 8 px); without resampling it is missed (checked
    last). The instances of 2p, on its own 64x64 grid, equal those of p taken at the
    centre of each 2p pixel (p's pixel 2i + 1), except within a pixel of a boundary."""
    at_p = predict_instances(blur_run, discs(0.5, (128, 128)), 0.5, tmp_path)
    at_2p = predict_instances(blur_run, discs(1.0, (64, 64)), 1.0, tmp_path)
    assert at_2p.shape == (64, 64) and len(np.unique(at_p)) == 7  # six discs found at p
    reference = at_p[1::2, 1::2]
    matched = np.zeros_like(at_2p)
    for k in np.unique(at_2p[at_2p > 0]):  # each 2p object onto the p object it overlaps
        ids, counts = np.unique(reference[at_2p == k], return_counts=True)
        matched[at_2p == k] = ids[np.argmax(counts)]
    assert sorted(np.unique(matched)) == sorted(np.unique(reference))  # one to one
    near_boundary = ndi.binary_dilation(find_boundaries(reference, mode="thick"),
                                        np.ones((3, 3), bool))
    assert not np.any((matched != reference) & ~near_boundary)
    assert predict_instances(blur_run, discs(1.0, (64, 64)), 1.0, tmp_path,
                             "resample=false").max() == 0


def test_an_input_finer_than_training_is_predicted_at_the_training_size(blur_run, tmp_path):
    """p/2: discs of radius 16 px, predicted on a grid of half the size (radius 8)."""
    at_p = predict_instances(blur_run, discs(0.5, (128, 128)), 0.5, tmp_path)
    at_half = predict_instances(blur_run, discs(0.25, (256, 256)), 0.25, tmp_path)
    assert at_half.shape == (256, 256) and len(np.unique(at_half)) == 7
    # Each p/2 pixel lies in the p pixel of half its index: the same objects, the same ids.
    np.testing.assert_array_equal(at_half, np.repeat(np.repeat(at_p, 2, 0), 2, 1))


def test_pixel_size_option_overrides_the_file_and_outputs_record_it(blur_run, tmp_path):
    image = discs(1.0, (64, 64))
    tifffile.imwrite(tmp_path / "bare.tif", image)  # no pixel size
    args = [f"checkpoint={blur_run}", f"input={tmp_path / 'bare.tif'}", "outputs=labels"]
    assert main([*args, f"output={tmp_path / 'a'}"]) == 0
    assert tifffile.imread(tmp_path / "a/bare_labels.tif").max() == 0  # as is: missed
    assert main([*args, f"output={tmp_path / 'b'}", "pixel_size=1.0"]) == 0
    assert tifffile.imread(tmp_path / "b/bare_labels.tif").max() == 1
    assert read_pixel_size(tmp_path / "b/bare_labels.tif") == (1.0, 1.0)


@pytest.mark.parametrize(("extra", "match"), [
    (["pixel_size=0"], "pixel_size=\\[0.0\\]: a pixel size must be a positive number"),
    (["pixel_size=-1,1"], "must be a positive number"),
    (["pixel_size=5"], "is 10x the model's 0.5 x 0.5 um, beyond the 8x"),
    (["pixel_size=0.05"], "is 1/10x the model's"),
])
def test_bad_pixel_sizes_and_factors_are_one_line_and_write_nothing(
    blur_run, tmp_path, capsys, extra, match
):
    tifffile.imwrite(tmp_path / "in.tif", discs(1.0, (64, 64)))
    out = tmp_path / "out"
    args = [f"checkpoint={blur_run}", f"input={tmp_path / 'in.tif'}", f"output={out}", *extra]
    assert main(args) == 2
    assert re.search(match, error_line(capsys))
    assert not out.exists() or not any(out.iterdir())


# --- OME-Zarr out and in -------------------------------------------------------------------


def test_ome_zarr_output_opens_with_ome_zarrs_reader(blur_run, tmp_path):
    """Image (the probabilities), labels and instances, each a pyramid with the input's
    pixel size per level, equal to the plain zarr outputs at level 0."""
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    image = np.tile(discs(0.5, (128, 128)), (5, 5))  # 640 px: levels of 640, 320
    tifffile.imwrite(tmp_path / "cells.tif", image, resolution=(1e4 / 0.5,) * 2,
                     resolutionunit="CENTIMETER")
    args = [f"checkpoint={blur_run}", f"input={tmp_path / 'cells.tif'}"]
    assert main([*args, f"output={tmp_path / 'ome'}", "format=ome-zarr"]) == 0
    assert main([*args, f"output={tmp_path / 'plain'}", "format=zarr"]) == 0
    assert sorted(p.name for p in (tmp_path / "ome").iterdir()) == ["cells.ome.zarr"]
    nodes = list(Reader(parse_url(str(tmp_path / "ome/cells.ome.zarr"), fmt=FormatV04()))())
    by_name = {n.metadata.get("name"): n for n in nodes if n.data}
    assert set(by_name) == {"cells", "labels", "instances"}
    for name, node in by_name.items():
        assert [d.shape[-2:] for d in node.data] == [(640, 640), (320, 320)]
        scales = [t[0]["scale"][-2:] for t in node.metadata["coordinateTransformations"]]
        assert scales == [[0.5, 0.5], [1.0, 1.0]]
        assert [a.get("unit") for a in node.metadata["axes"]] == [None, "micrometer",
                                                                  "micrometer"]
        plain = zarr.open_array(str(tmp_path / f"plain/cells_{name}.zarr".replace(
            "cells_cells", "cells_probabilities")))[...]
        level0 = np.asarray(node.data[0])
        np.testing.assert_array_equal(level0 if name == "cells" else level0[0], plain)
    probs = np.asarray(by_name["cells"].data[0], np.float32)
    half = np.asarray(by_name["cells"].data[1], np.float32)
    np.testing.assert_allclose(half, probs.reshape(2, 320, 2, 320, 2).mean((2, 4)), atol=1e-3)
    np.testing.assert_array_equal(np.asarray(by_name["instances"].data[1])[0],
                                  np.asarray(by_name["instances"].data[0])[0, ::2, ::2])
    assert by_name["labels"].metadata["visible"] is not None  # read as an NGFF label image


def test_an_ome_zarr_level_is_predicted_at_its_own_pixel_size(blur_run, tmp_path):
    """Level 1 of an OME-Zarr at 1 um is resampled to the model's 0.5 um: found."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscale

    group = zarr.open_group(str(tmp_path / "scene.ome.zarr"), mode="w", zarr_format=2)
    levels = [discs(0.5, (128, 128)), discs(1.0, (64, 64))]
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        write_multiscale(levels, group, fmt=FormatV04(), axes=axes, coordinate_transformations=[
            [{"type": "scale", "scale": [0.5, 0.5]}], [{"type": "scale", "scale": [1.0, 1.0]}]])
    out = tmp_path / "out"
    args = [f"checkpoint={blur_run}", f"output={out}", "outputs=instances"]
    assert main([*args, f"input={tmp_path / 'scene.ome.zarr'}:s1"]) == 0
    instances = tifffile.imread(out / "scene_instances.tif")
    assert instances.shape == (64, 64) and len(np.unique(instances)) == 7
    assert read_pixel_size(out / "scene_instances.tif") == (1.0, 1.0)


def test_a_stack_as_ome_zarr_is_c_z_y_x_with_a_pyramid_in_y_and_x(run_dir, tmp_path):
    """A 2D model's stack: NGFF's (C, Z, Y, X) order, the slices of the zarr output."""
    tifffile.imwrite(tmp_path / "s.tif", np.stack([picture(k, (40, 1100)) for k in range(3)]))
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 's.tif'}"]
    assert main([*args, f"output={tmp_path / 'ome'}", "format=ome-zarr"]) == 0
    assert main([*args, f"output={tmp_path / 'plain'}", "format=zarr"]) == 0
    root = zarr.open_group(str(tmp_path / "ome/s.ome.zarr"), mode="r")
    plain = zarr.open_array(str(tmp_path / "plain/s_probabilities.zarr"))[...]
    np.testing.assert_array_equal(root["0"][...], plain.transpose(1, 0, 2, 3))
    assert root["1"].shape == (2, 3, 20, 550) and root["2"].shape == (2, 3, 10, 275)
    instances = root["labels/instances/0"][...]
    np.testing.assert_array_equal(instances[0],
                                  zarr.open_array(str(tmp_path / "plain/s_instances.zarr"))[...])
    np.testing.assert_array_equal(root["labels/instances/1"][0], instances[0, :, ::2, ::2])
    axes = root.attrs["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["c", "z", "y", "x"]
