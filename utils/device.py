"""Choosing where a run computes."""
import torch


def pick_device(force_cpu=False):
    """The first CUDA GPU when there is one and `force_cpu` is false, else the CPU."""
    if not force_cpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
