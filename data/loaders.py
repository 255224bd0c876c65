"""Batches of (normalised images, labels) for the loops: from tensors in memory, or streamed from image files.

Every pass follows an EpochPlan (data/plans.py): the built-in datasets draw it from a generator whose state is part of
`last.pt`, image folders from the seed and the pass's number alone, so a folder held in memory gives exactly the
batches it gives streamed, whatever the number of worker processes or torchrun ranks (a streamed rank reads and
decodes only its share).
"""
import dataclasses
import math
import os
import signal
import sys
import threading
from pathlib import Path

import torch

from data.decoding import ImageFiles, prepare, unused_generator
from data.folder import streams
from data.plans import EpochPlan, GeneratorDraws, PlanBatchSampler, PlannedBatches, SeededDraws
from data.registry import Arrays, DataInfo, check_fits, dataset_name, describe_data, find_dataset
from utils.config import require
from utils.cores import capped_workers
from utils.errors import UserError


class Batches(PlannedBatches):
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


class Streamed(PlannedBatches):
    """Batches of one split streamed from image files by `workers` processes, in the order of an EpochPlan,
    normalised as `info` says."""

    def __init__(self, files, entries, plan, channels_last, workers, device, info):
        super().__init__(plan)
        dataset = ImageFiles(entries, files.mode, files.size, info.mean, info.std, plan.shift, channels_last)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=PlanBatchSampler(plan), collate_fn=_as_is, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=unused_generator(),
            worker_init_fn=_leave_stops_to_the_run)

    def __iter__(self):
        return iter(self.loader)


def _as_is(batch):
    return batch


def _leave_stops_to_the_run(worker_id):
    """A worker ignores Ctrl-C, and a SIGTERM that does not come from its run, which a terminal or a cluster sends to
    the whole process group: the run decides when to stop (after the step it is in, writing its resume point) and
    ends its workers itself, with a SIGTERM of its own at the latest. A worker killed by the group's signal would
    fail the run's step in the middle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):  # Linux; elsewhere a SIGTERM ends a worker as it always did
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # every thread of the worker: only this one sees it
        threading.Thread(target=_end_on_the_runs_sigterm, args=(os.getppid(),), daemon=True).start()


def _end_on_the_runs_sigterm(run):
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == run:
            os._exit(0)


def training_subset(train_index, limit):
    """The first `limit` of the training examples `train_index` (in the split's fixed order: a random subset that
    the seed of the split alone fixes), all of them when `limit` is None; a limit above their number is refused."""
    if limit is None:
        return train_index
    if limit > len(train_index):
        raise UserError(f"data.limit {limit} is more than the {len(train_index)} training examples; lower it, or "
                        f"drop it (null) to train on all of them")
    return train_index[:limit]


def split_train_val(num_train, val_size, split_seed):
    """(train indices, validation indices): a split of the training set fixed by `split_seed` alone."""
    check_val_size(val_size, num_train)
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:], order[:val_size]


def make_loaders(config: dict, device: torch.device, seed: int, world=None, cache_dir: Path | None = None,
                 trained_on: DataInfo | None = None) -> tuple[PlannedBatches, PlannedBatches, PlannedBatches, DataInfo]:
    """(train, validation, test) batches of the dataset `config['data']` selects, and its DataInfo.

    The training batches are shuffled and shifted from `seed`; `cache_dir` (the run table's folder) keeps what a
    dataset decodes once. With `world` (torchrun), each rank gets its share of every batch. With `trained_on` (the
    DataInfo a model was trained on), the images are normalised as they were for that model, and must have its shape
    and number of classes (another dataset, evaluated by a trained model).
    """
    cfg = config["data"]
    check_batch_size(cfg["batch_size"], world.size if world is not None else 1)
    data = find_dataset(dataset_name(cfg)).load(cfg, cache_dir=cache_dir, world=world)
    info = data.info if trained_on is None else as_trained(data.info, trained_on)
    train_index, val_index = split_train_val(info.num_train, cfg["val_size"], cfg["split_seed"])
    train_index = training_subset(train_index, cfg.get("limit"))
    draws = SeededDraws(seed) if dataset_name(cfg) == "folder" else GeneratorDraws(seed)
    channels_last = config["model"].get("channels_last", False)
    train_plan = EpochPlan(len(train_index), cfg["batch_size"], draws, cfg["augment_shift"], world)
    val_plan = EpochPlan(len(val_index), cfg["eval_batch_size"], world=world)
    test_plan = EpochPlan(info.num_test, cfg["eval_batch_size"], world=world)
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
        return Streamed(data, entries, plan, channels_last, workers, device, info)
    return (streamed([data.train[i] for i in train_index.tolist()], train_plan),
            streamed([data.train[i] for i in val_index.tolist()], val_plan), streamed(data.test, test_plan), info)


def as_trained(info: DataInfo, trained: DataInfo) -> DataInfo:
    """`info` normalised as `trained` was, after refusing images that a model trained on `trained` cannot take."""
    check_fits(info, trained)
    return dataclasses.replace(info, mean=trained.mean, std=trained.std)


def loader_workers(config, cache_dir=None):
    """How many worker processes this run's loaders start (each rank's): data.workers for a streamed folder, else 0.

    The CPU threads of training are shared with them."""
    cfg = config["data"]
    if dataset_name(cfg) != "folder" or not cfg.get("workers"):
        return 0
    return capped_workers(cfg["workers"]) if streams(cfg, describe_data(config, cache_dir)) else 0


def check_config(config: dict, world_size: int = 1) -> DataInfo:
    """The DataInfo of the dataset, after refusing what it could not give: a validation split larger than the
    training set, a batch the torchrun processes cannot share evenly, a dataset's own mistakes (read cheaply)."""
    cfg = config["data"]
    check_batch_keys(config, world_size)
    require(config, "data.split_seed", int)
    require(config, "data.augment_shift", int, low=0)
    require(config, "data.workers", int, low=0, optional=True)
    require(config, "data.memory_limit_mb", float, low=0, optional=True)
    info = describe_data(config)
    if not isinstance(info, DataInfo):
        raise UserError(f"data.name {dataset_name(cfg)!r} is not an image dataset; this experiment trains on images "
                        f"(for text, python main.py --experiment=charlm --config=configs/charlm.yml)")
    check_val_size(require(config, "data.val_size", int), info.num_train)
    training_examples(config, info.num_train)
    return info


def check_batch_keys(config: dict, world_size: int = 1) -> None:
    """Refuse the keys every dataset's loaders read that need no data to check: the batch sizes (the global batch
    shared evenly by the torchrun processes) and data.limit."""
    for key in ("batch_size", "eval_batch_size"):
        require(config, f"data.{key}", int, low=1)
    require(config, "data.limit", int, low=1, optional=True)
    check_batch_size(config["data"]["batch_size"], world_size)


def training_examples(config: dict, num_train: int) -> int:
    """How many of a training set's `num_train` examples one pass trains on: those the validation split leaves, or
    the first data.limit of them."""
    cfg = config["data"]
    return len(training_subset(range(num_train - cfg["val_size"]), cfg.get("limit")))


def smallest_training_batch(config: dict, info: DataInfo, world_size: int = 1) -> int:
    """The fewest images one process trains on in one step: its share of the last, partial batch of a pass (a last
    batch too small to give every process an image is dropped, see EpochPlan.batches)."""
    cfg = config["data"]
    last = training_examples(config, info.num_train) % cfg["batch_size"] or cfg["batch_size"]
    return (last if last >= world_size else cfg["batch_size"]) // world_size


def steps_per_epoch(config: dict, info: DataInfo) -> int:
    """How many optimizer steps one pass over the training split of `info`'s dataset takes."""
    cfg = config["data"]
    return math.ceil(training_examples(config, info.num_train) / cfg["batch_size"])


def check_batch_size(batch_size, world_size):
    if batch_size % world_size:
        raise UserError(f"data.batch_size {batch_size} is the global batch: it must divide evenly among "
                        f"{world_size} torchrun processes (make it a multiple of {world_size})")


def check_val_size(val_size, num_train):
    if not 0 < val_size < num_train:
        raise UserError(f"data.val_size must be between 1 and {num_train - 1} (the training set size - 1), "
                        f"got {val_size}")
