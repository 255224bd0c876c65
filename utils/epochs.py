"""What every experiment's epoch loop must do alike, in one place: a fix here reaches every experiment.

`Epochs` restores a run's resume point on --resume (the end of an epoch, or a step inside one), logs what each epoch
measured, keeps `best.pt` (by the validation metric the run selects by, in its declared direction: `run.measures`)
and `last.pt` (the resume point: everything needed to continue), writes a resume point at the step a stop signal
lands in (and every `checkpoint_every` steps), stops after `patience` epochs without improvement, reloads the best
model before the test set, checks that every torchrun rank ends with the same weights, and records the results. The
loop itself stays in the experiment; a training pass gets what it needs of this bookkeeping from `hooks(epoch)`.
"""
import time
import warnings
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from utils.checkpoint import (check_owner, load_checkpoint, load_training_state, random_states, remove_partial_files,
                              restore_random_states, save_checkpoint, save_training_state)
from utils.config import require
from utils.distributed import World, is_compiled
from utils.errors import UserError
from utils.measures import BEST_EPOCH, EPOCH_TIME, TEST_PREFIX
from utils.runtable.run import ResumePoint, Run
from utils.stopping import pending_stop

STOPPED_EARLY, EPOCHS_TRAINED = "stopped_early", "epochs_trained"  # results of a run with a patience


def check_config(config: dict) -> None:
    """Refuse a patience or a checkpoint interval Epochs cannot take (training.patience, training.checkpoint_every)."""
    require(config, "training.patience", int, low=1, optional=True)
    require(config, "training.checkpoint_every", int, low=1, optional=True)


@runtime_checkable
class Resumable(Protocol):
    """What the training batches give `utils.epochs.Epochs`: a pass over them, their number, and the state of their
    draw, which a resume point keeps so that a resumed run trains on the very batches an uninterrupted run would."""

    def __iter__(self): ...

    def __len__(self) -> int: ...

    def get_state(self):
        """The state the next pass is drawn from."""

    def set_state(self, state, skip: int = 0):
        """Draw the next pass from `state`, leaving out its first `skip` batches (those trained before a stop)."""


class StatefulLoader:
    """A torchdata StatefulDataLoader as Resumable training batches: its own state_dict is the state of its draws
    (with its generator's, which it does not keep itself when it loads in this process), and a resume inside a pass
    reads the batches trained before the stop again, without training on them, to reach the step it stopped after."""

    def __init__(self, loader):
        self.loader = loader
        # torchdata 0.11 calls an API torch deprecated at every pass, which says so once per run: not the user's doing.
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        if loader.generator is None:  # its draws of worker seeds come from a generator of its own, whose state the
            seed = int(torch.empty((), dtype=torch.int64).random_())  # resume point keeps, not from the run's
            loader.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def get_state(self):
        generator = self.loader.generator
        return {"loader": self.loader.state_dict(),
                "generator": generator.get_state() if generator is not None else None}

    def set_state(self, state, skip: int = 0):
        self.loader.load_state_dict(state["loader"])
        self._set_generator(state["generator"])
        if not skip:
            return
        # Reach the step of the stop by reading the pass's first `skip` batches again, then keep the iterator the
        # pass goes on with: making it draws from the random states, which must stay those of the resume point.
        with torch.random.fork_rng(devices=[]):
            batches = iter(self.loader)
            for _ in range(skip):
                next(batches)
            reached = self.loader.generator.get_state() if self.loader.generator is not None else None
            self.loader.load_state_dict(self.loader.state_dict())
            self.loader.state_dict()
        self._set_generator(reached)

    def _set_generator(self, state):
        if state is not None:
            self.loader.generator.set_state(state)


def resumable(loader) -> Resumable:
    """`loader` as training batches Epochs can resume exactly, or a UserError saying what to use instead (before any
    epoch is spent): the template's loaders and a torchdata StatefulDataLoader resume; a plain DataLoader does not."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    if isinstance(loader, StatefulDataLoader):
        if loader.generator is not None and loader.num_workers == 0:
            raise UserError("the training batches are a StatefulDataLoader with a generator= and num_workers=0, "
                            "which torchdata does not resume exactly (its shuffle and its worker seeds share the "
                            "generator); drop generator= (the run's seed seeds the shuffle) or load with workers")
        return StatefulLoader(loader)
    if isinstance(loader, torch.utils.data.DataLoader):
        raise UserError("the training batches are a torch.utils.data.DataLoader, which keeps no state of its draws, "
                        "so a stopped run could not resume exactly; build it as torchdata.stateful_dataloader."
                        "StatefulDataLoader with the same arguments (docs/experiments.md)")
    if not isinstance(loader, Resumable):
        raise UserError(f"the training batches ({type(loader).__name__}) say nothing of the state of their draws, so a "
                        f"stopped run could not resume exactly; use the template's loaders, a torchdata "
                        f"StatefulDataLoader, or give them get_state, set_state and __len__ (utils.epochs.Resumable)")
    return loader


class Epochs:
    """The bookkeeping around an experiment's epoch loop (see the module docstring)."""

    def __init__(self, run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, loader: Resumable,
                 *, world: World, verbose: int = 1, scaler=None, patience: int | None = None,
                 checkpoint_every: int | None = None):
        """`loader` is the training batches (Resumable, or a torchdata StatefulDataLoader); `scaler` the gradient scaler
        of fp16 training, whose state the resume points keep. `patience`: stop after that many epochs without
        improvement (None: never). `checkpoint_every`: also write the resume point every that many steps (None: at epoch
        ends and stops)."""
        self.run, self.model, self.world, self.verbose = run, model, world, verbose
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.loader = resumable(loader)
        self.patience, self.checkpoint_every = patience, checkpoint_every
        self.measures = run.measures
        self.watch = self.measures.select
        self.best_value: float | None = None  # the selected metric's best validation value, and its epoch
        self.best_epoch: int | None = None
        self.done = 0  # epochs finished
        self._best_path, self._last_path = run.folder / "best.pt", run.folder / "last.pt"
        self._epoch, self._total = 0, 0
        self._pass_draw = None  # the state the current pass was drawn from: what a resume point in it keeps
        self._restored = None  # where a resume point left the next pass (training.loop.LoopState, as a dict)
        self._pass_end = None  # the end of the current pass, as a resume point not yet written (see _after_pass)
        self._written_step: int | None = None  # the step of the newest resume point written
        self._timed_first_step = False
        run.before_stopping(self._write_pass_end)
        if run.resumed:
            self._restore()

    def remaining(self, num_epochs: int) -> Iterator[int]:
        """The epochs still to train, 1-based: all of them, or those from the resume point on; fewer when the run
        stops early."""
        self._total = num_epochs
        epoch = self.done + 1
        while epoch <= num_epochs and not self.stopped_early:
            self._epoch = epoch
            self._pass_draw = self.loader.get_state()
            yield epoch
            epoch += 1
        if self.stopped_early and self.verbose >= 1:
            print(f"stopped early: val {self.watch} did not improve for {self.patience} epoch"
                  f"{'s' if self.patience != 1 else ''} after epoch {self.best_epoch}", flush=True)

    @property
    def stopped_early(self) -> bool:
        """Whether `patience` epochs have passed without improvement."""
        if self.patience is None or self.best_epoch is None:
            return False
        return self.done - self.best_epoch >= self.patience

    def hooks(self, epoch: int) -> "PassBookkeeping":
        """What the training pass of `epoch` needs of the bookkeeping (training.loop.PassHooks)."""
        restored, self._restored = self._restored, None
        return PassBookkeeping(self, epoch, restored)

    def end(self, epoch: int, *, step: int, train: dict, val: dict) -> None:
        """Close `epoch`, which ended at global `step`: log its `train` and `val` metrics, keep the checkpoints.

        The order of writes is what makes a kill at any instant harmless: the epoch's points reach the table first,
        then best.pt, then last.pt, the resume point. A resumed run continues from last.pt and first deletes any
        point logged after it, so every point ends up in the table exactly once; and best.pt is never older than
        the best epoch that last.pt names.
        """
        if self._restored is not None:  # the pass trained from the epoch's start: its numbers are not the run's
            raise UserError(f"run {self.run.id} resumed in the middle of epoch {epoch}, but its training pass did not "
                            f"take epochs.hooks({epoch}), which says where to continue; hand it to train_epoch (see "
                            f"experiments/experiment1.py), then resume again")
        for split, metrics in (("train", train), ("val", val)):
            for name, value in metrics.items():
                self.run.log_scalar(f"{split}/{name}", value, step=step, epoch=epoch)
        if self.watch not in val:
            raise KeyError(f"the validation metrics {sorted(val)} lack {self.watch!r}, which this run selects by")
        value = val[self.watch]
        improved = self.measures.improves(value, self.best_value)
        best_value, best_epoch = (value, epoch) if improved else (self.best_value, self.best_epoch)
        self.run.flush()
        ranks = self.world.gathered(random_states())
        if self.world.is_main:
            if improved:
                save_checkpoint(self._best_path, self.model, epoch=epoch, watch=self.watch, value=value,
                                **self._owner)
            save_training_state(self._last_path, self.model, self.optimizer, self.scheduler, self.loader.get_state(),
                                scaler=self.scaler, rng=ranks[0], epoch=epoch, best_value=best_value,
                                best_epoch=best_epoch, **self._of_ranks(ranks), **self._owner)
        # Only once last.pt holds them, and the pass's end no longer stands to be written (by a stop in between).
        self._pass_end, self._written_step = None, step
        self.best_value, self.best_epoch, self.done = best_value, best_epoch, epoch
        self.run.resume_point = ResumePoint(epoch, len(self.loader), len(self.loader), step, closed=True)
        if self.verbose >= 1:
            timing = f" | {train[EPOCH_TIME]:.1f}s" if EPOCH_TIME in train else ""
            print(f"epoch {epoch}/{self._total}: train {self._shown(train)} | val {self._shown(val)}{timing}"
                  f"{' *' if improved else ''}", flush=True)
        if self.world.is_main:
            # Last, once the epoch is safe: a search's pruner may stop the run here.
            self.run.report(epoch, value, last=epoch == self._total or self.stopped_early)

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
        validation value, whether it stopped early and after how many epochs (with a patience), and any `more`."""
        results = {**{f"{TEST_PREFIX}{name}": value for name, value in test.items()},
                   BEST_EPOCH: self.best_epoch, self.measures.selected_result: self.best_value}
        if self.patience is not None:
            results.update({STOPPED_EARLY: int(self.stopped_early), EPOCHS_TRAINED: self.done})
        results.update(more)
        self.run.finish(results)
        return results

    @property
    def _owner(self):
        return {} if self.run.owner is None else {"owner": self.run.owner}

    def _of_ranks(self, ranks):
        """What a checkpoint keeps of every torchrun rank's own state (their random states differ)."""
        return {"ranks": ranks} if self.world.distributed else {}

    def model_device(self) -> torch.device:
        """The device the model's weights are on."""
        return next(self.model.parameters()).device

    # ---- resume points inside an epoch ----

    def _after_step(self, epoch, step, state):
        """After a step of `epoch`'s pass: write a resume point every checkpoint_every steps, and at the step a stop
        signal lands in (on any torchrun rank), then stop."""
        stop = self.world.agreed_stop(pending_stop())
        if stop is not None or (self.checkpoint_every and step % self.checkpoint_every == 0):
            self._write(self._position(epoch, step, state))
        if stop is not None:
            raise stop

    def _after_pass(self, epoch, step, state):
        """At the end of `epoch`'s pass: keep it as a resume point to write if a stop lands before the epoch ends
        (in validation), with the random states and the table as they are now."""
        self._pass_end = self._position(epoch, step, state)

    def _position(self, epoch, step, state):
        """The resume point after global `step`, `state.done` steps into `epoch`: every rank's loop state and random
        states (gathered on rank 0), the table's newest rows, the best epoch so far."""
        ranks = self.world.gathered({"loop": state.to_dict(), "rng": random_states()})
        return {"epoch": epoch, "step": step, "done": state.done, "ranks": ranks, "marks": self.run.marks(),
                "best": (self.best_value, self.best_epoch)}

    def _write(self, position):
        """Write `position` as last.pt (rank 0), after every point it covers reached the table (run.marks)."""
        if self.world.is_main:
            ranks = position["ranks"]
            where = {key: position[key] for key in ("epoch", "step", "done", "marks")}
            save_training_state(self._last_path, self.model, self.optimizer, self.scheduler, self._pass_draw,
                                scaler=self.scaler, rng=ranks[0]["rng"], epoch=self.done,
                                best_value=position["best"][0], best_epoch=position["best"][1],
                                position={**where, "loops": [rank["loop"] for rank in ranks]},
                                **self._of_ranks([rank["rng"] for rank in ranks]), **self._owner)
        self._written_step = position["step"]
        self.run.resume_point = ResumePoint(position["epoch"], position["done"], len(self.loader), position["step"])

    def _write_pass_end(self):
        """Write the end of the current pass as the resume point, unless a newer one was written: what a stop that
        lands after the pass and before the epoch's end (in validation) keeps (Run.before_stopping)."""
        if self._pass_end is not None and self._pass_end["step"] != self._written_step:
            self._write(self._pass_end)

    def _restore(self):
        """Continue from last.pt: every state as it was at its step, the points logged after it deleted."""
        remove_partial_files(self.run.folder)
        marks = None
        if self._last_path.exists():
            check_owner(self._last_path, self.run.owner)
            state = load_training_state(self._last_path, self.model, self.optimizer, self.scheduler,
                                        self.model_device(), scaler=self.scaler)
            if state.get("ranks"):  # each torchrun rank's own random states
                restore_random_states(state["ranks"][self.world.rank])
            self.best_value, self.best_epoch, self.done = state["best_value"], state["best_epoch"], state["epoch"]
            position = state.get("position")
            if position is not None:  # inside an epoch: its pass continues after the steps it trained
                self._restored, marks = position["loops"][self.world.rank], position["marks"]
                self.loader.set_state(state["generator"], skip=position["done"])
                self.run.resume_point = ResumePoint(position["epoch"], position["done"], len(self.loader),
                                                    position["step"])
            else:
                self.loader.set_state(state["generator"])
                self.run.resume_point = ResumePoint(self.done, len(self.loader), len(self.loader),
                                                    self.done * len(self.loader), closed=True) if self.done else None
        self.run.discard_logs_after(epoch=self.done, marks=marks)
        if self.verbose >= 1:
            where = self.run.resume_point.described() if self.run.resume_point else "from its start"
            print(f"run {self.run.id}: resuming {where}", flush=True)


class PassBookkeeping:
    """The PassHooks (training/loop.py) of one training pass: what Epochs records and keeps between its steps."""

    def __init__(self, epochs: Epochs, epoch: int, restored: dict | None):
        self.epochs, self.epoch, self.restored = epochs, epoch, restored
        self.first_step = (epoch - 1) * len(epochs.loader)
        self.progress = f"epoch {epoch}/{epochs._total}" if epochs.verbose >= 1 else None
        self._started = time.perf_counter()

    def log(self, step: int, values: dict) -> None:
        for name, value in values.items():
            self.epochs.run.log_scalar(f"train/{name}", value, step=step, epoch=self.epoch)
            if self.epochs.verbose >= 3:
                print(f"  step {step}: {name.removeprefix('step_')} {value:.4f}")

    def after_step(self, state) -> None:
        epochs = self.epochs
        if not epochs._timed_first_step:
            epochs._timed_first_step = True
            if epochs.verbose >= 2 and is_compiled(epochs.model):
                print(f"torch.compile: the first step took {time.perf_counter() - self._started:.1f} s (compiling "
                      f"the model)", flush=True)
        epochs._after_step(self.epoch, self.first_step + state.done, state)

    def after_pass(self, state) -> None:
        self.epochs._after_pass(self.epoch, self.first_step + state.done, state)
