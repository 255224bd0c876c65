"""A multilayer perceptron for examples held as tensors (a table's rows): what the tabular experiment trains."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from utils.config import require
from utils.errors import UserError

if TYPE_CHECKING:  # for the hints only: the data's description comes from data/
    from data.tensors import TensorInfo


class MLP(nn.Module):
    """Linear layers of `hidden` widths with ReLU and dropout between them, from `inputs` flattened values to
    `outputs`. With `scale` (each output's mean and standard deviation), the last layer predicts standardised values
    and the model answers in the targets' own units: the loss and metrics are the data's, the optimisation well
    conditioned whatever their scale."""

    def __init__(self, inputs: int, outputs: int, hidden: list[int], dropout: float = 0.0,
                 scale: tuple[tuple, tuple] | None = None):
        super().__init__()
        mean, std = scale if scale else ((0.0,) * outputs, (1.0,) * outputs)
        self.register_buffer("target_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(std, dtype=torch.float32))
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(inputs, width), nn.ReLU(), nn.Dropout(dropout)]
            inputs = width
        layers.append(nn.Linear(inputs, outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) * self.target_std + self.target_mean


def check_config(config: dict) -> None:
    """Refuse layer widths or a dropout MLP could not take (model.hidden, model.dropout)."""
    hidden = require(config, "model.hidden", list)  # []: a linear model
    if any(width < 1 for width in hidden):
        raise UserError(f"config key 'model.hidden' must list layer widths >= 1 ([] for a linear model), got {hidden}")
    require(config, "model.dropout", float, low=0, below=1)


def make_model(config: dict, info: TensorInfo, device: torch.device) -> MLP:
    """The MLP of `config['model']` for the examples `info` describes: one output per class or target value."""
    model = config["model"]
    scale = (info.target_mean, info.target_std) if info.target_mean else None
    return MLP(math.prod(info.input_shape), info.output_size, model["hidden"], model["dropout"], scale).to(device)
