"""Data that is neither images nor text: examples as any tensors (features of a table, signals, embeddings), with
float targets (regression) or integer ones (classes).

A dataset of this kind loads `Tensors`; its description is a `TensorInfo`, what a model needs to know of the data
(one example's input shape, what it outputs per example) rather than channels and classes. data/examples.py batches
them; a table of numbers in a CSV file is one by name (data/table.py). Nothing here imports torch at import time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from utils.errors import UserError

if TYPE_CHECKING:  # for the hints only: nothing here imports torch at import time
    from torch import Tensor


@dataclass(frozen=True)
class TensorInfo:
    """What a model and the loaders need to know of examples held as tensors."""
    input_shape: tuple  # one example's inputs
    target_shape: tuple  # one example's targets: () for a class or a single number
    output_size: int  # what a model outputs per example: the number of classes, or of target values
    classes: tuple  # integer targets: the classes' names; float targets: ()
    mean: tuple  # per input value, what the loaders subtract before dividing by std; (): inputs used as they are
    std: tuple
    num_train: int  # examples in the training split (the validation examples are taken from it)
    num_test: int
    inputs: tuple = ()  # a table's input column names, in order
    targets: tuple = ()  # a table's target column names
    target_mean: tuple = ()  # float targets: each target value's mean and standard deviation over the training
    target_std: tuple = ()  # examples, for a model to predict in their scale (models/mlp.py); (): class targets

    @property
    def regression(self) -> bool:
        """Whether the targets are numbers to predict (float) rather than classes (integers)."""
        return not self.classes


@dataclass
class Tensors:
    """A dataset held in memory as tensors: inputs [N, ...] (any numbers) and targets [N, ...] per split; float
    targets are values to predict, integer targets [N] are classes (named by `classes`, by default their numbers).

    `mean` and `std` (one number per input value, flattened) standardise the inputs in the loaders; None: the inputs
    are used as they are."""
    train_inputs: Tensor
    train_targets: Tensor
    test_inputs: Tensor
    test_targets: Tensor
    classes: tuple | None = None
    mean: tuple | None = None
    std: tuple | None = None
    inputs: tuple = ()
    targets: tuple = ()
    info: TensorInfo | None = field(default=None, repr=False)


def with_tensor_info(tensors: Tensors, name: str) -> Tensors:
    """`tensors` checked (one line naming dataset `name` and what is wrong) and its TensorInfo filled in."""
    import torch

    splits = {"train": (tensors.train_inputs, tensors.train_targets), "test": (tensors.test_inputs,
                                                                               tensors.test_targets)}
    for split, (inputs, targets) in splits.items():
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise UserError(f"dataset {name!r}: {split}_inputs and {split}_targets must be tensors, got "
                            f"{type(inputs).__name__} and {type(targets).__name__}")
        if inputs.ndim < 1 or targets.ndim < 1 or len(inputs) != len(targets) or not len(inputs):
            raise UserError(f"dataset {name!r}: {split}_inputs {tuple(inputs.shape)} and {split}_targets "
                            f"{tuple(targets.shape)} must hold the same number (at least one) of examples")
        if inputs.dtype == torch.bool or inputs.is_complex() or targets.is_complex() or targets.dtype == torch.bool:
            raise UserError(f"dataset {name!r}: {split} tensors must hold real numbers, got {inputs.dtype} inputs "
                            f"and {targets.dtype} targets")
        for what, tensor in (("inputs", inputs), ("targets", targets)):
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                example = int((~torch.isfinite(tensor.reshape(len(tensor), -1))).any(1).nonzero()[0])
                raise UserError(f"dataset {name!r}: {split}_{what} hold NaN or infinity (example {example}); "
                                f"remove or fill it")
    train_inputs, train_targets = tensors.train_inputs, tensors.train_targets
    if tensors.test_inputs.shape[1:] != train_inputs.shape[1:] or \
            tensors.test_targets.shape[1:] != train_targets.shape[1:]:
        raise UserError(f"dataset {name!r}: train and test examples must have one shape; inputs "
                        f"{tuple(train_inputs.shape[1:])} and {tuple(tensors.test_inputs.shape[1:])}, targets "
                        f"{tuple(train_targets.shape[1:])} and {tuple(tensors.test_targets.shape[1:])}")
    if train_targets.is_floating_point() != tensors.test_targets.is_floating_point():
        raise UserError(f"dataset {name!r}: train and test targets must both be floats (values) or both integers "
                        f"(classes)")
    target_mean: tuple = ()
    target_std: tuple = ()
    classes: tuple
    if train_targets.is_floating_point():
        classes, output_size = (), math.prod(train_targets.shape[1:])
        tensors.train_targets, tensors.test_targets = train_targets.float(), tensors.test_targets.float()
        values = train_targets.double().reshape(len(train_targets), -1)
        spread = values.std(0).nan_to_num(1.0) if len(values) > 1 else torch.ones(values.shape[1],
                                                                                   dtype=torch.float64)
        target_mean, target_std = tuple(values.mean(0).tolist()), tuple(spread.masked_fill(spread == 0, 1).tolist())
    else:
        if train_targets.ndim != 1:
            raise UserError(f"dataset {name!r}: integer targets are classes, one per example ([N]); got "
                            f"{tuple(train_targets.shape)} (float targets are values to predict)")
        low = min(int(train_targets.min()), int(tensors.test_targets.min()))
        high = max(int(train_targets.max()), int(tensors.test_targets.max()))
        classes = tuple(tensors.classes) if tensors.classes is not None else tuple(str(i) for i in range(high + 1))
        if low < 0 or high >= len(classes):
            raise UserError(f"dataset {name!r}: class targets must lie in 0..{len(classes) - 1} ({len(classes)} "
                            f"classes), got {low}..{high}")
        output_size = len(classes)
        tensors.train_targets, tensors.test_targets = train_targets.long(), tensors.test_targets.long()
    size = math.prod(train_inputs.shape[1:])
    mean, std = tensors.mean, tensors.std
    if (mean is None) != (std is None) or (mean is not None and std is not None and not len(mean) == len(std) == size):
        raise UserError(f"dataset {name!r}: mean and std must both be given, one number per input value ({size}), "
                        f"or both be None")
    if tensors.std is not None and min(tensors.std) <= 0:
        raise UserError(f"dataset {name!r}: std must be positive, got {min(tensors.std)}")
    tensors.train_inputs, tensors.test_inputs = train_inputs.float(), tensors.test_inputs.float()
    tensors.info = TensorInfo(tuple(train_inputs.shape[1:]), tuple(train_targets.shape[1:]), output_size, classes,
                              tuple(tensors.mean or ()), tuple(tensors.std or ()), len(train_inputs),
                              len(tensors.test_inputs), tuple(tensors.inputs), tuple(tensors.targets), target_mean,
                              target_std)
    return tensors


def check_fits(info: TensorInfo, trained: TensorInfo) -> None:
    """Refuse examples a model trained on `trained` cannot take: another input shape or output."""
    if (info.input_shape, info.output_size, info.regression) != (trained.input_shape, trained.output_size,
                                                                 trained.regression):
        raise UserError(f"the data's examples are {list(info.input_shape)} inputs with {info.output_size} "
                        f"{'values' if info.regression else 'classes'} to predict; the model was trained on "
                        f"{list(trained.input_shape)} inputs with {trained.output_size} "
                        f"{'values' if trained.regression else 'classes'}: give it data of that shape")
    if trained.inputs and info.inputs and info.inputs != trained.inputs:
        raise UserError(f"the table's input columns are {', '.join(info.inputs)}; the model was trained on "
                        f"{', '.join(trained.inputs)}, in that order")
