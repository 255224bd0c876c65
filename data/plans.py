"""Plans of the passes over a split: which samples each batch holds on this rank, in what order, with what shift.

Every pass over the training set follows a plan drawn before it starts: the order of the samples and each one's
random shift, drawn by GeneratorDraws (one generator whose state is part of `last.pt`: the built-in datasets, as every
run recorded before streaming existed) or by SeededDraws (from the seed and the pass's number alone: image folders and
text, so that the number of worker processes, the torchrun ranks and a resume never change what a sample sees).

Under torchrun, `data.batch_size` is the global batch: each rank keeps every `world.size`-th sample of it from its
rank on, so the ranks' shares together are exactly the batch a single process would have seen.
"""
import hashlib
import math
from collections.abc import Iterator

import torch


class GeneratorDraws:
    """Each pass's order and shifts drawn from one generator, pass after pass: its state is what a resume restores."""

    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n, batch_size, shift):
        order = torch.randperm(n, generator=self.generator)
        shifts = []
        for start in range(0, n, batch_size):  # per batch, in the order the draws were always made
            size = min(batch_size, n - start)
            shifts += [torch.randint(0, 2 * shift + 1, (size,), generator=self.generator) for _ in "yx"] if shift \
                else []
        dy = torch.cat(shifts[0::2]) if shift else None
        dx = torch.cat(shifts[1::2]) if shift else None
        return order, dy, dx

    def get_state(self):
        return self.generator.get_state()

    def set_state(self, state):
        self.generator.set_state(state)


class SeededDraws:
    """Each pass's order and shifts following from the seed and the pass's number: the state to resume is how many
    passes were made."""

    def __init__(self, seed):
        self.seed, self.passes = seed, 0

    def draw(self, n, batch_size, shift):
        mixed = int.from_bytes(hashlib.sha256(f"{self.seed}:{self.passes}".encode()).digest()[:7], "big")
        generator = torch.Generator().manual_seed(mixed)
        self.passes += 1
        order = torch.randperm(n, generator=generator)
        if not shift:
            return order, None, None
        by_sample = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)  # each sample's own (dy, dx)
        return order, by_sample[0][order], by_sample[1][order]

    def get_state(self):
        return torch.tensor([self.passes])

    def set_state(self, state):
        self.passes = int(state[0])


class EpochPlan:
    """One pass: which samples (by index) each batch holds on this rank, and their shifts."""

    def __init__(self, n, batch_size, draws=None, shift=0, world=None):
        self.n, self.batch_size, self.draws, self.shift = n, batch_size, draws, shift
        self.rank: int = world.rank if world is not None else 0
        self.world_size: int = world.size if world is not None else 1
        self.skip = 0  # batches the next pass leaves out at its start: those a resumed run trained before its stop

    def __len__(self):
        return math.ceil(self.n / self.batch_size)

    def batches(self):
        """(sample indices, dy, dx) of each batch of one pass, this rank's share; dy, dx are None without shift."""
        if self.draws is None:  # evaluation: every sample once, in order
            order, dy, dx = torch.arange(self.n), None, None
        else:
            order, dy, dx = self.draws.draw(self.n, self.batch_size, self.shift)
        skip, self.skip = self.skip, 0
        for start in range(skip * self.batch_size, self.n, self.batch_size):
            share = slice(start + self.rank, min(start + self.batch_size, self.n), self.world_size)
            if self.draws is not None and min(self.batch_size, self.n - start) < self.world_size:
                break  # a last batch too small to give every rank a sample: no rank trains on it
            yield order[share], dy[share] if dy is not None else None, dx[share] if dx is not None else None


class PlannedBatches:
    """Batches that follow an EpochPlan: as many as it has, and its draws' state (what a resume restores) as theirs
    (what utils.epochs.Resumable asks of the training batches)."""

    def __init__(self, plan):
        self.plan = plan

    def __iter__(self) -> Iterator:
        """The batches of the plan's next pass: each kind of batches makes them its own way."""
        raise NotImplementedError

    def __len__(self):
        return len(self.plan)

    @property
    def num_samples(self):
        """Samples in one pass, over all ranks together."""
        return self.plan.n

    def get_state(self):
        """The state the next pass is drawn from."""
        return self.plan.draws.get_state()

    def set_state(self, state, skip=0):
        """Draw the next pass from `state`, and start it after its first `skip` batches (a resume mid-pass)."""
        self.plan.draws.set_state(state)
        self.plan.skip = skip


class PlanBatchSampler:
    """A DataLoader batch sampler whose 'indices' are whole batches' keys (index, dy, dx) of the plan's next pass."""

    def __init__(self, plan):
        self.plan = plan

    def __len__(self):
        return len(self.plan)

    def __iter__(self):
        return iter(self.plan.batches())
