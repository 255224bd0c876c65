"""Ctrl-C and SIGTERM, as main.py handles them once a launch is under way.

The first one raises KeyboardInterrupt or Terminated where the program is, so that a run unwinds and is marked
failed with all it logged; the later ones are ignored, so that the unwinding and the interpreter's exit finish
without a traceback. Where an exception would leave the process broken (one raised inside torch's import can abort
the interpreter), `stops_held()` notes the signal and raises it once that code is done. A library may swallow what
a signal raises (torch's import swallows a failed import of numpy) or turn it into an error of its own (matplotlib's
colour maps), so the stop is remembered too: the training loops and the start of a run raise it again
(`raise_if_stopped`), and `stop_behind(error)` tells what an error stands for.

The record is the process's, as its signal handlers are; `stop_on_signals()` installs them and clears it.
"""
import signal
from contextlib import contextmanager

from utils.errors import Terminated

_received = []  # the signal that stopped this process, once one came
_held = []  # non-empty while stops are held


def stop_on_signals() -> None:
    """From now on, Ctrl-C and SIGTERM stop the process as the module says (Ctrl-C even where SIGINT was ignored)."""
    _received.clear()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def _stop(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _received.append(signum)
    if not _held:
        raise _error(signum)


@contextmanager
def stops_held():
    """Within it, a stop signal is noted, not raised; it is raised when the block ends. For code that an exception
    raised at an arbitrary line would break, as importing torch for the first time."""
    _held.append(True)
    try:
        yield
    finally:
        _held.pop()
    raise_if_stopped()


def _error(signum) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def raise_if_stopped() -> None:
    """Raise the stop again if a signal came and what it raised was swallowed; cheap enough for every step."""
    if _received:
        raise _error(_received[0])


def exit_code(stop: BaseException) -> int:
    """The shell's exit code for a stop: 130 for Ctrl-C (KeyboardInterrupt), 143 for SIGTERM (Terminated)."""
    return 130 if isinstance(stop, KeyboardInterrupt) else 143


def stop_behind(error: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Terminated that `error` stands for: itself if it is one, the signal's if a signal
    came before it (a library turned the stop into an error of its own), else None."""
    if isinstance(error, (KeyboardInterrupt, Terminated)):
        return error
    return _error(_received[0]) if _received else None
