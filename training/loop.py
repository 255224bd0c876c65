"""One training pass and one evaluation pass: functions of (model, batches, ...) that return metrics.

`batches` is any iterable of (images, labels): the loops move them to the model's device and count what they saw.
They know nothing of the run table: the caller hands `log_step` a callable and records what comes back.
"""
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm


def train_epoch(model, batches, optimizer, scheduler, *, label_smoothing=0.0, first_step=0, log_every=1,
                log_step=None, progress=None, autocast=None, world=None):
    """{'loss', 'accuracy', 'epoch_time', 'throughput'} of one pass over `batches`, updating `model` at each batch.

    Timings are the only values that differ between identical runs; their names say so ("time", "throughput").

    With `autocast` (a dtype such as torch.bfloat16), the forward pass runs in that precision; None keeps float32.
    With `world` (torchrun), the metrics and logged losses are summed over all ranks, so they describe all the data.

    Every `log_every` steps, `log_step(step, mean loss of those steps)` is called; reading the loss only then keeps
    the device from waiting on the host at every step. `progress` is the bar's description, or None for no bar; the
    bar is shown only on a terminal, so logs of batch jobs stay readable.
    """
    started = time.perf_counter()
    model.train()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), device=device)
    window_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen, window = 0, 0
    bar = tqdm(batches, desc=progress, leave=False, dynamic_ncols=True, disable=True if progress is None else None)
    for step, (images, labels) in enumerate(bar, start=first_step + 1):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with _autocast(device, autocast):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

        loss = loss.detach()
        total_loss += loss * len(labels)
        window_loss += loss
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        seen, window = seen + len(labels), window + 1
        if window == log_every:
            mean = _summed(world, window_loss).item() / window / (world.size if world else 1)
            if log_step is not None:
                log_step(step, mean)
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}", refresh=False)
            window_loss.zero_()
            window = 0
    bar.close()
    total_loss, correct = _summed(world, total_loss), _summed(world, correct)
    seen = _summed(world, torch.tensor(seen, device=device)).item()
    metrics = {"loss": total_loss.item() / seen, "accuracy": correct.item() / seen}
    epoch_time = time.perf_counter() - started
    return {**metrics, "epoch_time": epoch_time, "throughput": seen / epoch_time}


@torch.no_grad()
def evaluate(model, batches, autocast=None, world=None):
    """{'accuracy', 'loss'} of `model` over `batches`: mean cross-entropy (no smoothing) and share of correct labels.

    With `world` (torchrun), each rank evaluates its shard and the sums are added up over the ranks.
    """
    model.eval()
    device = next(model.parameters()).device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with _autocast(device, autocast):
            logits = model(images)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
    total_loss, correct, seen = _summed(world, total_loss), _summed(world, correct), _summed(world, seen).item()
    return {"accuracy": correct.item() / seen, "loss": total_loss.item() / seen}


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _summed(world, tensor):
    return world.sum(tensor) if world is not None else tensor
