"""The CPU cores this process may use, without torch (a refused launch must not import it)."""
import os


def usable_cores() -> int:
    """The CPU cores this process may run on (a cluster job or `taskset` may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def capped_workers(requested: int) -> int:
    """`requested` data loader worker processes, at most one a usable core: more only compete (and each of a run's
    loaders starts its own)."""
    return min(requested, usable_cores())
