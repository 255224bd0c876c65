"""Batches of (normalised images, labels) for the loops: from tensors in memory, or streamed from image files.

Every pass over the training set follows a plan drawn before it starts: the order of the samples and each one's
random shift. A plan is drawn from a generator whose state is part of `last.pt` (the built-in datasets, as every
run recorded before streaming existed), or from the seed and the pass's number alone (image folders): then the
number of worker processes, the torchrun ranks and a resume never change what a sample sees, and a folder held in
memory gives exactly the batches it gives streamed.

Under torchrun, `data.batch_size` is the global batch: each rank keeps every `world.size`-th sample of it from its
rank on, so the ranks' shares together are exactly the batch a single process would have seen; a streamed rank
reads and decodes only its share.
"""
import hashlib
import math
import sys
from typing import Protocol

import torch

from data.registry import Arrays, DataInfo, dataset_name, describe_data, find_dataset
from utils.config import require
from utils.cores import capped_workers
from utils.errors import UserError


class GeneratorPlans:
    """Plans drawn from one generator, pass after pass: its state is what a resume restores."""

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


class IndexedPlans:
    """Plans that follow from the seed and the pass's number: the state to resume is how many passes were made."""

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


class Plan:
    """One pass: which samples (by index) each batch holds on this rank, and their shifts."""

    def __init__(self, n, batch_size, plans=None, shift=0, world=None):
        self.n, self.batch_size, self.plans, self.shift = n, batch_size, plans, shift
        self.rank, self.world_size = (world.rank, world.size) if world is not None else (0, 1)

    def __len__(self):
        return math.ceil(self.n / self.batch_size)

    def batches(self):
        """(sample indices, dy, dx) of each batch of one pass, this rank's share; dy, dx are None without shift."""
        if self.plans is None:
            order, dy, dx = torch.arange(self.n), None, None
        else:
            order, dy, dx = self.plans.draw(self.n, self.batch_size, self.shift)
        for start in range(0, self.n, self.batch_size):
            share = slice(start + self.rank, min(start + self.batch_size, self.n), self.world_size)
            if self.plans is not None and min(self.batch_size, self.n - start) < self.world_size:
                break  # a last batch too small to give every rank a sample: no rank trains on it
            yield order[share], dy[share] if dy is not None else None, dx[share] if dx is not None else None


def prepare(images, mean, std, shift=0, dy=None, dx=None, memory_format=torch.contiguous_format):
    """uint8 images [B, C, H, W] -> float, normalised per channel, each moved by its (dy, dx) - shift pixels."""
    channels = images.shape[1]
    mean_t = torch.tensor(mean, device=images.device).view(1, channels, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, channels, 1, 1)
    images = (images.float() / 255.0 - mean_t) / std_t
    if shift:
        images = shifted(images, dy.to(images.device), dx.to(images.device), shift,
                         [-m / s for m, s in zip(mean, std)])
    return images.contiguous(memory_format=memory_format)


def shifted(images, dy, dx, shift, background):
    """Each image moved by (dy - shift, dx - shift) pixels, padding with the `background` value of each channel."""
    b, c, h, w = images.shape
    padded = torch.tensor(background, device=images.device).view(1, c, 1, 1).expand(b, c, h + 2 * shift,
                                                                                   w + 2 * shift).clone()
    padded[:, :, shift:shift + h, shift:shift + w] = images
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


class Resumable(Protocol):
    """What the training batches give `utils.epochs.Epochs`: a pass over them, their number, and the state of their
    draw, which last.pt keeps so that a resume continues with the pass an uninterrupted run would have drawn."""

    def __iter__(self): ...

    def __len__(self) -> int: ...

    def get_state(self): ...

    def set_state(self, state): ...


class Planned:
    """Batches that follow a Plan: as many as it has, and its state (what a resume restores) as theirs (Resumable)."""

    def __init__(self, plan):
        self.plan = plan

    def __len__(self):
        return len(self.plan)

    @property
    def num_samples(self):
        """Samples in one pass, over all ranks together."""
        return self.plan.n

    def get_state(self):
        return self.plan.plans.get_state()

    def set_state(self, state):
        self.plan.plans.set_state(state)


class Batches(Planned):
    """Batches of (normalised images, labels) drawn from uint8 tensors already on the device."""

    def __init__(self, images, labels, plan, mean, std, channels_last=False):
        super().__init__(plan)
        self.images, self.labels, self.mean, self.std = images, labels, mean, std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __iter__(self):
        for index, dy, dx in self.plan.batches():
            index = index.to(self.images.device)
            yield (prepare(self.images[index], self.mean, self.std, self.plan.shift, dy, dx, self.memory_format),
                   self.labels[index])


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded in DataLoader workers; a batch's keys are (index, dy, dx) and it is prepared there too."""

    def __init__(self, entries, mode, size, mean, std, shift, channels_last):
        self.entries, self.mode, self.size, self.mean, self.std, self.shift = entries, mode, size, mean, std, shift
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self):
        return len(self.entries)

    def raw(self, indices):
        """(uint8 images [B, C, H, W], int64 labels) of the files at `indices`."""
        from data.folder import decode

        images = torch.stack([torch.from_numpy(decode(self.entries[i][0], self.mode, self.size)) for i in indices])
        return images, torch.tensor([self.entries[i][1] for i in indices])

    def __getitems__(self, keys):
        index, dy, dx = keys
        images, labels = self.raw(index.tolist())
        return prepare(images, self.mean, self.std, self.shift, dy, dx, self.memory_format), labels


class Streamed(Planned):
    """Batches of one split streamed from image files by `workers` processes, in the order of a Plan."""

    def __init__(self, files, entries, plan, channels_last, workers, device):
        super().__init__(plan)
        info = files.info
        dataset = ImageFiles(entries, files.mode, files.size, info.mean, info.std, plan.shift, channels_last)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=_PlanSampler(plan), collate_fn=_as_is, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=_unused_generator())

    def __iter__(self):
        return iter(self.loader)


class _PlanSampler:
    """A DataLoader batch sampler whose 'indices' are whole batches' keys (index, dy, dx) of the plan's next pass."""

    def __init__(self, plan):
        self.plan = plan

    def __len__(self):
        return len(self.plan)

    def __iter__(self):
        return iter(self.plan.batches())


def _as_is(batch):
    return batch


def _unused_generator():
    """A generator of the DataLoader's own: it draws a seed for its workers at every pass, which would otherwise come
    from torch's global generator and change the model's dropout (nothing here uses the workers' seeds)."""
    return torch.Generator().manual_seed(0)


def decode_all(entries, mode, size, workers=0):
    """(uint8 images [N, C, H, W], int64 labels) of every (path, label) in `entries`, decoded by `workers` processes."""
    dataset = ImageFiles(entries, mode, size, None, None, 0, False)
    chunks = torch.utils.data.DataLoader(range(len(entries)), batch_size=512, num_workers=workers,
                                         collate_fn=dataset.raw, generator=_unused_generator())
    images, labels = zip(*chunks)
    return torch.cat(images), torch.cat(labels)


def split_train_val(num_train, val_size, split_seed):
    """(train indices, validation indices): a split of the training set fixed by `split_seed` alone."""
    check_val_size(val_size, num_train)
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:], order[:val_size]


def make_loaders(config, device, seed, world=None, cache_dir=None):
    """(train, validation, test) batches of the dataset `config['data']` selects, and its DataInfo.

    The training batches are shuffled and shifted from `seed`; `cache_dir` (the run table's folder) keeps what a
    dataset decodes once. With `world` (torchrun), each rank gets its share of every batch.
    """
    cfg = config["data"]
    check_batch_size(cfg["batch_size"], world.size if world is not None else 1)
    data = find_dataset(dataset_name(cfg)).load(cfg, cache_dir=cache_dir, world=world)
    info = data.info
    train_index, val_index = split_train_val(info.num_train, cfg["val_size"], cfg["split_seed"])
    plans = IndexedPlans(seed) if dataset_name(cfg) == "folder" else GeneratorPlans(seed)
    channels_last = config["model"].get("channels_last", False)
    train_plan = Plan(len(train_index), cfg["batch_size"], plans, cfg["augment_shift"], world)
    val_plan = Plan(len(val_index), cfg["eval_batch_size"], world=world)
    test_plan = Plan(info.num_test, cfg["eval_batch_size"], world=world)
    if isinstance(data, Arrays):
        def batches(images, labels, plan):
            return Batches(images.to(device), labels.to(device), plan, info.mean, info.std, channels_last)
        return (batches(data.train_images[train_index], data.train_labels[train_index], train_plan),
                batches(data.train_images[val_index], data.train_labels[val_index], val_plan),
                batches(data.test_images, data.test_labels, test_plan), info)
    asked = cfg.get("workers") or 0
    workers = capped_workers(asked)
    if workers < asked and (world is None or world.is_main):
        print(f"note: data.workers={asked} is more than the {workers} cores this process may use; {workers} worker "
              f"processes decode", file=sys.stderr)

    def streamed(entries, plan):
        return Streamed(data, entries, plan, channels_last, workers, device)
    return (streamed([data.train[i] for i in train_index.tolist()], train_plan),
            streamed([data.train[i] for i in val_index.tolist()], val_plan), streamed(data.test, test_plan), info)


def loader_workers(config, cache_dir=None):
    """How many worker processes this run's loaders start (each rank's): data.workers for a streamed folder, else 0.

    The CPU threads of training are shared with them."""
    from data.folder import streams

    cfg = config["data"]
    if dataset_name(cfg) != "folder" or not cfg.get("workers"):
        return 0
    return capped_workers(cfg["workers"]) if streams(cfg, describe_data(config, cache_dir)) else 0


def check_config(config, world_size=1):
    """The DataInfo of the dataset, after refusing what it could not give: a validation split larger than the
    training set, a batch the torchrun processes cannot share evenly, a dataset's own mistakes (read cheaply)."""
    cfg = config["data"]
    for key in ("batch_size", "eval_batch_size"):
        require(config, f"data.{key}", int, low=1)
    require(config, "data.split_seed", int)
    require(config, "data.augment_shift", int, low=0)
    require(config, "data.workers", int, low=0, optional=True)
    require(config, "data.memory_limit_mb", float, low=0, optional=True)
    check_batch_size(cfg["batch_size"], world_size)
    info = describe_data(config)
    if not isinstance(info, DataInfo):
        raise UserError(f"data.name {dataset_name(cfg)!r} is not an image dataset; this experiment trains on images "
                        f"(for text, python main.py --experiment=charlm --config=configs/charlm.yml)")
    check_val_size(require(config, "data.val_size", int), info.num_train)
    return info


def smallest_training_batch(config, info, world_size=1) -> int:
    """The fewest images one process trains on in one step: its share of the last, partial batch of a pass (a last
    batch too small to give every process an image is dropped, see Plan.batches)."""
    cfg = config["data"]
    last = (info.num_train - cfg["val_size"]) % cfg["batch_size"] or cfg["batch_size"]
    return (last if last >= world_size else cfg["batch_size"]) // world_size


def steps_per_epoch(config, info):
    """How many optimizer steps one pass over the training split of `info`'s dataset takes."""
    cfg = config["data"]
    return math.ceil((info.num_train - cfg["val_size"]) / cfg["batch_size"])


def check_batch_size(batch_size, world_size):
    if batch_size % world_size:
        raise UserError(f"data.batch_size {batch_size} is the global batch: it must divide evenly among "
                        f"{world_size} torchrun processes (make it a multiple of {world_size})")


def check_val_size(val_size, num_train):
    if not 0 < val_size < num_train:
        raise UserError(f"data.val_size must be between 1 and {num_train - 1} (the training set size - 1), "
                        f"got {val_size}")
