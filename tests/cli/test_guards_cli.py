"""The ``segunet train`` command line: values Hydra's override grammar cannot read bare, paths
with commas, quotes and letters outside ASCII, in train and in predict alike."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import tifffile
import yaml
from helpers import run_in_process, save_tiny_checkpoint

from segunet.config.compose import config_dir

FOLDER = ["experiment=quickstart", "data=folder", "--cfg", "job"]


def typed_in_bash(text: str) -> str:
    """The one argument bash passes on for ``text`` typed on its command line."""
    done = subprocess.run(["bash", "-c", f"printf %s {text}"], capture_output=True, text=True,
                          check=True)
    return done.stdout


def data_path(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["data"]["path"]


@pytest.mark.parametrize(
    "path", ["/x/q'uote", "/x/a=b", "/x/[a]", "/x/a#b", "/x/ü'b", '/x/a"b$c`d\\', "/x/a\\'b"]
)
def test_a_value_hydra_cannot_read_is_one_line_that_shows_the_quoting(tmp_path, path):
    done = run_in_process("train", *FOLDER, f"data.path={path}", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    prefix = f"segunet: error: cannot read the override data.path={path}: "
    assert lines[0].startswith(prefix) and "must be quoted, inside the shell's quotes: " in lines[0]
    # What it says to type, typed into bash, gives Hydra the very path.
    suggestion = lines[0].rsplit("inside the shell's quotes: ", 1)[1]
    argument = typed_in_bash(suggestion)
    assert data_path(run_in_process("train", *FOLDER, argument, cwd=tmp_path)) == path


def test_a_comma_outside_a_sweep_says_how_to_quote_it(tmp_path):
    done = run_in_process("train", *FOLDER, "data.path=/x/a,b", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "segunet: error: data.path=/x/a,b: a comma separates the values of a sweep, run with "
        "-m; for a list write data.path=[/x/a,b], for text that holds a comma quote it: "
        "\"data.path='/x/a,b'\""
    ]
    assert data_path(run_in_process("train", *FOLDER, "data.path='/x/a,b'", cwd=tmp_path)) == (
        "/x/a,b"
    )


@pytest.mark.parametrize("path", ["/x/ünï", "/données/été 2024/run", "/x/日本"])
def test_a_path_with_letters_outside_ascii_works_bare(tmp_path, path):
    done = run_in_process("train", *FOLDER, f"data.path={path}", cwd=tmp_path)
    assert data_path(done) == path


def test_a_run_folder_with_letters_outside_ascii_is_used(tmp_path):
    folder = tmp_path / "été"
    done = run_in_process(
        "train", "experiment=quickstart", "model.channels=[4,8,16]", "data.n_train=1",
        "data.n_val=1", "data.shape=[96,96]", "data.patch_size=[76,76]", "trainer.batch_size=1",
        "trainer.device=cpu", "logging.progress=false", "trainer.max_steps=1",
        f"hydra.run.dir={folder}", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (folder / "checkpoints" / "last.pt").is_file()


def test_predict_takes_paths_bare_or_quoted_as_train_does(tmp_path):
    """The same command-line habit works in both: a path typed bare, or quoted for Hydra."""
    checkpoint = save_tiny_checkpoint(tmp_path / "run")
    folder = tmp_path / "a,b ünï q'uote"
    folder.mkdir()
    tifffile.imwrite(folder / "x.tif", np.random.default_rng(0).random((40, 40), np.float32))
    bare = run_in_process("predict", f"checkpoint={checkpoint}", f"input={folder}",
                          f"output={tmp_path / 'bare'}", cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    # As train takes them: inside Hydra's quotes, its own quotes escaped with a backslash.
    quoted = [f"{key}='" + str(path).replace("'", "\\'") + "'"
              for key, path in (("input", folder), ("output", tmp_path / "quoted,'1'"))]
    done = run_in_process("predict", f"checkpoint={checkpoint}", *quoted, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (tmp_path / "bare").iterdir())
    assert written and sorted(p.name for p in (tmp_path / "quoted,'1'").iterdir()) == written


SWEEP = ["experiment=quickstart", "model.channels=[4,8,16]", "data.n_train=1", "data.n_val=1",
         "data.shape=[96,96]", "data.patch_size=[76,76]", "trainer.batch_size=1",
         "trainer.device=cpu", "logging.progress=false", "trainer.max_steps=1"]


def test_a_sweep_runs_every_job_and_lists_the_failed_ones(tmp_path):
    missing = "nope.pt"  # relative: a swept path's slashes would nest the job's folder
    sweep = tmp_path / "sweep"
    done = run_in_process("train", "-m", *SWEEP, f"trainer.init_from={missing},null",
                          f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 2
    # Job 0 failed; job 1 still ran to the end.
    (ok,) = sweep.glob("1_*")
    assert (ok / "checkpoints" / "last.pt").is_file()
    (failed,) = sweep.glob("0_*")
    assert not (failed / "checkpoints").exists()
    reason = f"no checkpoint at {missing}: pass a .pt file or a run folder containing " \
             "checkpoints/last.pt"
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert f"segunet: error: sweep job #0: {reason}" in lines
    assert lines[-2:] == [
        f"segunet: error: sweep job #0 ({failed}) failed: {reason}",
        "segunet: error: 1 of 2 sweep jobs failed (listed above); the others ran to the end",
    ]


def test_a_sweep_without_failures_ends_with_status_0(tmp_path):
    done = run_in_process("train", "-m", *SWEEP, "trainer.seed=0,1",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "sweep").glob("*/checkpoints/last.pt"))) == 2
    assert "error" not in done.stderr


def test_a_sweep_into_a_used_sweep_folder_leaves_the_refused_jobs_record(tmp_path):
    """Paths stay out of the jobs' folder names, so a second sweep with another path names
    the first one's job folder. That job is refused (it holds checkpoints), but Hydra had
    already rewritten its .hydra record: it then named a cache the checkpoints never used.
    A new job of the same sweep still gets its record."""
    sweep = tmp_path / "sweep"
    first = run_in_process("train", "-m", *SWEEP, f"data.targets.cache_dir={tmp_path}/a",
                           "trainer.seed=0", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (old,) = sweep.glob("0_*")
    before = {p.name: p.read_bytes() for p in (old / ".hydra").iterdir()}
    second = run_in_process("train", "-m", *SWEEP, f"data.targets.cache_dir={tmp_path}/b",
                            "trainer.seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert second.returncode == 2
    assert "already holds another run's checkpoints" in second.stderr
    assert {p.name: p.read_bytes() for p in (old / ".hydra").iterdir()} == before
    (new,) = sweep.glob("1_*")
    overrides = yaml.safe_load((new / ".hydra" / "overrides.yaml").read_text())
    assert f"data.targets.cache_dir={tmp_path}/b" in overrides


def test_ctrl_c_in_a_sweep_stops_the_sweep(tmp_path, monkeypatch):
    import os
    import signal

    from segunet.train import trainer as train

    def loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train, "build_trainer", loading)
    try:
        done = run_in_process("train", "-m", *SWEEP, "trainer.seed=0,1",
                              f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "segunet: error: interrupted before training started; no checkpoint was saved"
    )
    assert not list((tmp_path / "sweep").glob("1_*"))  # the second job never started


@pytest.mark.parametrize("flag", ["--version", "-V", "version"])
def test_version(tmp_path, flag):
    from importlib.metadata import version

    done = run_in_process(flag, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"segunet {version('segunet')}"


def test_a_mistyped_command_names_the_close_one(tmp_path):
    done = run_in_process("trian", "experiment=quickstart", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        "segunet: error: unknown command 'trian': did you mean train?"
    )


@pytest.mark.parametrize("override", ["hydra.run.dir=", "trainer.resume=", "data.path="])
def test_an_override_with_no_value_is_refused_before_anything_runs(tmp_path, override):
    """``hydra.run.dir=`` trained into the working folder; ``trainer.resume=`` started a new
    run; ``data.path=`` failed later with 'set data.path (now )'."""
    setup = ["experiment=quickstart", "data=folder"] if override == "data.path=" else SWEEP
    done = run_in_process("train", *setup, override, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"segunet: error: {override} has no value: give {override[:-1]} one, or leave it out "
        "(an unset shell variable in it leaves it empty)"
    ]
    assert not any(tmp_path.iterdir())  # nothing written, in the working folder least of all


def test_empty_text_stays_possible_where_it_is_the_default(tmp_path):
    done = run_in_process("train", *FOLDER, "data.path=x", "data.label_suffix=", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["data"]["label_suffix"] == ""


def test_a_swept_path_keeps_each_job_folder_inside_the_sweep_folder(tmp_path):
    """Job folders are named ``<n>_<overrides>``: a path's slashes nested them, and its
    ``..`` led them out of the sweep folder."""
    sweep = tmp_path / "a" / "sweep"
    escape = "../../../../outside/x.pt"
    done = run_in_process("train", "-m", *SWEEP, f"trainer.init_from={escape},null",
                          f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 2  # job 0 has no such checkpoint
    records = sorted(tmp_path.rglob(".hydra"))
    assert [r.parent.parent for r in records] == [sweep, sweep]
    assert sorted(r.parent.name.split("_")[0] for r in records) == ["0", "1"]
    assert (records[1].parent / "checkpoints" / "last.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_sweep_with_cfg_is_one_line(tmp_path):
    """Hydra raised a ValueError (a traceback) for -m with --cfg."""
    done = run_in_process("train", "-m", "trainer.seed=0,1", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "segunet: error: -m and --cfg together: give one (--cfg job prints one configuration: "
        "leave out -m and give one value per key)"
    ]


def test_a_range_sweep_outside_m_says_to_add_it(tmp_path):
    done = run_in_process("train", "trainer.seed=range(0,3)", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "segunet: error: trainer.seed=range(0,3) is a sweep: run it with -m"
    ]


def test_a_mistyped_group_option_names_the_close_one_without_the_search_path(tmp_path):
    done = run_in_process("train", "experiment=quickstat", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 2
    options = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
    assert done.stderr.strip().splitlines() == [
        "segunet: error: Could not find 'experiment/quickstat': did you mean "
        f"experiment=quickstart? (experiment has {', '.join(options)})"
    ]


def test_the_hydra_flags_read_before_hydra_are_hydras_own():
    """segunet reads Hydra's flags with a copy of Hydra's private parser: the two agree on
    every flag, its choices and whether it takes a value."""
    from hydra._internal.utils import get_args_parser

    from segunet.cli.overrides import hydra_parser

    def flags(parser):
        return {tuple(a.option_strings): (a.choices, a.nargs, a.const)
                for a in parser._actions if a.option_strings and a.dest != "version"}

    assert flags(hydra_parser()) == flags(get_args_parser())


def test_train_version_is_hydras_said_once(tmp_path):
    """Reading the flags printed Hydra's version, then Hydra printed it again."""
    import hydra

    done = run_in_process("train", "--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"Hydra {hydra.__version__}"]
