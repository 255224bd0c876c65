"""Checkpoints in a run's folder: the best model, and the full training state for resuming."""
import io
import random

import numpy as np
import torch

from utils.distributed import unwrap
from utils.errors import disk_full, is_disk_full


def save_checkpoint(path, model, **extra):
    """Write the model weights and any `extra` picklable state (epoch, metric...) to `path`."""
    _save({"model": unwrap(model).state_dict(), **extra}, path)


def load_checkpoint(path, model, device):
    """Load the weights saved at `path` into `model`; the whole checkpoint dict is returned."""
    # weights_only=False: the template's own files also hold NumPy and Python RNG states, which the safe loader refuses.
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    unwrap(model).load_state_dict(checkpoint["model"])
    return checkpoint


def save_training_state(path, model, optimizer, scheduler, loader, **extra):
    """Everything needed to continue training bit for bit: weights, optimizer, schedule and every random state."""
    _save({
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "generator": loader.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy_rng": np.random.get_state(), "python_rng": random.getstate(), **extra,
    }, path)


def load_training_state(path, model, optimizer, scheduler, loader, device):
    """Restore what save_training_state wrote; returns the checkpoint dict (its `extra` entries included)."""
    state = load_checkpoint(path, model, device)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    loader.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    return state


def _save(state, path):
    """Write `state` to `path` whole or not at all: a crash or a full disk never leaves a truncated file behind."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full(path.parent, path.name, len(data)) from None
        raise


def remove_partial_files(folder):
    """Delete the *.tmp files a process killed mid-write left in `folder` (a resumed run starts clean)."""
    for tmp in folder.glob("*.tmp"):
        tmp.unlink(missing_ok=True)
