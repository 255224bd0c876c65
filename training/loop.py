"""One training pass and one evaluation pass: functions of (model, batches, task, ...) that return metrics.

`batches` is any iterable of batches (a tuple or dict of tensors, nested); the loops move each to the model's
device and leave what a batch means to the `task` (training/tasks.py): the loss, and the sums its metrics come from.
They know nothing of the run table: the caller hands `log_step` a callable and records what comes back.
"""
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from training.tasks import to_device
from utils.stopping import raise_if_stopped


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, scheduler, task, *,
                first_step: int = 0, log_every: int = 1, log_step: Callable[[int, float], None] | None = None,
                progress: str | None = None, autocast: torch.dtype | None = None, world=None) -> dict:
    """The task's metrics of one pass over `batches`, updating `model` at each batch, plus 'epoch_time' and
    'throughput' (what the task counts, per second).

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
    window_loss = torch.zeros((), device=device)
    sums, seen, window = None, 0, 0
    bar = tqdm(batches, desc=progress, leave=False, dynamic_ncols=True, disable=True if progress is None else None)
    for step, batch in enumerate(bar, start=first_step + 1):
        raise_if_stopped()  # a Ctrl-C that a library swallowed still stops the run at its next step
        batch = to_device(batch, device)
        with _autocast(device, autocast):
            output = task.forward(model, batch)
        loss = task.loss(output, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

        loss = loss.detach()
        measured, count = task.train_sums(output, batch, loss)
        sums = _added(sums, measured)
        window_loss += loss
        seen, window = seen + count, window + 1
        if window == log_every:
            mean = _summed(world, window_loss).item() / window / (world.size if world else 1)
            if log_step is not None:
                log_step(step, mean)
            if progress is not None:
                running = task.summarize({name: value.item() for name, value in sums.items()}, seen)
                bar.set_postfix({name: f"{value:.4f}" for name, value in running.items()}, refresh=False)
            window_loss.zero_()
            window = 0
    bar.close()
    metrics = _metrics(task, sums, seen, device, world)
    epoch_time = time.perf_counter() - started
    return {**metrics, "epoch_time": epoch_time, "throughput": _total(world, seen, device) / epoch_time}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, task, autocast: torch.dtype | None = None, world=None) -> dict:
    """The task's metrics of `model` over `batches` (for a classifier: accuracy, and cross-entropy without smoothing).

    With `world` (torchrun), each rank evaluates its shard and the sums are added up over the ranks.
    """
    model.eval()
    device = next(model.parameters()).device
    sums, seen = None, 0
    for batch in batches:
        raise_if_stopped()
        batch = to_device(batch, device)
        with _autocast(device, autocast):
            output = task.forward(model, batch)
        measured, count = task.eval_sums(output, batch)
        sums, seen = _added(sums, measured), seen + count
    return _metrics(task, sums, seen, device, world)


def _added(sums, measured):
    """The running {metric: sum} with one batch's sums added (kept on the device: no wait for the host)."""
    if sums is None:
        sums = {name: torch.zeros((), dtype=value.dtype, device=value.device) for name, value in measured.items()}
    for name, value in measured.items():
        sums[name] += value.detach()
    return sums


def _metrics(task, sums, seen, device, world):
    """The task's metrics from this rank's sums, added over every rank first."""
    if sums is None:
        raise ValueError("no batch to measure: the split is empty")
    totals = {name: _summed(world, value).item() for name, value in sums.items()}
    return task.summarize(totals, _total(world, seen, device))


def _total(world, count, device):
    return _summed(world, torch.tensor(count, device=device)).item() if world is not None else count


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _summed(world, tensor):
    return world.sum(tensor) if world is not None else tensor
