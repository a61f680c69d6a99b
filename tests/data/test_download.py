"""``segunet data download``: the fetch-convert-rename mechanism, on file:// archives."""

import dataclasses
import hashlib
import os
import socket
import zipfile

import numpy as np
import pytest

from segunet.cli import data as data_cli
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


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def use_lucchi(monkeypatch, src, size=None):
    """The lucchi preset on the files in ``src``, pinned to their SHA-256."""
    spec = dl.REGISTRY["lucchi"]
    files = tuple(
        dl.Remote((src / name).as_uri(), name, size if name == "training.tif" else None,
                  sha256(src / name))
        for name in ("training.tif", "training_groundtruth.tif")
    )
    monkeypatch.setitem(dl.REGISTRY, "lucchi", dl.Dataset("lucchi", files, spec.convert))


def test_lucchi_download_converts_into_the_preset_layout(tmp_path, monkeypatch):
    src, volume, labels = lucchi_files(tmp_path)
    use_lucchi(monkeypatch, src)
    target = dl.download("lucchi", tmp_path / "data", progress=False)
    assert target == tmp_path / "data" / "lucchi"
    np.testing.assert_array_equal(read_array(target / "train-volume.tif"), volume)
    np.testing.assert_array_equal(read_array(target / "train-labels.tif"), labels)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["lucchi"]  # no temp left

    with pytest.raises(SegunetError, match="force=true"):
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


def dsb2018_zip(tmp_path, extra=()):
    """A tiny stand-in for stage1_train.zip: a grey sample ``aaa`` and a colour one ``bbb``,
    two overlapping masks each; ``extra``: more ``(name, bytes)`` members."""
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
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(staging.rglob("*.png")):
            z.write(p, p.relative_to(staging).as_posix())
        for name, data in extra:
            z.writestr(name, data)
    return archive, grey


def use_dsb2018(monkeypatch, archive, pinned=None):
    """The dsb2018 preset on ``archive``, pinned to ``pinned`` (default: its own SHA-256)."""
    monkeypatch.setitem(dl.REGISTRY, "dsb2018", dl.Dataset(
        "dsb2018", (dl.Remote(archive.as_uri(), "stage1_train.zip", archive.stat().st_size,
                              pinned or sha256(archive)),),
        dl.convert_dsb2018, root="train"))


def test_dsb2018_masks_become_one_instance_tiff_and_colour_images_are_skipped(
    tmp_path, monkeypatch
):
    archive, grey = dsb2018_zip(tmp_path)
    use_dsb2018(monkeypatch, archive)

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
    assert data_cli.run(["download", "name=isbi2012", f"dest={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segunet: error:") and err.count("\n") == 1


def test_main_downloads_and_tells_how_to_train(tmp_path, monkeypatch, capsys):
    src, _, _ = lucchi_files(tmp_path)
    use_lucchi(monkeypatch, src)
    assert data_cli.run(["download", "name=lucchi", f"dest={tmp_path / 'd'}"]) == 0
    out = capsys.readouterr().out
    assert "data=lucchi" in out and f"data.path={tmp_path / 'd' / 'lucchi'}" in out
    assert data_cli.run(["download", "name=lucchi", f"dest={tmp_path / 'd'}"]) == 2
    assert data_cli.run(["download", "name=lucchi", f"dest={tmp_path / 'd'}", "force=true"]) == 0
    assert data_cli.run(["download", "name=nope"]) == 2


# --- what a server or an archive may hand us ----------------------------------------------


def error_line(capsys) -> str:
    """The one error line on stderr, after any progress bars."""
    lines = capsys.readouterr().err.rstrip("\n").split("\n")
    assert lines and lines[-1].startswith("segunet: error:")
    assert all("%|" in line for line in lines[:-1])  # the rest is tqdm's
    return lines[-1]


def test_a_small_file_served_for_the_pinned_dsb2018_archive_is_refused(
    tmp_path, monkeypatch, capsys
):
    """The issue's case: a 4 KB archive served instead of the ~80 MB one. It is a valid
    stand-in (it would convert), but its SHA-256 is not the one pinned for BBBC038."""
    archive, _ = dsb2018_zip(tmp_path)
    assert archive.stat().st_size < 8192
    real = dl.REGISTRY["dsb2018"]
    served = tuple(dataclasses.replace(r, url=archive.as_uri()) for r in real.files)
    monkeypatch.setitem(dl.REGISTRY, "dsb2018", dataclasses.replace(real, files=served))
    assert data_cli.run(["download", "name=dsb2018", f"dest={tmp_path / 'data'}"]) == 2
    err = error_line(capsys)
    assert sha256(archive) in err and "expected" in err and "stage1_train.zip" in err
    assert list((tmp_path / "data").iterdir()) == []


def test_every_remote_has_a_pinned_sha256_or_is_refused(tmp_path, monkeypatch, capsys):
    """lucchi has no published checksum: what the server sends is refused unless the user
    pins it, and then only that content is accepted."""
    for spec in dl.REGISTRY.values():
        for remote in spec.files:
            assert remote.sha256 is None or len(remote.sha256) == 64
    src, volume, _ = lucchi_files(tmp_path)
    real = dl.REGISTRY["lucchi"]
    served = tuple(dataclasses.replace(r, url=(src / r.filename).as_uri()) for r in real.files)
    monkeypatch.setitem(dl.REGISTRY, "lucchi", dataclasses.replace(real, files=served))
    dest = tmp_path / "data"
    assert data_cli.run(["download", "name=lucchi", f"dest={dest}"]) == 2
    err = error_line(capsys)
    assert "no SHA-256 is pinned for training.tif" in err
    assert f"sha256=training.tif={sha256(src / 'training.tif')}" in err
    assert list(dest.iterdir()) == []

    pins = [f"{name}={sha256(src / name)}" for name in ("training.tif", "training_groundtruth.tif")]
    wrong = f"training_groundtruth.tif={sha256(src / 'training.tif')}"
    lucchi = ["download", "name=lucchi", f"dest={dest}"]
    assert data_cli.run([*lucchi, f"sha256={pins[0]},{wrong}"]) == 2
    assert "expected" in error_line(capsys) and list(dest.iterdir()) == []
    assert data_cli.run([*lucchi, f"sha256={','.join(pins)}"]) == 0
    np.testing.assert_array_equal(read_array(dest / "lucchi" / "train-volume.tif"), volume)
    assert data_cli.run([*lucchi, "force=true", "sha256=nope.tif=" + "0" * 64]) == 2
    assert "no file 'nope.tif'" in error_line(capsys)


def test_a_longer_download_stops_at_the_pinned_size(tmp_path, monkeypatch):
    src, _, _ = lucchi_files(tmp_path)
    use_lucchi(monkeypatch, src, size=100)
    with pytest.raises(SegunetError, match="more than 100 bytes, expected 100"):
        dl.download("lucchi", tmp_path / "data", progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_only_the_needed_members_are_unpacked_within_a_cap(tmp_path, monkeypatch):
    """The issue's case: a small zip holding a huge file. A needed member (a mask) that
    unpacks beyond the cap is refused before anything is unpacked; a member the conversion
    does not read is never unpacked, so it counts for nothing."""
    monkeypatch.setattr(dl, "MAX_UNPACKED", 1 << 20, raising=False)
    huge = bytes(4 << 20)  # deflates to a few KB
    archive, grey = dsb2018_zip(tmp_path, extra=[("junk/huge.bin", huge)])
    use_dsb2018(monkeypatch, archive)
    target = dl.download("dsb2018", tmp_path / "data", progress=False)
    np.testing.assert_array_equal(read_array(target / "train" / "images" / "aaa.png"),
                                  grey[..., 0])

    bomb, _ = dsb2018_zip(tmp_path / "bomb", extra=[("aaa/masks/huge.png", huge)])
    assert bomb.stat().st_size < 1 << 20
    use_dsb2018(monkeypatch, bomb)
    with pytest.raises(SegunetError, match="would unpack to 4194") as info:
        dl.download("dsb2018", tmp_path / "bomb-data", progress=False)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "bomb-data").iterdir()) == []


@pytest.mark.parametrize("name", ["../evil.png", "/tmp/evil.png", "aaa/../../evil.png"])
def test_a_member_named_outside_the_folder_is_refused(tmp_path, monkeypatch, name):
    archive, _ = dsb2018_zip(tmp_path, extra=[(name, b"x")])
    use_dsb2018(monkeypatch, archive)
    with pytest.raises(SegunetError, match="outside the dataset folder"):
        dl.download("dsb2018", tmp_path / "data", progress=False)
    assert list((tmp_path / "data").iterdir()) == []
    assert not (tmp_path / "evil.png").exists()


def test_a_killed_downloads_temp_folder_is_removed_by_the_next(tmp_path, monkeypatch):
    """kill -9 runs no clean-up: the next download into the folder removes what it left
    (here: a dead writer's half-fetched files), and keeps a live writer's."""
    src, _, _ = lucchi_files(tmp_path)
    use_lucchi(monkeypatch, src)
    dest = tmp_path / "data"
    host = socket.gethostname().split(".")[0] or "localhost"
    dead = dest / f".lucchi.999999@{host}.abc123.tmp"
    alive = dest / f".lucchi.{os.getpid()}@{host}.def456.tmp"
    for folder in (dead, alive):
        (folder / "downloads").mkdir(parents=True)
        (folder / "downloads" / "training.tif").write_bytes(b"half")
    dl.download("lucchi", dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == [alive.name, "lucchi"]


def test_an_unknown_dataset_is_one_line(capsys):
    assert data_cli.run(["download", "name=nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segunet: error:") and err.count("\n") == 1
    assert "'nope'" in err and "dsb2018" in err and "lucchi" in err


def test_a_dest_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for dest in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert data_cli.run(["download", "name=dsb2018", f"dest={dest}"]) == 2
        line = error_line(capsys)
        assert "dest=" in line and "is a file, not a folder" in line


def test_ctrl_c_mid_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    src, _, _ = lucchi_files(tmp_path)
    use_lucchi(monkeypatch, src)
    fetch = dl.fetch

    def interrupted(url, target, *args):
        fetch(url, target, *args)
        raise KeyboardInterrupt  # as Ctrl-C would, with a file half-way in

    monkeypatch.setattr(dl, "fetch", interrupted)
    try:
        code = data_cli.run(["download", "name=lucchi", f"dest={tmp_path / 'data'}"])
    except KeyboardInterrupt:
        code = "a traceback"
    assert code == 2
    assert "interrupted" in error_line(capsys)
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize(("words", "meant"), [
    (["lucchi"], "name=lucchi"),
    (["lucchi", "--dest", "d", "--force"], "name=lucchi dest=d force=true"),
    (["--sha256", "a.tif=1", "dsb2018", "--sha256=b.tif=2"], "name=dsb2018 sha256=a.tif=1,b.tif=2"),
])
def test_the_old_flags_are_one_line_that_shows_them_as_key_value(tmp_path, monkeypatch,
                                                                 capsys, words, meant):
    monkeypatch.chdir(tmp_path)
    assert data_cli.run(["download", *words]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"segunet: error: segunet data download: expected key=value, got '{words[0]}': did you "
        f"mean {meant}?"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_pin_holding_an_equals_sign_is_read_as_text(tmp_path, monkeypatch, capsys):
    """``sha256=FILE=HEX,...``: the value holds ``=`` and a comma list; each pin reaches the
    download whole (a pin of a file the dataset lacks names that file)."""
    assert data_cli.run(["download", "name=lucchi", f"dest={tmp_path}",
                         "sha256=x.tif=" + "0" * 64 + ",y.tif=1"]) == 2
    assert "sha256=x.tif=" + "0" * 64 + ": lucchi has no file 'x.tif'" in error_line(capsys)


def test_help_names_the_default_folder_and_the_datasets(capsys):
    assert data_cli.run(["download", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: segunet data download name=<dataset>" in out
    assert "`segunet train data=<name>` reads" in out
    assert "dest (data)" in out and "lucchi: Lucchi et al." in out
