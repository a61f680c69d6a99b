"""Ctrl-C (SIGINT) and SIGTERM in training: stop cleanly, never mid-step or mid-save.

SIGTERM is what a cluster scheduler sends before preempting a job: it stops training as Ctrl-C
does (a checkpoint is saved, then one line says how to resume). So does SIGUSR2, which
submitit (Hydra's SLURM launcher) asks SLURM to send before a job's time limit: without this
it would requeue the job, which does not resume by itself, losing the steps since the last
checkpoint. A signal that lands while an optimiser step is being committed (optimiser,
scaler, scheduler, step count) is held until the step is whole, so a checkpoint never pairs
the weights of one step with the count of another; while the final checkpoint is written,
further signals are ignored.

Python delivers signals to the main thread only; elsewhere these helpers change nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from types import FrameType
from typing import Any

#: The signals that stop training as a scheduler's do (SIGUSR2 where the system has it).
STOPS = (signal.SIGTERM, *((signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ()))
SIGNALS = (signal.SIGINT, *STOPS)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (or SIGUSR2): ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


def describe(e: BaseException) -> str:
    """How a stop reads in segunet's one line: "terminated (SIGTERM)" or "interrupted"."""
    if isinstance(e, Terminated):
        return f"terminated ({signal.Signals(e.signum).name})"
    return "interrupted"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, as segunet's own SIGINT handlers raise it. A subclass on purpose: CPython
    marks a bare KeyboardInterrupt that passes through code run from a string (a dataclass
    being defined during a lazy import) as unhandled, and after segunet has handled it the
    process still ends by SIGINT at exit (status -2, not 2)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated(signum) if signum in STOPS else KeyboardInterrupt()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _handling(handlers: Mapping[int, Any]) -> Iterator[None]:
    """Within the block, ``handlers`` (signal -> handler) replace the current ones, which
    come back after it; off the main thread, where Python sets none, nothing changes."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def sigterm_interrupts() -> AbstractContextManager[None]:
    """Within the block, SIGTERM (and SIGUSR2) raise :class:`Terminated` (a
    KeyboardInterrupt)."""
    return _handling(dict.fromkeys(STOPS, _raise_terminated))


def interruptible() -> AbstractContextManager[None]:
    """Within the block, Ctrl-C raises :class:`Interrupted` and SIGTERM :class:`Terminated`,
    once: further ones are ignored until the block is left, so that the clean-up a command
    does on its way out (worker processes killed, one line printed) is not cut short. A
    signal already ignored (a background job's Ctrl-C) stays ignored."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum) if signum in STOPS else Interrupted

    return _handling({s: stop for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN})


@contextmanager
def blocked_in_children() -> Iterator[None]:
    """Processes started within the block begin with SIGINT and SIGTERM blocked, until they
    set their own handlers and unblock them (:func:`unblock`): a signal mask is inherited
    through fork and exec, so a Ctrl-C sent to the process group while a child is still
    importing waits instead of printing the child's traceback. Only this thread blocks
    them; Python's other threads still take them for this process."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock() -> None:
    """Undo :func:`blocked_in_children` in a child, once it has set its handlers."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then raise the first of them."""
    caught: list[int] = []
    with _handling({s: lambda signum, frame: caught.append(signum) for s in SIGNALS}):
        yield
    if caught:
        raise _interrupt(caught[0])


@contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then send the first of them again,
    to whatever handles it after the block (a code path whose interruption would leave a
    half-built object, such as a progress bar whose ``__del__`` then prints a traceback)."""
    caught: list[int] = []
    with _handling({s: lambda signum, frame: caught.append(signum) for s in SIGNALS}):
        yield
    if caught:
        signal.raise_signal(caught[0])


def ignored() -> AbstractContextManager[None]:
    """Ignore SIGINT and SIGTERM within the block (a second Ctrl-C while saving)."""
    return _handling({s: signal.SIG_IGN for s in SIGNALS})


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


def ctrl_c_interrupts() -> AbstractContextManager[None]:
    """Within the block, Ctrl-C raises :class:`Interrupted` rather than a bare
    KeyboardInterrupt (which, landing in code run from a string, ends the process by SIGINT
    even once handled)."""
    return _handling({signal.SIGINT: _raise_interrupted})
