"""The on-disk weight map cache: same maps as uncached, keyed on everything, self-healing,
crash-safe, parallel; and the ``segunet weightmaps`` precompute command."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run_in_process

from segunet.data import weightmaps_cache
from segunet.data.io import write_array
from segunet.data.precompute import precompute
from segunet.data.synthetic import synthetic_cells
from segunet.data.weightmaps import border_weight_map, separate_touching
from segunet.data.weightmaps_cache import border_weight_maps, cache_key, stats


def cells(n: int = 3, shape: tuple[int, ...] = (64, 72)) -> list[np.ndarray]:
    return [separate_touching(synthetic_cells(shape, seed=i)[1]) for i in range(n)]


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "weightmaps").glob("*/*.npz"))


@pytest.fixture(autouse=True)
def fresh_stats():
    stats.reset()
    yield
    stats.reset()


def test_equals_uncached_and_second_call_hits(tmp_path):
    images = cells()
    valid = [None, np.arange(64 * 72).reshape(64, 72) % 3 > 0, None]
    expected = [border_weight_map(x, 8.0, 4.0, valid=v) for x, v in zip(images, valid)]
    for round_ in range(2):
        maps = border_weight_maps(images, 8.0, 4.0, valid_list=valid, cache_dir=tmp_path,
                                  progress=False)
        for got, want in zip(maps, expected):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
        assert (stats.misses, stats.hits) == (3, 3 * round_)
    assert len(entries(tmp_path)) == 3
    # No cache at all: the same maps, nothing written.
    maps = border_weight_maps(images, 8.0, 4.0, valid_list=valid, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(maps, expected))


def test_any_change_misses(tmp_path):
    x = cells(1)[0]
    border_weight_maps([x], cache_dir=tmp_path)
    one_pixel = x.copy()
    one_pixel[0, 0] = one_pixel.max() + 1
    changes = [
        dict(instances_list=[one_pixel]),
        dict(instances_list=[x], w0=11.0),
        dict(instances_list=[x], sigma=4.0),
        dict(instances_list=[x], class_weights=None),
        dict(instances_list=[x], spacing=(1.0, 2.0)),
        dict(instances_list=[x], valid_list=[np.eye(*x.shape, dtype=bool) == 0]),
        dict(instances_list=[x.astype(np.int64)]),
    ]
    for i, change in enumerate(changes):
        border_weight_maps(**change, cache_dir=tmp_path)
        assert (stats.misses, stats.hits) == (i + 2, 0), change
    # An all-True mask changes nothing: it shares the entry of no mask.
    border_weight_maps([x], valid_list=[np.ones(x.shape, bool)], cache_dir=tmp_path)
    assert stats.hits == 1
    assert len({cache_key(x, None, 10.0, 5.0, "balanced", None),
                cache_key(x, None, 10.0, 5.0, "balanced", (1.0, 1.0))}) == 2


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_garbage(path: Path) -> None:
    path.write_bytes(b"not a zip file at all")


def damage_shape(path: Path) -> None:
    weight = np.ones((5, 5), np.float32)  # consistent in itself, but not this image's map
    with open(path, "wb") as f:
        np.savez_compressed(f, weight=weight, key=np.array(path.stem),
                            checksum=np.array(weightmaps_cache._checksum(weight)))


def damage_checksum(path: Path) -> None:
    with np.load(path) as entry:
        weight, key, checksum = entry["weight"].copy(), entry["key"], entry["checksum"]
    weight[3, 3] += 1
    with open(path, "wb") as f:
        np.savez_compressed(f, weight=weight, key=key, checksum=checksum)


def damage_key(path: Path) -> None:
    with np.load(path) as entry:
        weight, checksum = entry["weight"], entry["checksum"]
        with open(path, "wb") as f:
            np.savez_compressed(f, weight=weight, key=np.array("0" * 64), checksum=checksum)


def poison(value: float):
    """An entry whose key and checksum match but whose map holds ``value`` (a poisoned
    shared cache): only the values themselves can tell."""

    def damage(path: Path) -> None:
        with np.load(path) as entry:
            weight, key = entry["weight"].copy(), entry["key"]
        weight[3, 3] = value
        with open(path, "wb") as f:
            np.savez_compressed(f, weight=weight, key=key,
                                checksum=np.array(weightmaps_cache._checksum(weight)))

    damage.__name__ = f"damage_poison_{value}"
    return damage


@pytest.mark.parametrize(
    "damage",
    [damage_truncate, damage_garbage, damage_shape, damage_checksum, damage_key,
     poison(np.nan), poison(np.inf), poison(-1.0), poison(64 * 72 + 10.5)],
    ids=lambda damage: damage.__name__,
)
def test_damaged_entry_is_reported_and_rebuilt(tmp_path, caplog, damage):
    x = cells(1)[0]
    expected = border_weight_maps([x], cache_dir=tmp_path)[0]
    (path,) = entries(tmp_path)
    damage(path)
    with caplog.at_level(logging.WARNING, logger=weightmaps_cache.__name__):
        again = border_weight_maps([x], cache_dir=tmp_path, names=["cell_07"])[0]
    np.testing.assert_array_equal(again, expected)
    assert (stats.misses, stats.hits, stats.rebuilt) == (2, 0, 1)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert path.name in warning.getMessage() and "cell_07" in warning.getMessage()
    # Rebuilt in place: the next call reads it back.
    border_weight_maps([x], cache_dir=tmp_path)
    assert stats.hits == 1 and entries(tmp_path) == [path]


def test_interrupted_write_leaves_no_entry_and_no_tmp(tmp_path, monkeypatch):
    x = cells(1)[0]

    def interrupted(file, **arrays):
        file.write(b"PK\x03\x04 half of a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        border_weight_maps([x], cache_dir=tmp_path)
    monkeypatch.undo()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    border_weight_maps([x], cache_dir=tmp_path)
    assert len(entries(tmp_path)) == 1 and stats.misses == 1  # the interrupted one never counted


def test_stale_tmp_files_are_removed_fresh_ones_kept(tmp_path):
    folder = tmp_path / "weightmaps" / "ab"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".abc.npz.x1.tmp", folder / ".abd.npz.x2.tmp"
    stale.write_bytes(b"debris")
    fresh.write_bytes(b"another run, still writing")
    old = time.time() - 2 * weightmaps_cache.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    border_weight_maps(cells(1), cache_dir=tmp_path)
    assert not stale.exists() and fresh.exists()


def test_parallel_equals_serial_in_order(tmp_path):
    images = cells(4, (40, 48)) + [np.zeros((30, 30), np.int32)]
    serial = border_weight_maps(images, progress=False)
    parallel = border_weight_maps(images, workers=2, cache_dir=tmp_path, progress=False)
    assert len(parallel) == len(images)
    for a, b, x in zip(serial, parallel, images):
        assert b.shape == x.shape
        np.testing.assert_array_equal(a, b)
    assert len(entries(tmp_path)) == len(images)  # the workers stored them


def test_bad_arguments():
    with pytest.raises(ValueError, match="names"):
        border_weight_maps(cells(2), names=["only one"])


SMALL = ["data=synthetic", "data.n_train=2", "data.n_val=1", "data.shape=[64,64]"]


def test_precompute_counts_computed_then_reused(make_cfg, tmp_path, capsys):
    cfg = make_cfg(*SMALL, f"data.targets.cache_dir={tmp_path}")
    first = precompute(cfg)
    assert (first.misses, first.hits) == (3, 0)
    second = precompute(cfg)
    assert (second.misses, second.hits) == (0, 3)
    out = capsys.readouterr().out
    assert "3 weight maps computed, 0 reused" in out and str(tmp_path / "weightmaps") in out


def test_precompute_names_the_per_user_cache_by_default(make_cfg, capsys):
    """``data.targets.cache_dir=auto`` (the default) is shown as the folder it is."""
    precompute(make_cfg(*SMALL, "data.targets.cache_dir=auto"))
    user = Path(os.environ["XDG_CACHE_HOME"]) / "segunet"  # conftest's
    assert f"; cache: {user / 'weightmaps'}" in capsys.readouterr().out
    assert len(entries(user)) == 3


def test_a_default_training_run_writes_only_its_run_folder(tmp_path):
    """``segunet train data=folder`` with the default cache_dir: the weight maps go to the
    per-user cache folder, and the working folder gets the run folder alone."""
    data = tmp_path / "data"
    for seed in range(3):
        image, instances = synthetic_cells((64, 64), seed=seed)
        grey = np.clip(image * 60 + 100, 0, 255).astype(np.uint8)
        write_array(data / "images" / f"{seed}.tif", grey)
        write_array(data / "masks" / f"{seed}.tif", instances.astype(np.uint16))
    work = tmp_path / "work"
    work.mkdir()
    done = run_in_process(
        "train", "experiment=quickstart", "data=folder", f"data.path={data}",
        "data.val_fraction=0.34", "data.patch_size=[44,44]", "model.channels=[4,8]",
        "trainer.max_steps=1", "trainer.device=cpu", "logging.progress=false", cwd=work)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in work.iterdir()] == ["outputs"]
    assert len(entries(Path(os.environ["XDG_CACHE_HOME"]) / "segunet")) == 3


def test_precompute_command_runs(tmp_path):
    run = run_in_process("weightmaps", *SMALL, "data.targets.cache_dir=cache",
                         "data.targets.workers=-1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "weight maps computed" in run.stdout
    # Only the cache: no run folder, no .hydra, no log file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_map_of_nan_is_never_stored(tmp_path, monkeypatch):
    """Whatever goes wrong in the formula, the cache holds finite maps only."""
    x = cells(1)[0]
    monkeypatch.setattr(weightmaps_cache, "border_weight_map",
                        lambda *args, **kwargs: np.full(x.shape, np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        border_weight_maps([x], cache_dir=tmp_path)
    assert entries(tmp_path) == []


@pytest.mark.parametrize("where", ["cache", "cache/sub", "cache/weightmaps"])
def test_cache_folder_that_is_a_file_is_one_line_up_front(tmp_path, where):
    file = tmp_path / where.removesuffix("/sub").removesuffix("/weightmaps")
    if where == "cache/weightmaps":
        file = tmp_path / "cache" / "weightmaps"
        file.parent.mkdir()
    file.write_text("not a folder")
    run = run_in_process("weightmaps", *SMALL, f"data.targets.cache_dir={tmp_path / where}",
                         cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"segunet: error: the weight map cache folder data.targets.cache_dir={tmp_path / where} "
        f"cannot be made: {file} is a file; set data.targets.cache_dir to a folder (or null for "
        "no cache)"
    ]
    assert file.read_text() == "not a folder"


@pytest.mark.parametrize("override", [
    "w0=nan", "w0=-3", "w0=1e39", "sigma=nan", "sigma=0", "spacing=[-1,1]", "spacing=[1,1,1]",
    "workers=-7",
])
def test_weight_map_settings_out_of_range_are_one_line(tmp_path, override):
    """Today NaN, negative and huge values compute maps without a border term, or of NaN
    and inf, and cache them with exit 0. (The wording after the key is the range check's.)"""
    run = run_in_process("weightmaps", *SMALL, "data.targets.cache_dir=cache",
                         f"data.targets.{override}", cwd=tmp_path)
    assert run.returncode == 2, run.stdout
    (line,) = run.stderr.strip().splitlines()
    key = override.split("=")[0]
    assert line.startswith(f"segunet: error: data.targets.{key}="), line
    assert not (tmp_path / "cache").exists()


def test_precompute_shows_progress_over_the_objects_of_a_large_image(tmp_path, monkeypatch):
    """One image of 90,000 cells took minutes with nothing printed; its objects now have a
    bar (shown after PROGRESS_DELAY seconds: 0 here, so that the test waits for nothing)."""
    from segunet.data import weightmaps

    monkeypatch.setattr(weightmaps, "PROGRESS_DELAY", 0.0, raising=False)
    run = run_in_process("weightmaps", *SMALL, "data.targets.cache_dir=null", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert re.search(r"objects: +0%.*\| 0/\d+ ", run.stderr), run.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, which root can't write")
def test_cache_folder_that_cannot_be_made_is_one_line_naming_the_key(tmp_path):
    """Read-only file systems refuse it before any map is computed (a test running as root
    cannot make a read-only folder: /proc stands in)."""
    run = run_in_process("weightmaps", *SMALL, "data.targets.cache_dir=/proc/segunet-cache",
                         cwd=tmp_path)
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("segunet: error: cannot store weight maps in "
                           "data.targets.cache_dir=/proc/segunet-cache: "), line
    assert line.endswith("set data.targets.cache_dir to a writable folder, or null for no "
                         "cache"), line


def test_a_read_only_cache_that_holds_every_map_is_used(tmp_path, monkeypatch):
    x = cells(1)[0]
    expected = border_weight_maps([x], cache_dir=tmp_path)
    monkeypatch.setattr(Path, "mkdir", lambda *args, **kwargs: pytest.fail("writes"))
    got = border_weight_maps([x], cache_dir=tmp_path)
    np.testing.assert_array_equal(got[0], expected[0])
    assert stats.hits == 1


WORKER_SEMAPHORES = """
import multiprocessing, multiprocessing.resource_tracker as tracker, os, sys
multiprocessing.set_start_method("spawn", force=True)  # as in a pool worker
from segunet.data import weightmaps_cache
from tqdm import tqdm
registered = []
tracker.register = lambda name, kind: registered.append(kind)
weightmaps_cache._worker_start(os.getppid())
for _ in tqdm(range(3), disable=True):  # the bars a map of many objects shows
    pass
print(registered)
"""


def test_a_pool_worker_holds_no_semaphore_a_kill_would_leak():
    """Ctrl-C kills the workers mid-map. tqdm's bar in a worker had made a multiprocessing
    lock, registered with Python's resource tracker; killed, the worker never released it,
    and the tracker printed "There appear to be 2 leaked semaphore objects" after the
    command's one error line."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WORKER_SEMAPHORES], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
