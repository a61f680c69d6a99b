"""``segunet predict`` refuses what would give a wrong result or a traceback (issue 19): one
line that names the file and the fix, nothing written, never exit 0 with non-finite output."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
import torch
import zarr
from helpers import TINY, error_line, run_cli, run_in_process, save_tiny_checkpoint, unet

from segunet.cli.predict import run as main
from segunet.data.tiling import tile_shapes
from segunet.infer import inputs

SHAPE = (50, 60)



def picture(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    save_tiny_checkpoint(folder, "unet_valid")
    return folder


def ome_zarr_image(path) -> None:
    """A 128 x 128 OME-Zarr of 3 levels written by ome-zarr's own writer, which names its
    levels s0, s1, s2."""
    from ome_zarr.scale import Scaler
    from ome_zarr.writer import write_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ome-zarr's deprecation notes
        write_image(np.tile(picture(3, (32, 32)), (4, 4)), str(path), axes="yx",
                    scaler=Scaler(max_layer=2))


# --- 1. every pixel is checked; nothing non-finite is written --------------------------------


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_a_nan_outside_the_percentile_sample_is_refused_with_its_count(
    run_dir, tmp_path, capsys, monkeypatch, fmt
):
    """The check read a strided sample (every 2nd pixel of a 4200 x 4200 image): NaN at odd
    positions passed, and NaN probabilities were written with exit 0. The sample is made
    small here so that the stride is 2 on a small image."""
    monkeypatch.setattr(inputs, "PERCENTILE_SAMPLE", SHAPE[0] * SHAPE[1] // 4)
    image = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    image[1, 1] = image[3, 7] = np.nan
    image[5, 9] = np.inf
    path = tmp_path / f"img.{fmt}"
    if fmt == "tif":
        tifffile.imwrite(path, image)
    else:
        zarr.create_array(store=str(path), data=image, chunks=(16, 16))
    out = tmp_path / "out"
    assert main(["checkpoint=" + str(run_dir), f"input={path}", f"output={out}"]) == 2
    err = error_line(capsys)
    assert str(path) in err and "3 NaN or infinite values" in err
    assert files(out) == []


def test_non_finite_count_reads_in_blocks_and_counts_every_value(monkeypatch):
    """A lazily read array larger than a block is read block by block (here 2 KiB: one
    channel is more, so each channel in runs of its rows) and every value counts."""
    monkeypatch.setattr(inputs, "CHECK_BYTES", 2048)
    x = np.random.default_rng(1).standard_normal((3, 40, 50)).astype(np.float32)
    x.flat[np.random.default_rng(2).choice(x.size, 37, replace=False)] = np.nan
    x[2, 39, 49] = -np.inf
    reads = []

    class Lazy:
        shape, dtype, ndim = x.shape, x.dtype, x.ndim

        def __getitem__(self, index):
            block = x[index]
            reads.append(block.nbytes)
            return block

    assert inputs.non_finite(Lazy()) == int((~np.isfinite(x)).sum())
    assert max(reads) <= 2048 and sum(reads) == x.nbytes


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, capsys):
    """Its probabilities were all NaN, written with exit 0."""
    save_tiny_checkpoint(tmp_path / "run", weights=lambda m: m.encoders[0][0].weight.fill_(
        float("nan")))
    tifffile.imwrite(tmp_path / "a.tif", picture())
    args = [f"checkpoint={tmp_path / 'run'}", f"input={tmp_path / 'a.tif'}"]
    assert main([*args, f"output={tmp_path / 'out'}"]) == 2
    err = error_line(capsys)
    assert "last.pt: weight encoders.0.0.weight holds NaN or infinite values" in err
    assert files(tmp_path / "out") == []


def test_probabilities_that_overflow_are_not_written(tmp_path, capsys):
    """Finite but huge weights overflow to inf inside the net: softmax gives NaN. The last
    check before writing refuses them (this wrote NaN probabilities with exit 0)."""
    save_tiny_checkpoint(tmp_path / "run", weights=lambda m: [p.fill_(1e30)
                                                             for p in m.parameters()])
    tifffile.imwrite(tmp_path / "a.tif", picture())
    args = [f"checkpoint={tmp_path / 'run'}", f"input={tmp_path / 'a.tif'}"]
    for fmt in ("tif", "zarr"):
        out = tmp_path / fmt
        assert main([*args, f"output={out}", f"format={fmt}"]) == 2
        assert "NaN or infinite probabilities, so nothing was written" in error_line(capsys)
        assert files(out) == []


def test_values_beyond_float32_after_normalising_are_refused(run_dir, tmp_path, capsys):
    """Finite float32 values of +-3e38: p99.8 - p1 overflows, NaN probabilities, exit 0."""
    image = np.random.default_rng(0).uniform(-3e38, 3e38, SHAPE).astype(np.float32)
    assert np.isfinite(image).all()
    tifffile.imwrite(tmp_path / "huge.tif", image)
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'huge.tif'}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # one line, no numpy warnings
        assert main([*args, f"output={tmp_path / 'out'}"]) == 2
    err = error_line(capsys)
    assert "huge.tif" in err and "cannot be normalised" in err


@pytest.mark.parametrize("values", [np.zeros(SHAPE, np.complex64),
                                    np.full(SHAPE, "a"),
                                    np.zeros(SHAPE, [("a", "f4"), ("b", "f4")])],
                         ids=["complex", "text", "records"])
def test_pixels_that_are_no_real_numbers_are_refused(run_dir, tmp_path, capsys, values):
    """complex: the imaginary part dropped with a warning and exit 0; text and records:
    ValueError / TypeError tracebacks."""
    np.save(tmp_path / "x.npy", values)
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'x.npy'}"]
    assert main([*args, f"output={tmp_path / 'out'}"]) == 2
    err = error_line(capsys)
    assert "x.npy holds" in err and "integer, float or bool pixels" in err


# --- 2. an output that is the input ----------------------------------------------------------


@pytest.mark.parametrize("spec", ["folder", "glob"])
def test_output_into_the_folder_the_input_lists_is_refused(run_dir, tmp_path, capsys, spec):
    """A second run with skip_existing=true predicted the first one's outputs as images."""
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", picture())
    given = str(folder) if spec == "folder" else str(folder / "*.tif")
    args = [f"checkpoint={run_dir}", f"input={given}", f"output={folder}", "skip_existing=true"]
    assert main(args) == 2
    assert f"output={folder} is the folder that input={given} reads" in error_line(capsys)
    assert files(folder) == ["a.tif"]


def test_a_single_file_may_write_beside_itself(run_dir, tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", picture())
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'a.tif'}", f"output={tmp_path}"]
    assert main([*args, "outputs=labels"]) == 0
    assert files(tmp_path) == ["a.tif", "a_labels.tif"]


@pytest.mark.parametrize("case", ["is", "inside", "replaced"])
def test_an_output_that_is_or_replaces_the_input_is_refused(run_dir, tmp_path, capsys, case):
    """format=ome-zarr into the input's folder with overwrite=true replaced the input
    x.ome.zarr by its own prediction; an output inside the input store wrote into it."""
    image = tmp_path / "x.ome.zarr"
    ome_zarr_image(image)
    before = sorted(p.relative_to(image) for p in image.rglob("*"))
    output = {"is": image, "inside": image / "out", "replaced": tmp_path}[case]
    args = [f"checkpoint={run_dir}", f"input={image}", f"output={output}", "format=ome-zarr",
            "overwrite=true"]
    assert main(args) == 2
    assert f"output={output} " in error_line(capsys)
    assert sorted(p.relative_to(image) for p in image.rglob("*")) == before


# --- 3. the device option -------------------------------------------------------------------


@pytest.mark.parametrize("device", ["foo", "meta"])
def test_a_device_that_is_none_is_one_line_about_the_device(run_dir, tmp_path, capsys, device):
    """device=foo blamed the checkpoint ("the file is corrupt"), device=meta its weights."""
    tifffile.imwrite(tmp_path / "a.tif", picture())
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'a.tif'}", f"output={tmp_path / 'o'}"]
    assert main([*args, f"device={device}"]) == 2
    err = error_line(capsys)
    assert f"device={device} is not a device segunet runs on: use auto, cpu" in err
    assert "last.pt" not in err and not (tmp_path / "o").exists()


def test_a_gpu_that_is_not_visible_is_named(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    tifffile.imwrite(tmp_path / "a.tif", picture())
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'a.tif'}", f"output={tmp_path / 'o'}"]
    assert main([*args, "device=cuda:3"]) == 2
    assert ("device=cuda:3 but 1 CUDA device is visible: use auto, cpu, cuda, cuda:0"
            in error_line(capsys))


@pytest.mark.parametrize("command", ["tune", "train"])
def test_tune_and_train_check_the_device_the_same_way(run_dir, tmp_path, command):
    """tune blamed the checkpoint; train's torch.device("foo") was a traceback."""
    args = ([f"checkpoint={run_dir}", "device=foo"] if command == "tune"
            else [*(o for o in TINY if not o.startswith("trainer.device")),
                  "trainer.device=foo"])
    done = run_in_process(command, *args, cwd=tmp_path)
    key = "device" if command == "tune" else "trainer.device"
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        f"segunet: error: {key}=foo is not a device segunet runs on: use auto, cpu")


# --- 4. a truncated TIFF --------------------------------------------------------------------


def truncated_tiff(path, seed: int = 1) -> None:
    """A tiled, zlib-compressed TIFF cut in half: read through zarr, tile by tile."""
    tifffile.imwrite(path, picture(seed, (256, 256)), compression="zlib", tile=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_tiff_is_one_line_naming_it(run_dir, tmp_path):
    """A DeflateError traceback; as the user runs it, with nothing after the line (zarr's
    reads of the other broken tiles used to add asyncio's complaints at exit)."""
    truncated_tiff(tmp_path / "cut.tif")
    done = run_cli("predict", f"checkpoint={run_dir}", f"input={tmp_path / 'cut.tif'}",
                   f"output={tmp_path / 'out'}", cwd=tmp_path)
    last = done.stderr.splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith(f"segunet: error: cannot read {tmp_path / 'cut.tif'}: ")
    assert "corrupt or truncated" in last and "Task" not in done.stderr
    assert files(tmp_path / "out") == []


def test_a_truncated_tiff_in_a_folder_stops_with_the_way_to_go_on(run_dir, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", picture(0))
    truncated_tiff(folder / "b.tif")
    tifffile.imwrite(folder / "c.tif", picture(2))
    args = [f"checkpoint={run_dir}", f"input={folder}", f"output={out}"]
    assert main(args) == 2
    err = error_line(capsys)
    assert f"cannot read {folder / 'b.tif'}" in err and "1 of 3 images done" in err
    assert "rerun with skip_existing=true" in err
    assert files(out) == ["a_instances.tif", "a_labels.tif", "a_probabilities.tif"]
    (folder / "b.tif").unlink()  # as the line says: moved away, then continued
    assert main([*args, "skip_existing=true"]) == 0
    assert len(files(out)) == 6


# --- 5. OME-Zarr levels by position ---------------------------------------------------------


def test_a_numeric_level_picks_the_level_of_an_s0_named_pyramid(run_dir, tmp_path, capsys):
    """ome-zarr's writer names levels s0, s1, ...: input=x.ome.zarr:1 was refused."""
    image = tmp_path / "x.ome.zarr"
    ome_zarr_image(image)
    root = zarr.open_group(str(image), mode="r")
    paths = [d["path"] for d in dict(root.attrs.get("ome", root.attrs))["multiscales"][0]
             ["datasets"]]
    assert paths[:2] == ["s0", "s1"]  # the naming this is about
    args = [f"checkpoint={run_dir}", "outputs=labels"]
    assert main([*args, f"input={image}:1", f"output={tmp_path / 'by_position'}"]) == 0
    assert main([*args, f"input={image}:s1", f"output={tmp_path / 'by_name'}"]) == 0
    labels = tifffile.imread(tmp_path / "by_position/x_labels.tif")
    assert labels.shape == root["s1"].shape
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "by_name/x_labels.tif"))
    capsys.readouterr()
    assert main([*args, f"input={image}:7", f"output={tmp_path / 'none'}"]) == 2
    assert "levels are s0, s1, s2 (or 0..2 by position)" in error_line(capsys)


def axes_image(path, data: np.ndarray, axes: str) -> None:
    """An OME-Zarr of one level whose axes metadata names ``axes`` (``cyx``, ``zyx``)."""
    from ome_zarr.writer import write_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ome-zarr's deprecation notes
        write_image(data, str(path), axes=axes, scaler=None)


def test_an_ome_zarr_whose_axes_say_channels_is_no_stack(run_dir, tmp_path, capsys):
    """A 2-channel (c, y, x) image and a 1-channel model: the channels were predicted as
    the slices of a Z stack and written with exit 0."""
    image = tmp_path / "two.ome.zarr"
    axes_image(image, np.stack([picture(1), picture(2)]), "cyx")
    out = tmp_path / "out"
    assert main([f"checkpoint={run_dir}", f"input={image}", f"output={out}"]) == 2
    err = error_line(capsys)
    assert str(image) in err and "has 2 channels" in err and "expects 1" in err
    assert files(out) == []


def test_an_ome_zarr_whose_axes_say_z_is_no_multichannel_image(tmp_path, capsys):
    """A (z, y, x) stack of 3 slices and a 3-channel model: the slices were taken as the
    image's 3 channels and predicted as one image, with exit 0."""
    save_tiny_checkpoint(tmp_path / "run", in_channels=3)
    image = tmp_path / "stack.ome.zarr"
    axes_image(image, np.stack([picture(i) for i in range(3)]), "zyx")
    out = tmp_path / "out"
    assert main([f"checkpoint={tmp_path / 'run'}", f"input={image}", f"output={out}"]) == 2
    err = error_line(capsys)
    assert str(image) in err and "stack of 3 slices" in err and "3-channel" in err
    assert files(out) == []


def test_an_ome_zarr_stack_still_goes_slice_by_slice(run_dir, tmp_path):
    image = tmp_path / "stack.ome.zarr"
    axes_image(image, np.stack([picture(i) for i in range(3)]), "zyx")
    out = tmp_path / "out"
    assert main([f"checkpoint={run_dir}", f"input={image}", f"output={out}",
                 "outputs=labels"]) == 0
    assert tifffile.imread(out / "stack_labels.tif").shape == (3, *SHAPE)


def test_skip_existing_does_not_take_an_ome_zarr_without_its_labels_as_done(
    run_dir, tmp_path, capsys
):
    """An OME-Zarr written with outputs=probabilities, then skip_existing=true with every
    output: "3 of 3 images have all their outputs; predicting 0", exit 0, no labels."""
    picture_path = tmp_path / "a.tif"
    tifffile.imwrite(picture_path, picture())
    out = tmp_path / "out"
    args = [f"checkpoint={run_dir}", f"input={picture_path}", f"output={out}",
            "format=ome-zarr"]
    assert main([*args, "outputs=probabilities"]) == 0
    capsys.readouterr()
    assert main([*args, "skip_existing=true"]) == 2
    err = error_line(capsys)
    assert str(out / "a.ome.zarr") in err and "labels and instances" in err
    assert "overwrite=true" in err
    assert not (out / "a.ome.zarr" / "labels").exists()
    # Complete, it is kept as it is.
    assert main([*args, "overwrite=true"]) == 0
    assert main([*args, "skip_existing=true"]) == 0
    assert "1 of 1 images have all their outputs" in capsys.readouterr().err


# --- 6. a tile larger than the image --------------------------------------------------------


def smallest_covering(net, n: int) -> int:
    """The smallest input size the net takes whose output covers ``n`` pixels and spans a
    pooling step, searched size by size."""
    step = 2 ** (net.levels - 1)
    for size in range(1, 10 * n + 200):
        if net.valid_input_shape([size])[0] != size:
            continue
        out = size if net.padding == "same" else net.output_shape([size, size])[0]
        if out >= max(n, step if net.padding == "valid" else 1):
            return size
    raise AssertionError("none found")


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_a_tile_larger_than_the_image_is_cut_to_one_that_covers_it(padding):
    """tile=4000 on a 200 x 200 image computed a 4000 x 4000 tile (8.4 GB, 52 s);
    tile=100000 was a MemoryError."""
    net = unet(padding)
    expected = (smallest_covering(net, 200), smallest_covering(net, 90))
    assert tile_shapes(net, (200, 90), 100_000)[0] == expected
    assert tile_shapes(net, (200, 90), (100_000, 3000))[0] == expected
    assert tile_shapes(net, (200, 90), 4000)[0] == expected
    small = tile_shapes(net, (2000, 2000), 300)[0]  # smaller than the image: as it was
    assert small[0] <= 300 and small == tile_shapes(net, (20_000, 20_000), 300)[0]


def test_the_cli_says_when_it_cuts_the_tile(run_dir, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", picture())
    args = [f"checkpoint={run_dir}", f"input={tmp_path / 'a.tif'}", "outputs=probabilities"]
    assert main([*args, f"output={tmp_path / 'big'}", "tile=1000"]) == 0
    err = capsys.readouterr().err
    net = unet()
    used = " x ".join(str(smallest_covering(net, n)) for n in SHAPE)
    assert f"tile=1000 is larger than this 50 x 60 px image needs: predicting in tiles of {used}" \
        in err
    assert main([*args, f"output={tmp_path / 'auto'}"]) == 0
    assert "is larger than" not in capsys.readouterr().err
    # A valid net's result does not depend on the tile.
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "big/a_probabilities.tif"),
                                  tifffile.imread(tmp_path / "auto/a_probabilities.tif"))
