"""The key=value commands: their arguments through the typed layer, their --help, and
the shared runner (errors and Ctrl-C as one line)."""

from __future__ import annotations

import ctypes
import dataclasses
import signal
import typing
from pathlib import Path

import pytest

from segunet.cli import evaluate, export, tune
from segunet.cli import predict as predict_cli
from segunet.cli.predict import PredictConfig
from segunet.config.args import parse, run_command
from segunet.errors import SegunetError


def test_ctrl_c_is_one_line_and_a_second_one_does_not_cut_the_clean_up(capsys):
    cleaned = []

    def body() -> None:
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during the work
        finally:
            signal.raise_signal(signal.SIGINT)  # impatient: again while cleaning up
            cleaned.append(True)

    assert run_command(body, "usage", []) == 2
    assert cleaned == [True]
    err = capsys.readouterr().err
    assert err.startswith("segunet: error: interrupted") and err.count("\n") == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_ctrl_c_that_lands_in_a_finaliser_still_stops_the_command(capsys):
    """The handler's raise landed in a weakref callback of an import lock once (a clean-clone
    CI run), where Python prints it as 'Exception ignored' and goes on: predict finished and
    ended with exit 0 after the user's Ctrl-C."""

    class Finalised:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)

    def body() -> None:
        Finalised()  # collected at once: the raise lands in __del__

    assert run_command(body, "usage", []) == 2
    err = capsys.readouterr().err
    assert err.startswith("segunet: error: interrupted") and err.count("\n") == 1, err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_ctrl_c_inside_code_run_from_a_string_leaves_no_unhandled_mark(capsys):
    """CPython marks a bare KeyboardInterrupt that passes through code run from a string (a
    dataclass defined during a lazy import, as zarr's are) as unhandled and, though the
    command handled it, ends the process by SIGINT at exit: status -2 instead of 2. The
    commands' Ctrl-C is a subclass, which CPython does not mark."""
    seen = []

    def body() -> None:
        try:
            exec("import signal; signal.raise_signal(signal.SIGINT)")
        except KeyboardInterrupt as e:
            seen.append((type(e), unhandled_mark()))
            raise

    assert run_command(body, "usage", []) == 2
    assert "interrupted" in capsys.readouterr().err
    (kind, mark), = seen
    assert kind is not KeyboardInterrupt and issubclass(kind, KeyboardInterrupt)
    assert mark in (0, None)


def unhandled_mark() -> int | None:
    """CPython's flag of an unhandled KeyboardInterrupt, where it is a symbol (3.10, 3.11)."""
    try:
        return ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value
    except ValueError:
        return None


def test_values_are_yaml_but_text_stays_as_typed_and_lists_take_commas():
    options = parse(PredictConfig, ["checkpoint=run", "input=*.tif", "output=2025-01-01",
                                    "tile=92", "outputs=labels,instances", "tta=null",
                                    "instances.foreground_classes=[1, 2]", "overlap=0.5"],
                    "predict")
    assert (options.input, options.output, options.tile) == ("*.tif", Path("2025-01-01"), 92)
    assert options.outputs == ["labels", "instances"] and options.tta is None
    assert options.instances.foreground_classes == [1, 2] and options.overlap == 0.5
    assert parse(PredictConfig, ["checkpoint=a", "input=b", "output=c", "tile=92,60"],
                 "predict").tile == (92, 60)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["input=a"], "missing output=..."),
        (["input=a", "output=b"], "give checkpoint=<file or run folder> or model=<nuclei> (a "
         "model that ships with segunet), not neither"),
        (["checkpoint"], "expected key=value, got 'checkpoint'; keys: checkpoint, model, input,"),
        (["threshold=0.3"], "unknown key 'threshold': did you mean instances.threshold? (keys:"),
        (["tile=1", "tile=2"], "'tile' given twice"),
        (["tta=maybe"], "tta='maybe' is not valid: expected true or false or null"),
        (["batch_size=null"], "batch_size=null is not valid: expected int"),
        (["tile=[1,2"], "tile='[1,2' is not valid: expected a list of int or null"),
        (["format=png"], "format='png' is not valid: expected one of tif, tiff, zarr"),
        (["instances.method=magic"], "instances.method='magic' is not valid: expected one of "
         "auto, components, watershed"),
        (["instances.h=-1"], "instances.h=-1.0 is not valid: expected h > 0"),
    ],
)
def test_a_bad_argument_is_one_line_naming_the_key_and_what_it_takes(argv, expected):
    alone = "missing" in expected or "not neither" in expected  # argv says all
    given = [] if alone else ["checkpoint=a", "input=b", "output=c"]
    with pytest.raises(SegunetError) as info:
        parse(PredictConfig, [*given, *argv], "predict")
    assert str(info.value).startswith(f"segunet predict: {expected}")


@pytest.mark.parametrize(
    ("command", "config", "defaults"),
    [
        (predict_cli, predict_cli.PredictConfig,
         ["checkpoint (null)", "model (null)", "tile (null)", "batch_size (8)",
          "outputs (probabilities,labels,instances)", "format (tif)", "overlap (0.25)",
          "instances.method (auto)", "instances.min_distance (3)"]),
        (export, export.ExportConfig,
         ["checkpoint (null)", "model (null)", "format (onnx)", "output (null)", "opset (17)",
          "verify (true)", "atol (0.0001)"]),
        (evaluate, evaluate.EvaluateConfig,
         ["pred (required)", "gt (required)", "out (auto)", "overwrite (false)", "kind (auto)",
          "num_classes (null)", "pred_suffix (auto)", "gt_suffix ()", "slices (false)"]),
        (tune, tune.TuneCommandConfig, ["checkpoint (required)", "tta (false)", "device (auto)"]),
    ],
)
def test_help_lists_every_key_with_its_default(command, config, defaults, capsys):
    assert command.run(["--help"]) == 0
    out = capsys.readouterr().out
    listed = out.split("keys (default):\n")[1].splitlines()
    keys = [line[2:].split(" (")[0] for line in listed if line[2:3].strip()]
    assert keys == leaf_keys(config)
    for default in defaults:
        assert f"\n  {default}" in out, default


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """The dotted keys of a command's arguments, from its dataclass."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if f.init and dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        elif f.init:
            keys.append(prefix + f.name)
    return keys


@pytest.mark.parametrize("command", ["predict", "export", "train"])
def test_help_into_a_pipe_closed_early_is_quiet(command, tmp_path):
    """`segunet predict --help | head -1`: the reader leaves; no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the help is written
    with open(tmp_path / "err", "wb") as err:
        done = subprocess.run([sys.executable, "-m", "segunet.cli", command, "--help"],
                              stdout=write, stderr=err, check=False)
    os.close(write)
    assert done.returncode == 1
    assert (tmp_path / "err").read_bytes() == b""
