"""Seeding every source of randomness, and PyTorch's deterministic mode."""
import os
import random

import numpy as np
import torch


def seed_everything(seed, deterministic=True):
    """Seed Python, NumPy and torch (all devices) from `seed`; with `deterministic`, refuse nondeterministic kernels,
    without it allow them and let cuDNN pick its fastest (a run started after another in one process, as a notebook
    starts them, gets its own setting either way)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs a fixed workspace to give the same sums twice; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    use_deterministic_algorithms(deterministic)


def use_deterministic_algorithms(mode=True):
    """torch.use_deterministic_algorithms(mode), without its import of the compiler stack where nothing compiles.

    torch's function also sets torch._inductor.config.deterministic, and importing torch._inductor costs about 3 s
    of every run's start on a CPU. The kernels' switch is the same C++ call; the compiler's setting is made only
    where torch.compile is already loaded.
    """
    import sys

    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=False)
