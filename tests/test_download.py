"""``segunet data download``: the fetch-convert-rename mechanism, on file:// archives."""

import zipfile

import numpy as np
import pytest

from segunet.data import download as dl
from segunet.data.io import read_array, write_array
from segunet.errors import SegunetError


def lucchi_files(tmp_path):
    """A tiny stand-in for the EPFL training volume and its labels."""
    src = tmp_path / "remote"
    volume = np.random.default_rng(0).integers(0, 255, (4, 16, 20)).astype(np.uint8)
    labels = (volume > 128).astype(np.uint8) * 255
    write_array(src / "training.tif", volume)
    write_array(src / "training_groundtruth.tif", labels)
    return src, volume, labels


def use_lucchi(monkeypatch, src, size=None):
    spec = dl.REGISTRY["lucchi"]
    files = (dl.Remote((src / "training.tif").as_uri(), "training.tif", size),
             dl.Remote((src / "training_groundtruth.tif").as_uri(), "training_groundtruth.tif"))
    monkeypatch.setitem(dl.REGISTRY, "lucchi", dl.Dataset("lucchi", files, spec.convert))


def test_lucchi_download_converts_into_the_preset_layout(tmp_path, monkeypatch):
    src, volume, labels = lucchi_files(tmp_path)
    use_lucchi(monkeypatch, src)
    target = dl.download("lucchi", tmp_path / "data", progress=False)
    assert target == tmp_path / "data" / "lucchi"
    np.testing.assert_array_equal(read_array(target / "train-volume.tif"), volume)
    np.testing.assert_array_equal(read_array(target / "train-labels.tif"), labels)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["lucchi"]  # no temp left

    with pytest.raises(SegunetError, match="--force"):
        dl.download("lucchi", tmp_path / "data", progress=False)
    (target / "stale.txt").write_text("old copy")
    dl.download("lucchi", tmp_path / "data", force=True, progress=False)
    assert sorted(p.name for p in target.iterdir()) == ["train-labels.tif", "train-volume.tif"]


def test_wrong_size_leaves_nothing_behind(tmp_path, monkeypatch):
    src, _, _ = lucchi_files(tmp_path)
    use_lucchi(monkeypatch, src, size=12345)
    with pytest.raises(SegunetError, match="expected 12345"):
        dl.download("lucchi", tmp_path / "data", progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_unreachable_url_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(dl.REGISTRY, "lucchi", dl.Dataset(
        "lucchi", (dl.Remote((tmp_path / "gone.tif").as_uri(), "training.tif"),),
        dl.convert_lucchi))
    with pytest.raises(SegunetError, match="cannot download") as info:
        dl.download("lucchi", tmp_path / "data", progress=False)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "data").iterdir()) == []


def test_dsb2018_masks_become_one_instance_tiff_and_colour_images_are_skipped(
    tmp_path, monkeypatch
):
    archive = tmp_path / "stage1_train.zip"
    grey = np.zeros((12, 14, 4), np.uint8)
    grey[..., :3] = np.arange(14, dtype=np.uint8)[None, :, None] * 9
    grey[..., 3] = 255
    colour = grey.copy()
    colour[..., 0] = 0
    masks = [np.zeros((12, 14), np.uint8) for _ in range(2)]
    masks[0][2:6, 2:6] = 255
    masks[1][5:9, 5:9] = 255  # overlaps the first: the later mask wins
    staging = tmp_path / "staging"
    write_array(staging / "aaa" / "images" / "aaa.png", grey)
    write_array(staging / "bbb" / "images" / "bbb.png", colour)
    for i, m in enumerate(masks):
        write_array(staging / "aaa" / "masks" / f"m{i}.png", m)
        write_array(staging / "bbb" / "masks" / f"m{i}.png", m)
    with zipfile.ZipFile(archive, "w") as z:
        for p in staging.rglob("*.png"):
            z.write(p, p.relative_to(staging).as_posix())
    monkeypatch.setitem(dl.REGISTRY, "dsb2018", dl.Dataset(
        "dsb2018", (dl.Remote(archive.as_uri(), "stage1_train.zip", archive.stat().st_size),),
        dl.convert_dsb2018, root="train"))

    target = dl.download("dsb2018", tmp_path / "data", progress=False)
    assert [p.name for p in (target / "train" / "images").iterdir()] == ["aaa.png"]
    np.testing.assert_array_equal(read_array(target / "train" / "images" / "aaa.png"),
                                  grey[..., 0])
    inst = read_array(target / "train" / "masks" / "aaa.tif")
    assert inst.dtype == np.uint16 and set(np.unique(inst)) == {0, 1, 2}
    assert inst[5, 5] == 2 and inst[2, 2] == 1


def test_isbi2012_says_where_to_register_and_put_the_files(tmp_path, capsys):
    with pytest.raises(SegunetError, match="register") as info:
        dl.download("isbi2012", tmp_path / "data")
    assert str(tmp_path / "data" / "isbi2012") in str(info.value)
    assert dl.main(["download", "isbi2012", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segunet: error:") and err.count("\n") == 1


def test_main_downloads_and_tells_how_to_train(tmp_path, monkeypatch, capsys):
    src, _, _ = lucchi_files(tmp_path)
    use_lucchi(monkeypatch, src)
    assert dl.main(["download", "lucchi", "--dest", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "data=lucchi" in out and f"data.path={tmp_path / 'd' / 'lucchi'}" in out
    assert dl.main(["download", "lucchi", "--dest", str(tmp_path / "d")]) == 2
    assert dl.main(["download", "lucchi", "--dest", str(tmp_path / "d"), "--force"]) == 0
    with pytest.raises(SystemExit):
        dl.main(["download", "nope"])
