"""The exception types main.py turns into one line and an exit code: mistakes a user can fix, and a full disk."""
import errno
import shutil
import sqlite3
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input or environment: main.py prints the message alone and exits with code 2."""


class MissingKey(UserError):
    """The config lacks a key a module reads: the launch adds which config file has it (the experiment's own)."""

    def __init__(self, key):
        super().__init__(f"the config has no '{key}', which this experiment reads")
        self.key = key


class DiskFull(UserError):
    """The disk that holds results/ filled up: what was written before stays, the launch stops with one line."""

    def __init__(self, what, advice="free some space and launch again"):
        super().__init__(f"{what}; {advice}")
        self.what = what


class NondeterministicOp(UserError):
    """Deterministic mode met an operation that has no deterministic implementation on the run's device."""


class Pruned(BaseException):
    """A search's pruner stopped a trial's run after an epoch: the run keeps all it logged and is marked pruned."""


class Terminated(BaseException):
    """SIGTERM arrived (cluster walltime, scancel, kill): unwinds like Ctrl-C so that the run is marked failed."""


class OutputClosed(KeyboardInterrupt):
    """The reader of a run's output left (`python main.py ... | head`): a stop like Ctrl-C (the run is interrupted and
    resumable), with the exit code of a process that SIGPIPE ended, 141."""


def one_line(message):
    """`message` as one printable line: line breaks and other control characters that a user's input brought into it
    are written as escapes (\\n, \\x0c)."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)


def disk_full(folder, what, needed):
    """The DiskFull error for writing `what` (`needed` bytes, or None if unknown) into `folder`."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    need = f"needed {_size(needed)}" if needed else "needed more space"
    left = f" ({_size(free)} free)" if free is not None else ""
    return DiskFull(f"the disk holding {as_seen_from_here(folder)} is full{left}: writing {what} {need}, nothing "
                    f"written before was lost")


def as_seen_from_here(path):
    """`path` as a message names it: relative to the launch folder when it lies inside it (results/1), else absolute."""
    path = Path(path).absolute()
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def is_disk_full(error):
    """True for the errors a full disk raises: ENOSPC/EDQUOT from the OS, SQLITE_FULL from the run table."""
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL if code is not None else "full" in str(error)
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _size(count):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
