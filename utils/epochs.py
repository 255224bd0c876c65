"""What every experiment's epoch loop must do alike, in one place: a fix here reaches every experiment.

`Epochs` restores the last finished epoch on --resume, logs what each epoch measured, keeps `best.pt` (by the
validation metric the run selects by, in its declared direction: `run.measures`) and `last.pt` (everything needed to
continue), reloads the best model before the test set, checks that every torchrun rank ends with the same weights, and
records the results. The loop itself stays in the experiment.
"""
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from utils.checkpoint import (check_owner, load_checkpoint, load_training_state, remove_partial_files,
                              save_checkpoint, save_training_state)
from utils.distributed import World
from utils.measures import BEST_EPOCH, TEST_PREFIX
from utils.runtable.run import Run


class Resumable(Protocol):
    """What the training batches give `utils.epochs.Epochs`: a pass over them, their number, and the state of their
    draw, which last.pt keeps so that a resume continues with the pass an uninterrupted run would have drawn."""

    def __iter__(self): ...

    def __len__(self) -> int: ...

    def get_state(self): ...

    def set_state(self, state): ...


class Epochs:
    """The bookkeeping around an experiment's epoch loop (see the module docstring)."""

    def __init__(self, run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, loader: Resumable,
                 *, world: World, verbose: int = 1):
        """`loader` is the training batches: their get_state() and set_state(state) (Resumable) are
        what a resume restores of the data's order."""
        self.run, self.model, self.world, self.verbose = run, model, world, verbose
        self.measures = run.measures
        self.watch = self.measures.select
        self._training_state = (optimizer, scheduler, loader)  # the loader's state: its next pass's draw
        self.best_value, self.best_epoch, self.done = None, None, 0
        self._best_path, self._last_path = run.folder / "best.pt", run.folder / "last.pt"
        self._epoch, self._total = 0, 0
        if run.resumed:
            self._restore()

    def remaining(self, num_epochs: int) -> Iterator[int]:
        """The epochs still to train, 1-based: all of them, or those after the last finished one on --resume."""
        self._total = num_epochs
        for epoch in range(self.done + 1, num_epochs + 1):
            self._epoch = epoch
            yield epoch

    def log_step(self, step: int, loss: float) -> None:
        """Record the mean training loss of the last logging window (train_epoch's `log_step`)."""
        self.run.log_scalar("train/step_loss", loss, step=step, epoch=self._epoch)
        if self.verbose >= 3:
            print(f"  step {step}: loss {loss:.4f}")

    def progress(self, epoch: int) -> str | None:
        """The progress bar's description for `epoch`, or None for no bar."""
        return f"epoch {epoch}/{self._total}" if self.verbose >= 1 else None

    def end(self, epoch: int, *, step: int, train: dict, val: dict) -> None:
        """Close `epoch`, which ended at global `step`: log its `train` and `val` metrics, keep the checkpoints.

        The order of writes is what makes a kill at any instant harmless: the epoch's points reach the table first,
        then best.pt, then last.pt, the resume point. A resumed run continues from last.pt and first deletes any
        point logged after it, so every point ends up in the table exactly once; and best.pt is never older than
        the best epoch that last.pt names.
        """
        for split, metrics in (("train", train), ("val", val)):
            for name, value in metrics.items():
                self.run.log_scalar(f"{split}/{name}", value, step=step, epoch=epoch)
        if self.watch not in val:
            raise KeyError(f"the validation metrics {sorted(val)} lack {self.watch!r}, which this run selects by")
        value = val[self.watch]
        improved = self.measures.improves(value, self.best_value)
        if improved:
            self.best_value, self.best_epoch = value, epoch
        self.done = epoch
        self.run.flush()
        if self.world.is_main:
            if improved:
                save_checkpoint(self._best_path, self.model, epoch=epoch, watch=self.watch, value=value,
                                **self._owner)
            save_training_state(self._last_path, self.model, *self._training_state, epoch=epoch,
                                best_value=self.best_value, best_epoch=self.best_epoch, **self._owner)
        if self.verbose >= 1:
            timing = f" | {train['epoch_time']:.1f}s" if "epoch_time" in train else ""
            print(f"epoch {epoch}/{self._total}: train {self._shown(train)} | val {self._shown(val)}{timing}"
                  f"{' *' if improved else ''}", flush=True)
        if self.world.is_main:
            # Last, once the epoch is safe: a search's pruner may stop the run here.
            self.run.report(epoch, value, last=epoch == self._total)

    def _shown(self, metrics):
        """The declared metrics among `metrics`, as 'loss 0.1234 accuracy 0.9876'."""
        return " ".join(f"{name} {metrics[name]:.4f}" for name in self.measures.better if name in metrics)

    def best_model(self) -> nn.Module:
        """The model with the weights of the best epoch: what the test set may see (and a sample is drawn from)."""
        if self.world.distributed:
            weights = self.world.check_same_weights(self.model)  # every rank must end with the same bytes
            if self.verbose >= 1:
                print(f"final weights identical on all {self.world.size} ranks (sha256 {weights[:16]})")
        self.world.barrier()  # rank 0 has written the best checkpoint
        load_checkpoint(self._best_path, self.model, self.model_device())
        return self.model

    def finish(self, test: dict, **more) -> dict:
        """The results, recorded as the run's end: each `test` metric as test_NAME, the best epoch and its selected
        validation value, and any `more` results."""
        results = {**{f"{TEST_PREFIX}{name}": value for name, value in test.items()},
                   BEST_EPOCH: self.best_epoch, self.measures.selected_result: self.best_value, **more}
        self.run.finish(results)
        return results

    @property
    def _owner(self):
        return {} if self.run.owner is None else {"owner": self.run.owner}

    def model_device(self) -> torch.device:
        """The device the model's weights are on."""
        return next(self.model.parameters()).device

    def _restore(self):
        """Continue from last.pt: every state as it was after the last finished epoch, later points deleted."""
        remove_partial_files(self.run.folder)
        if self._last_path.exists():
            check_owner(self._last_path, self.run.owner)
            state = load_training_state(self._last_path, self.model, *self._training_state, self.model_device())
            self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
            self.done = state["epoch"]
        self.run.discard_logs_after(epoch=self.done)
        if self.verbose >= 1:
            print(f"run {self.run.id}: resuming after epoch {self.done}")
