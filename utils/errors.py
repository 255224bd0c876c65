"""The exception types main.py turns into one line and an exit code: mistakes a user can fix, and a full disk."""
import errno
import os
import resource
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
    """The disk that holds results/ filled up (its space, its inodes, or this process's file size limit): what was
    written before stays, the launch stops with one line. `remedy` says what makes room."""

    def __init__(self, what, remedy="free some space", then="launch again"):
        super().__init__(f"{what}; {remedy}, then {then}")
        self.what, self.remedy = what, remedy


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


def no_free_inodes(folder):
    """Whether the disk holding `folder` has space but no inode left for a new file (SQLite cannot open its journal)."""
    try:
        disk = os.statvfs(folder)
    except OSError:
        return False
    return disk.f_files > 0 and disk.f_favail == 0


def file_size_limited():
    """Whether this process may write files only up to a size (`ulimit -f`)."""
    return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY


def disk_full(folder, what, needed):
    """The DiskFull error for writing `what` (`needed` bytes, or None if unknown) into `folder`: a disk with no
    space, one with no inodes left, or a file past this process's size limit (`ulimit -f`), as the disk tells."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    need = f"needed {_size(needed)}" if needed else "needed more space"
    where = as_seen_from_here(folder)
    if no_free_inodes(folder):
        return DiskFull(f"the disk holding {where} has no free inodes (df -i): writing {what} needed a file, nothing "
                        f"written before was lost", "delete files on it (or move results/ to another disk)")
    if file_size_limited() and (free is None or free > (needed or 0)):
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return DiskFull(f"writing {what} in {where} passed this process's file size limit of {_size(limit)} "
                        f"(ulimit -f), nothing written before was lost", "raise the limit (ulimit -f unlimited)")
    left = f" ({_size(free)} free)" if free is not None else ""
    return DiskFull(f"the disk holding {where} is full{left}: writing {what} {need}, nothing written before was lost")


def as_seen_from_here(path):
    """`path` as a message names it: relative to the launch folder when it lies inside it (results/1), else absolute."""
    path = Path(path).absolute()
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def is_disk_full(error, folder=None):
    """True for the errors a full disk raises: ENOSPC/EDQUOT (no space or inodes) and EFBIG (past `ulimit -f`) from the
    OS, SQLITE_FULL from the run table; and, writing into `folder`, SQLite's failure to open its journal when the disk
    has no inode left for it."""
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        if code is None:
            return "full" in str(error)
        if folder is not None and code & 0xFF in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR) \
                and no_free_inodes(folder):
            return True
        # SQLite reports a write cut by the file size limit (EFBIG) as an I/O error; with no limit it is one.
        return code == sqlite3.SQLITE_FULL or (code & 0xFF == sqlite3.SQLITE_IOERR and file_size_limited())
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _size(count):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
