"""The CPU cores and the memory this process may use, without torch (a refused launch must not import it)."""
import os

from utils.errors import UserError

TRAINING_BYTES_PER_PARAMETER = 16  # float32 weights, their gradients and AdamW's two moments


def usable_cores() -> int:
    """The CPU cores this process may run on (a cluster job or `taskset` may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def capped_workers(requested: int) -> int:
    """`requested` data loader worker processes, at most one a usable core: more only compete (and each of a run's
    loaders starts its own)."""
    return min(requested, usable_cores())


def check_fits_in_memory(parameters: int, what: str, activations: int = 0, of_what: str = ""):
    """Refuse, before a run is registered, a model whose training state (and the `activations` bytes a batch holds,
    `of_what`) would not fit in this machine's memory (a size that would otherwise fail mid-run, in the allocator or in
    a tensor's storage)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    needed = parameters * TRAINING_BYTES_PER_PARAMETER + activations
    if needed > total:
        held = f" and {activations / 2**30:,.1f} GiB of {of_what} a batch" if activations else ""
        raise UserError(f"{what} has {parameters:,} parameters{held}: training takes {needed / 2**30:,.1f} GiB, more "
                        f"than this machine's {total / 2**30:,.1f} GiB of memory; make it smaller")
