"""One training pass and one evaluation pass: functions of (model, batches, task, ...) that return metrics.

`batches` is any iterable of batches (a tuple or dict of tensors, nested); the loops move each to the model's
device and leave what a batch means to the `task` (training/tasks.py): the loss, and the sums its metrics come from.
How each optimizer step is taken (precision, clipping, accumulation) is a StepRecipe (training/recipe.py). The loops
know nothing of the run table: a training pass is handed PassHooks (utils.epochs.Epochs.hooks gives them) that record
what it logs and may keep a resume point after any step.
"""
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from training.recipe import StepRecipe
from training.tasks import to_device
from utils.measures import EPOCH_TIME, THROUGHPUT
from utils.stopping import raise_if_stopped, stops_held


@dataclass
class LoopState:
    """Where a training pass stands after a step: what a resume point keeps of it, so that a resumed pass goes on
    with the same sums, logging window and clock."""
    done: int = 0  # batches (optimizer steps) of the pass trained
    seen: int = 0  # what the task counts (samples, tokens) in those batches
    sums: dict | None = None  # {metric: running sum}, on the device
    window_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # the logging window's summed loss
    window: int = 0  # steps in the logging window
    norms: list = field(default_factory=list)  # the window's gradient norms, a step each (with grad_clip)
    elapsed: float = 0.0  # seconds the pass trained before the resume point

    def to_dict(self) -> dict:
        """The state as tensors and plain numbers on the CPU (what the safe loader reads back)."""
        return {"done": self.done, "seen": self.seen, "elapsed": self.elapsed, "window": self.window,
                "sums": {name: value.cpu() for name, value in (self.sums or {}).items()},
                "window_loss": self.window_loss.cpu(),
                "norms": torch.stack(self.norms).cpu() if self.norms else torch.zeros(0)}

    @classmethod
    def from_dict(cls, state: dict, device: torch.device) -> "LoopState":
        return cls(state["done"], state["seen"], {name: value.to(device) for name, value in state["sums"].items()}
                   or None, state["window_loss"].to(device), state["window"], list(state["norms"].to(device)),
                   state["elapsed"])


class PassHooks(Protocol):
    """What the epoch bookkeeping gives one training pass (utils.epochs.Epochs.hooks(epoch))."""
    first_step: int  # the global step before the pass's first batch
    restored: dict | None  # the LoopState (as a dict) a resume point left this pass at, or None: from its start
    progress: str | None  # the progress bar's description, or None for no bar

    def log(self, step: int, values: dict) -> None:
        """Record {name: value} of the training split at global `step`."""

    def after_step(self, state: LoopState) -> None:
        """Called after every step: may write a resume point, and raises the stop a signal asked for once it has."""

    def after_pass(self, state: LoopState) -> None:
        """Called once the pass has trained its last batch, before its metrics are summed over the ranks."""


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, scheduler, task,
                recipe: StepRecipe | None = None, hooks: PassHooks | None = None, *, log_every: int = 1,
                world=None) -> dict:
    """The task's metrics of one pass over `batches`, updating `model` at each batch, plus 'epoch_time' and
    'throughput' (what the task counts, per second).

    Timings are the only values that differ between identical runs: utils.measures.TIMINGS declares them.

    `recipe` says how each step is taken (default: float32, no clipping, no accumulation). With `world` (torchrun),
    the metrics and logged losses are summed over all ranks, so they describe all the data.

    Every `log_every` steps, the mean loss of those steps is logged as step_loss (reading the loss only then keeps
    the device from waiting on the host at every step), and with clipping each step's gradient norm before clipping
    as grad_norm. A stop signal waits for the end of the step it lands in, so that `hooks` can keep that step as a
    resume point; a pass that `hooks` restored continues after the batches it trained before (the batches skip them).
    The progress bar is shown only on a terminal, so logs of batch jobs stay readable.
    """
    recipe = recipe or StepRecipe()
    started = time.perf_counter()
    model.train()
    device = next(model.parameters()).device
    restored = hooks.restored if hooks is not None else None
    state = LoopState.from_dict(restored, device) if restored else LoopState(window_loss=torch.zeros((), device=device))
    first_step = hooks.first_step if hooks is not None else 0
    progress = hooks.progress if hooks is not None else None
    raise_if_stopped()  # a Ctrl-C that a library swallowed before the pass stops it before its first step
    bar = tqdm(batches, desc=progress, initial=state.done, leave=False, dynamic_ncols=True,
               disable=True if progress is None else None)
    before = state.elapsed  # what the pass trained before a resume point it continues from
    with stops_held():  # a stop waits for the step it lands in to end: a resume point is a step, whole
        for step, batch in enumerate(bar, start=first_step + state.done + 1):
            loss, norm = _step(model, to_device(batch, device), optimizer, scheduler, task, recipe, state, device)
            state.window_loss += loss
            state.done, state.window = state.done + 1, state.window + 1
            state.elapsed = before + time.perf_counter() - started
            if norm is not None:
                state.norms.append(norm)
            if state.window == log_every:
                _log_window(hooks, step, state, world)
                if progress is not None:
                    running = task.summarize({name: value.item() for name, value in (state.sums or {}).items()},
                                             state.seen)
                    bar.set_postfix({name: f"{value:.4f}" for name, value in running.items()}, refresh=False)
            if hooks is not None:
                hooks.after_step(state)
            raise_if_stopped()
        if hooks is not None:
            hooks.after_pass(state)
    bar.close()
    metrics = _metrics(task, state.sums, state.seen, device, world)
    epoch_time = before + time.perf_counter() - started
    return {**metrics, EPOCH_TIME: epoch_time, THROUGHPUT: _total(world, state.seen, device) / epoch_time}


def _step(model, batch, optimizer, scheduler, task, recipe, state, device):
    """One optimizer step on `batch`, in `recipe.accumulate` micro-batches: (the batch's loss, detached; the gradient
    norm before clipping, or None without clipping). The task's sums of each micro-batch are added to `state`."""
    parts = _micro_batches(batch, recipe.accumulate)
    total = _samples(batch) if len(parts) > 1 else None
    optimizer.zero_grad(set_to_none=True)
    step_loss = None
    for number, part in enumerate(parts, start=1):
        # Under torchrun, the gradients are averaged over the ranks once, after the last micro-batch.
        syncs = number == len(parts) or not hasattr(model, "no_sync")
        with nullcontext() if syncs else model.no_sync():
            with _autocast(device, recipe.autocast):
                output = task.forward(model, part)
            loss = task.loss(output, part)
            weighted = loss if len(parts) == 1 else loss * (_samples(part) / total)  # the batch's mean, in parts
            (recipe.scaler.scale(weighted) if recipe.scaler is not None else weighted).backward()
        measured, count = task.train_sums(output, part, loss.detach())
        state.sums = _added(state.sums, measured)
        state.seen += count
        step_loss = weighted.detach() if step_loss is None else step_loss + weighted.detach()
    norm = None
    if recipe.grad_clip is not None:
        if recipe.scaler is not None:
            recipe.scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip).detach()
    if recipe.scaler is not None:
        recipe.scaler.step(optimizer)
        recipe.scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    return step_loss, norm


def _micro_batches(batch, parts):
    """`batch` split along its first dimension into up to `parts` micro-batches (a tuple, list or dict of tensors,
    nested, split alike); [batch] itself for one."""
    if parts == 1:
        return [batch]
    count = min(parts, _samples(batch))
    return [_part(batch, index, count) for index in range(count)]


def _part(batch, index, count):
    if isinstance(batch, torch.Tensor):
        return torch.tensor_split(batch, count)[index]
    if isinstance(batch, dict):
        return {key: _part(value, index, count) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_part(value, index, count) for value in batch)
    return batch


def _samples(batch):
    """How many samples `batch` holds: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch
    return next(_samples(value) for value in values if isinstance(value, (torch.Tensor, dict, tuple, list)))


def _log_window(hooks, step, state, world):
    """Log the window that ends at `step` (its mean loss, its steps' gradient norms) and start a new one."""
    mean = _summed(world, state.window_loss).item() / state.window / (world.size if world else 1)
    if hooks is not None:
        hooks.log(step, {"step_loss": mean})
        if state.norms:
            for offset, norm in enumerate(torch.stack(state.norms).tolist()):
                hooks.log(step - len(state.norms) + 1 + offset, {"grad_norm": norm})
    state.window_loss.zero_()
    state.window = 0
    state.norms = []


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, task, autocast: torch.dtype | None = None, world=None) -> dict:
    """The task's metrics of `model` over `batches` (for a classifier: accuracy, and cross-entropy without smoothing).

    With `autocast` (a dtype such as torch.bfloat16), the forward passes run in that precision; None keeps float32.
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


@torch.no_grad()
def confusion_matrix(model: nn.Module, batches: Iterable, num_classes: int, autocast: torch.dtype | None = None,
                     world=None) -> torch.Tensor:
    """[true class, predicted class] counts of a classifier `model` over `batches` of (inputs, labels), summed over
    the ranks under torchrun."""
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for inputs, labels in batches:
        raise_if_stopped()
        inputs, labels = to_device(inputs, device), to_device(labels, device)
        with _autocast(device, autocast):
            predicted = model(inputs).argmax(dim=1)
        counts += torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    return _summed(world, counts).view(num_classes, num_classes).cpu()


def _added(sums, measured):
    """The running {metric: sum} with one batch's sums added (kept on the device: no wait for the host)."""
    if sums is None:
        sums = {name: torch.zeros_like(value.detach()) for name, value in measured.items()}
    for name, value in measured.items():
        sums[name] += value.detach()
    return sums


def _metrics(task, sums, seen, device, world):
    """The task's metrics from this rank's sums, added over every rank first."""
    if sums is None:
        raise ValueError("no batch to measure: the split is empty")
    totals = {name: _number_or_numbers(_summed(world, value)) for name, value in sums.items()}
    return task.summarize(totals, _total(world, seen, device))


def _number_or_numbers(total):
    """A sum as the task's summarize takes it: a float, or a float64 CPU tensor of a sum per target (regression)."""
    return total.item() if total.ndim == 0 else total.double().cpu()


def _total(world, count, device):
    return _summed(world, torch.tensor(count, device=device)).item() if world is not None else count


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _summed(world, tensor):
    return world.sum(tensor) if world is not None else tensor
