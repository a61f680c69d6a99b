"""The key=value commands' shared runner: errors and Ctrl-C as one line."""

from __future__ import annotations

import signal

from segunet.args import run_command


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
