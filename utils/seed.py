"""Seeding every source of randomness, and PyTorch's deterministic mode."""
import os
import random

import numpy as np
import torch


def seed_everything(seed, deterministic=True):
    """Seed Python, NumPy and torch (all devices) from `seed`; with `deterministic`, refuse nondeterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs a fixed workspace to give the same sums twice; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
