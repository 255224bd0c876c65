"""Whether the process recorded for a run is still alive: checked directly on this host."""
import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Process:
    """Where a run runs: host, pid, and a token that tells a reused pid apart."""
    host: str
    pid: int
    token: str | None

    def describe(self):
        return f"{self.host} (pid {self.pid})"


def this_process():
    """The Process of the caller."""
    pid = os.getpid()
    return Process(socket.gethostname(), pid, process_token(pid))


def is_gone(process):
    """True when `process` is known to have ended; a process of another host cannot be checked from here."""
    if process is None or process.host != socket.gethostname():
        return False
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process of another user holds the pid: compare its start time below
    return process.token is not None and process_token(process.pid) != process.token


def process_token(pid):
    """Boot ID and start time of process `pid` (Linux): tells a pid reused after a reboot or a restart apart."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        start_ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        return f"{boot_id}:{start_ticks}"
    except (OSError, IndexError):
        return None
