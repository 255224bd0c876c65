"""Whether the process recorded for a run is still alive: checked directly on this host, by its heartbeat elsewhere.

A process of this host is checked at once (its pid, and its start time against pid reuse). A process on another
host (a shared results folder on a cluster) cannot be checked from here: a running run writes a heartbeat to the
table every RUNTABLE_HEARTBEAT_S seconds (default 30), and one whose heartbeat is older than RUNTABLE_LEASE_S seconds
(default 300) is dead wherever it ran.
"""
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HEARTBEAT_S = 30.0
DEFAULT_LEASE_S = 300.0


@dataclass(frozen=True)
class Process:
    """Where a run runs: host, pid, a token that tells a reused pid apart, and its last heartbeat (epoch seconds)."""
    host: str
    pid: int
    token: str | None
    heartbeat: float | None = None

    def describe(self):
        return f"{self.host} (pid {self.pid})"


def this_process():
    """The Process of the caller, beating now."""
    pid = os.getpid()
    return Process(socket.gethostname(), pid, process_token(pid), time.time())


def is_gone(process, now=None):
    """True when `process` is known to have ended: gone from this host, or silent past the lease on another."""
    if process is None:
        return False
    if process.host != socket.gethostname():
        now = time.time() if now is None else now
        if process.heartbeat is not None and not _is_number(process.heartbeat):
            return True  # a damaged row (a text where the time belongs) holds nothing alive
        return process.heartbeat is not None and now - process.heartbeat > lease()
    if not isinstance(process.pid, int) or isinstance(process.pid, bool) or not 0 < process.pid < 2**22:
        return True  # no process has this pid (0 and -1 would ask the whole group, or every process, instead)
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process of another user holds the pid: compare its start time below
    if is_zombie(process.pid):  # ended, its parent has not reaped it yet: it will never write again
        return True
    return process.token is not None and process_token(process.pid) != process.token


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_zombie(pid):
    """Whether process `pid` has ended and waits for its parent to collect its exit status (Linux; False elsewhere)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def heartbeat_interval():
    return _seconds("RUNTABLE_HEARTBEAT_S", DEFAULT_HEARTBEAT_S)


def lease():
    return _seconds("RUNTABLE_LEASE_S", DEFAULT_LEASE_S)


def process_token(pid):
    """Boot ID and start time of process `pid` (Linux): tells a pid reused after a reboot or a restart apart."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
        start_ticks = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[19]
        return f"{boot_id}:{start_ticks}"
    except (OSError, IndexError):
        return None


def _seconds(variable, default):
    try:
        value = float(os.environ.get(variable, default))
    except ValueError:
        return default
    return value if value > 0 else default
