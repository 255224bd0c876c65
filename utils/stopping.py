"""Ctrl-C and SIGTERM, as main.py handles them once a launch is under way.

The first one raises KeyboardInterrupt or Terminated where the program is, so that a run unwinds and is marked
failed with all it logged; the later ones are ignored, so that the unwinding and the interpreter's exit finish
without a traceback. Where an exception would leave the process broken or inconsistent, `stops_held()` notes the
signal and raises it once that code is done: importing torch (a stop in the middle of its import can abort the
interpreter), creating the run table, and a training pass, whose loop asks `pending_stop()` between two steps, where
stopping leaves the model, the optimizer and every random state consistent enough to be written as a resume point.

A library may swallow what a signal raises (torch's import swallows a failed import of numpy) or turn it into an
error of its own (matplotlib's colour maps), so the stop is remembered too: the training loops and the start of a run
raise it again (`raise_if_stopped`), and `stop_behind(error)` tells what an error stands for. Once main.py has its
exit code, `ignore_stops()` makes the interpreter's exit immune to them: Python puts the default handlers back while
it shuts down, and a signal landing then would kill the process instead of letting it exit with its code.

The record is the process's, as its signal handlers are; `stop_on_signals()` installs them and clears it.
"""
import signal
from contextlib import contextmanager

from utils.errors import OutputClosed, Terminated

OUTPUT_CLOSED = signal.SIGPIPE  # Python ignores the signal itself; utils/output.py notes the closed pipe as a stop

_received: list[int] = []  # the signal that stopped this process, once one came
_held: list[bool] = []  # non-empty while stops are held


def stop_on_signals() -> None:
    """From now on, Ctrl-C and SIGTERM stop the process as the module says (Ctrl-C even where SIGINT was ignored)."""
    _received.clear()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def ignore_stops() -> None:
    """From now on, Ctrl-C and SIGTERM are ignored: the process is on its way out with the exit code it chose."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def output_closed() -> None:
    """The run's output pipe closed: a stop, held or raised as Ctrl-C's would be, so that the run stops at a step's
    end, writes its resume point and exits non-zero."""
    _stop(OUTPUT_CLOSED, None)


def _stop(signum, frame):
    ignore_stops()
    _received.append(signum)
    if not _held:
        raise _error(signum)


@contextmanager
def stops_held():
    """Within it, a stop signal is noted, not raised; it is raised when the block ends, unless the code inside polled
    `pending_stop()` and raised it first. For code that an exception raised at an arbitrary line would break."""
    _held.append(True)
    try:
        yield
    finally:
        _held.pop()
    raise_if_stopped()


def _error(signum) -> BaseException:
    if signum == OUTPUT_CLOSED:
        return OutputClosed()
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def pending_stop() -> BaseException | None:
    """The KeyboardInterrupt or Terminated of a stop signal that came (held, or swallowed by a library), else None:
    what a loop that holds stops raises once it is somewhere consistent."""
    return _error(_received[0]) if _received else None


def raise_if_stopped() -> None:
    """Raise the stop again if a signal came and what it raised was swallowed (or held); cheap enough for every
    step."""
    stop = pending_stop()
    if stop is not None:
        raise stop


def exit_code(stop: BaseException) -> int:
    """The shell's exit code for a stop: 130 for Ctrl-C (KeyboardInterrupt), 143 for SIGTERM (Terminated), 141 for a
    closed output pipe (OutputClosed)."""
    if isinstance(stop, OutputClosed):
        return 141
    return 130 if isinstance(stop, KeyboardInterrupt) else 143


def stop_behind(error: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Terminated that `error` stands for: itself if it is one, the signal's if a signal
    came before it (a library turned the stop into an error of its own), else None."""
    if isinstance(error, (KeyboardInterrupt, Terminated)):
        return error
    return pending_stop()
