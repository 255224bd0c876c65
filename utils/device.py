"""Choosing where a run computes, with how many CPU threads, and how its host memory is reused."""
import ctypes
import sys

import torch

from utils.config import require
from utils.cores import usable_cores
from utils.errors import UserError


def pick_device(force_cpu: bool = False, index: int = 0) -> torch.device:
    """CUDA GPU `index` (a torchrun process's local rank) when there is one and `force_cpu` is false, else the CPU."""
    if not force_cpu and torch.cuda.is_available():
        return torch.device("cuda", index)
    return torch.device("cpu")


def set_threads(threads=0, processes_per_machine=1, loader_workers=0):
    """Use `threads` CPU threads, or with 0 this process's share of the cores it may run on, less one for each of
    its data loader's worker processes.

    torch counts the machine's cores; a cluster job or a `taskset` may be allowed fewer, torchrun may start several
    processes on them, and more threads than cores slow every step down.
    """
    torch.set_num_threads(threads or max(1, usable_cores() // processes_per_machine - loader_workers))
    return torch.get_num_threads()


AUTOCAST = ("auto", "bf16", "off")


def check_config(config):
    """Refuse an autocast setting this module does not know."""
    if config["training"].get("autocast") is False:  # YAML 1.1 reads a bare `off` as false
        raise UserError('training.autocast: YAML reads a bare off as false; write autocast: "off" (quoted)')
    setting = require(config, "training.autocast", str)
    if setting not in AUTOCAST:
        raise UserError(f"training.autocast must be auto, bf16 or off, got {setting!r}")


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast to for `training.autocast` ('auto', 'bf16' or 'off') on `device`, or None for none.

    'auto' is bf16 on CUDA, where it is fast, and off on the CPU, where it is not.
    """
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    check_config({"training": {"autocast": setting}})
    return torch.bfloat16


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
