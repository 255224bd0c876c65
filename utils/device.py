"""Choosing where a run computes, with how many CPU threads, and how its host memory is reused."""
import ctypes
import sys

import torch

from utils.cores import usable_cores


def pick_device(force_cpu: bool = False, index: int = 0) -> torch.device:
    """The accelerator torch finds (CUDA, Apple's MPS, Intel's XPU; device `index` of it, a torchrun process's local
    rank) when there is one and `force_cpu` is false, else the CPU."""
    if force_cpu:
        return torch.device("cpu")
    accelerator = _accelerator()
    if accelerator is None:
        return torch.device("cpu")
    return torch.device(accelerator, index) if accelerator in ("cuda", "xpu") else torch.device(accelerator)


def _accelerator():
    """The type of the accelerator this process can use ("cuda", "mps", "xpu", ...), or None."""
    if hasattr(torch, "accelerator"):  # torch 2.6 and later
        return torch.accelerator.current_accelerator().type if torch.accelerator.is_available() else None
    return "cuda" if torch.cuda.is_available() else None


NONDETERMINISTIC = " does not have a deterministic implementation"  # how torch words its refusal


def nondeterministic_op(error: BaseException) -> str | None:
    """The operation `error` names when it is torch's refusal of an operation without a deterministic
    implementation (torch.use_deterministic_algorithms), else None."""
    message = str(error)
    if not isinstance(error, RuntimeError) or NONDETERMINISTIC not in message:
        return None
    return message.split(NONDETERMINISTIC)[0].strip().split()[-1]


def set_threads(threads=0, processes_per_machine=1, loader_workers=0):
    """Use `threads` CPU threads, or with 0 this process's share of the cores it may run on, less one for each of
    its data loader's worker processes.

    torch counts the machine's cores; a cluster job or a `taskset` may be allowed fewer, torchrun may start several
    processes on them, and more threads than cores slow every step down.
    """
    torch.set_num_threads(threads or max(1, usable_cores() // processes_per_machine - loader_workers))
    return torch.get_num_threads()


def keep_freed_memory(limit_bytes=32 * 2**20):
    """Ask glibc's malloc to keep freed blocks of up to `limit_bytes` for reuse instead of returning them to the OS.

    A training step allocates and frees the same activation-sized blocks every time; by default glibc hands large
    ones back to the kernel and the next step pays page faults to touch them again (a quarter of a CPU step for the
    baseline). No effect, and no harm, outside Linux/glibc. Returns whether the setting was taken.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, limit_bytes)) and bool(libc.mallopt(m_trim_threshold, 16 * limit_bytes))
