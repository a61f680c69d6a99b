"""``segunet predict ... dask.workers=2``: the images of a batch, or the bands and blocks of
one image, on a 2-process Dask LocalCluster give exactly the files one process gives (with
the same torch threads per process), and what goes wrong is one line, as without Dask."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import tifffile
import torch
import zarr
from helpers import detector, save_tiny_checkpoint, smooth

from segunet.cli.predict import run as main
from segunet.infer import objects

pytest.importorskip("distributed")


@pytest.fixture
def batch(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        tifffile.imwrite(inputs / f"i{i}.tif", rng.integers(0, 255, (60 + 7 * i, 70), np.uint8))
    return ckpt, inputs


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Dask worker runs (dask.threads=1)
    yield
    torch.set_num_threads(before)


def test_two_workers_write_what_one_process_writes(batch, tmp_path, one_thread, capsys):
    ckpt, inputs = batch
    args = [f"checkpoint={ckpt}", f"input={inputs}"]
    assert main([*args, f"output={tmp_path / 'one'}"]) == 0
    assert main([*args, f"output={tmp_path / 'dask'}", "dask.workers=2"]) == 0
    err = capsys.readouterr().err
    assert "segunet: Dask: 4 images on 2 workers; dashboard http" in err
    assert "segunet: wrote 12 files to" in err
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "dask").iterdir()) and len(one) == 12
    for name in one:
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "dask" / name),
                                      tifffile.imread(tmp_path / "one" / name), err_msg=name)


@pytest.mark.parametrize("extra", [["format=zarr"], ["format=ome-zarr", "pixel_size=0.7"]])
def test_the_blocks_of_one_image_on_two_workers_equal_one_process(
    tmp_path, one_thread, monkeypatch, capsys, extra,
):
    """3 or 4 bands of rows to predict, as many blocks to decode (cores of one chunk),
    objects across the seams; on the image's grid, and resampled onto the model's."""
    monkeypatch.setattr(objects, "CORE_CHUNKS", {2: 1, 3: 1})
    ckpt = save_tiny_checkpoint(tmp_path, channels=(2, 2), pixel_size=[0.5, 0.5],
                                weights=detector)
    tifffile.imwrite(tmp_path / "a.tif", smooth((1100, 300), 0))
    args = [f"checkpoint={ckpt}", f"input={tmp_path / 'a.tif'}", "tile=128", *extra]
    assert main([*args, f"output={tmp_path / 'one'}"]) == 0
    assert main([*args, f"output={tmp_path / 'dask'}", "dask.workers=2"]) == 0
    err = capsys.readouterr().err
    assert "segunet: Dask: the blocks of 1 image on 2 workers" in err
    bands = re.search(r"predict \(Dask\): 100%\|[^|]*\| (\d+)/\1", err)
    assert bands and int(bands.group(1)) >= 3
    one, dask = arrays_under(tmp_path / "one"), arrays_under(tmp_path / "dask")
    assert sorted(one) == sorted(dask) and len(one) >= 3
    for name, array in one.items():
        assert array.dtype == dask[name].dtype, name
        np.testing.assert_array_equal(dask[name][...], array[...], err_msg=name)
    assert max(a[...].max() for n, a in one.items() if "instances" in n) > 20
    assert not [p for p in (tmp_path / "dask").iterdir() if p.name.startswith(".")]


def test_non_finite_bands_on_workers_write_nothing_and_say_so_in_one_line(tmp_path, capsys):
    """Logits beyond float32 where the image is bright: NaN probabilities there, counted
    over the bands as one process counts them over the image."""
    ckpt = save_tiny_checkpoint(tmp_path, channels=(2, 2), weights=lambda m: detector(
        m, threshold=-1.0, gain=3e38))
    tifffile.imwrite(tmp_path / "a.tif", smooth((1100, 200), 0))
    args = [f"checkpoint={ckpt}", f"input={tmp_path / 'a.tif'}", "format=zarr", "tile=128"]
    said = []
    for extra in ([f"output={tmp_path / 'o'}"], [f"output={tmp_path / 'd'}", "dask.workers=2"]):
        assert main([*args, *extra]) == 2
        said.append(capsys.readouterr().err.strip().splitlines()[-1])
    assert "NaN or infinite probabilities, so nothing was written" in said[0]
    assert said[1] == said[0]
    assert list((tmp_path / "d").iterdir()) == []


def arrays_under(folder):
    """Every zarr array in ``folder`` (stores, OME-Zarr levels), by its relative path."""
    found = [m for m in folder.rglob("zarr.json")
             if json.loads(m.read_text())["node_type"] == "array"]
    found += folder.rglob(".zarray")  # OME-Zarr 0.4 is zarr v2
    return {str(m.parent.relative_to(folder)): zarr.open_array(str(m.parent)) for m in found}


def test_a_bad_image_stops_the_batch_in_one_line_and_skip_existing_finishes_it(
    batch, tmp_path, capsys,
):
    ckpt, inputs = batch
    (inputs / "i9.tif").write_bytes(b"not a tiff")
    args = [f"checkpoint={ckpt}", f"input={inputs}", f"output={tmp_path / 'out'}",
            "dask.workers=2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "i9.tif" in err and "images done; rerun with skip_existing=true" in err
    (inputs / "i9.tif").unlink()
    assert main([*args, "skip_existing=true"]) == 0
    assert len(list((tmp_path / "out").glob("*_instances.tif"))) == 4


@pytest.mark.parametrize(("extra", "message"), [
    (["dask.workers=2", "dask.scheduler=tcp://127.0.0.1:1"], "contradict each other"),
    (["dask.workers=2", "compile=true"], "compile=true is not for dask.*"),
    (["dask.workers=-1"], "dask.workers=-1"),
    (["dask.workers=2", "dask.split=blocks"], "give format=zarr or format=ome-zarr"),
])
def test_bad_dask_options_are_one_line(batch, tmp_path, capsys, extra, message):
    ckpt, inputs = batch
    assert main([f"checkpoint={ckpt}", f"input={inputs}", f"output={tmp_path / 'o'}",
                 *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_without_distributed_dask_options_say_what_to_install(batch, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    ckpt, inputs = batch
    assert main([f"checkpoint={ckpt}", f"input={inputs}", f"output={tmp_path / 'o'}",
                 "dask.workers=2"]) == 2
    assert "pip install 'segunet[dask]'" in capsys.readouterr().err


def test_a_scheduler_that_does_not_answer_is_one_line(batch, tmp_path, capsys):
    ckpt, inputs = batch
    assert main([f"checkpoint={ckpt}", f"input={inputs}", f"output={tmp_path / 'o'}",
                 "dask.scheduler=tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("segunet: error:") == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(
        "dask.scheduler=tcp://127.0.0.1:9: no Dask scheduler answered there (OSError); start "
        "one (dask scheduler) or give dask.workers=N for a local cluster")
