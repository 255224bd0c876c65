"""Optimizer and learning-rate schedule factories."""
import torch

from utils.errors import UserError


def make_optimizer(model, config):
    """The optimizer described by `config['training']`."""
    cfg = config["training"]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["learning_rate"], momentum=cfg["momentum"],
                               nesterov=cfg["momentum"] > 0, weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    raise UserError(f"training.optimizer must be sgd or adamw, got {cfg['optimizer']!r}")


def make_scheduler(optimizer, config, steps_per_epoch):
    """The learning-rate schedule described by `config['training']`, stepped once per batch."""
    cfg = config["training"]
    total_steps = cfg["num_epochs"] * steps_per_epoch
    if cfg["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["learning_rate"], total_steps=total_steps,
                                                   pct_start=cfg["warmup_fraction"])
    if cfg["schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise UserError(f"training.schedule must be onecycle or constant, got {cfg['schedule']!r}")
