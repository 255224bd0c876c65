"""Saving and loading a run's model (and, for resuming, its optimizer and schedule) in its run folder."""
import torch


def save_checkpoint(path, model, **extra):
    """Write the model weights and any `extra` picklable state (epoch, metric, optimizer state...) to `path`."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), **extra}, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a truncated checkpoint behind


def load_checkpoint(path, model, device):
    """Load the weights saved at `path` into `model`; the whole checkpoint dict is returned."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    return checkpoint
