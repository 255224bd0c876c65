"""Batches of (inputs, targets) for the loops, from a dataset of Tensors (data/tensors.py): a table, or any tensors a
dataset in code returns.

Every pass follows an EpochPlan drawn from the seed and the pass's number alone (SeededDraws), so a resume, the
torchrun ranks and `data.limit` never change what an example sees. The inputs are standardised as the TensorInfo says
(a table's training rows), or as a trained model's TensorInfo says (`trained_on`: an evaluation on other data).
"""
import dataclasses
import math

import torch

from data.loaders import (check_batch_keys, check_batch_size, check_val_size, split_train_val, training_examples,
                          training_subset)
from data.plans import EpochPlan, PlannedBatches, SeededDraws
from data.registry import dataset_name, describe_data, find_dataset
from data.tensors import TensorInfo, check_fits
from utils.config import require
from utils.errors import UserError


class ExampleBatches(PlannedBatches):
    """Batches of (standardised inputs, targets) drawn from tensors already on the device."""

    def __init__(self, inputs, targets, plan, mean, std):
        super().__init__(plan)
        self.inputs, self.targets = inputs, targets
        shape = (1, *inputs.shape[1:])
        self.mean = torch.tensor(mean, dtype=inputs.dtype, device=inputs.device).reshape(shape) if mean else None
        self.std = torch.tensor(std, dtype=inputs.dtype, device=inputs.device).reshape(shape) if std else None

    def __iter__(self):
        for index, _, _ in self.plan.batches():
            index = index.to(self.inputs.device)
            inputs = self.inputs[index]
            if self.mean is not None:
                inputs = (inputs - self.mean) / self.std
            yield inputs, self.targets[index]


def make_example_loaders(config: dict, device: torch.device, seed: int, world=None,
                         trained_on: TensorInfo | None = None
                         ) -> tuple[ExampleBatches, ExampleBatches, ExampleBatches, TensorInfo]:
    """(train, validation, test) batches of the Tensors dataset `config['data']` names, and its TensorInfo.

    The training batches are shuffled from `seed` (the first `data.limit` training examples, when set); with `world`
    (torchrun), each rank gets its share of every batch. With `trained_on`, the inputs are standardised as they were
    for that model, and must have its shape."""
    cfg = config["data"]
    check_batch_size(cfg["batch_size"], world.size if world is not None else 1)
    data = find_dataset(dataset_name(cfg)).load(cfg, world=world)
    info = data.info
    if trained_on is not None:
        check_fits(info, trained_on)
        info = dataclasses.replace(info, mean=trained_on.mean, std=trained_on.std)
    train_index, val_index = split_train_val(info.num_train, cfg["val_size"], cfg["split_seed"])
    train_index = training_subset(train_index, cfg.get("limit"))
    train_plan = EpochPlan(len(train_index), cfg["batch_size"], SeededDraws(seed), world=world)

    def batches(inputs, targets, plan):
        return ExampleBatches(inputs.to(device), targets.to(device), plan, info.mean, info.std)
    return (batches(data.train_inputs[train_index], data.train_targets[train_index], train_plan),
            batches(data.train_inputs[val_index], data.train_targets[val_index],
                    EpochPlan(len(val_index), cfg["eval_batch_size"], world=world)),
            batches(data.test_inputs, data.test_targets, EpochPlan(info.num_test, cfg["eval_batch_size"], world=world)),
            info)


def check_config(config: dict, world_size: int = 1) -> TensorInfo:
    """The TensorInfo of the dataset, after refusing what it could not give (read once, then kept)."""
    check_batch_keys(config, world_size)
    require(config, "data.split_seed", int)
    info = describe_data(config)
    if not isinstance(info, TensorInfo):
        raise UserError(f"data.name {dataset_name(config['data'])!r} is not a dataset of tensors; this experiment "
                        f"reads a table (data.name: csv) or a dataset in code that returns data.tensors.Tensors")
    check_val_size(require(config, "data.val_size", int), info.num_train)
    training_examples(config, info.num_train)
    return info


def steps_per_epoch(config: dict, info: TensorInfo) -> int:
    return math.ceil(training_examples(config, info.num_train) / config["data"]["batch_size"])


def smallest_training_batch(config: dict, info: TensorInfo, world_size: int = 1) -> int:
    """The fewest examples one process trains on in one step (see data.loaders.smallest_training_batch)."""
    batch = config["data"]["batch_size"]
    last = training_examples(config, info.num_train) % batch or batch
    return (last if last >= world_size else batch) // world_size
