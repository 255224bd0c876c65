"""Optimizer and learning-rate schedule factories."""
import torch

from utils.errors import UserError


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "constant")


def check_config(config):
    """Refuse an optimizer or schedule this module does not make."""
    cfg = config["training"]
    if cfg["optimizer"] not in OPTIMIZERS:
        raise UserError(f"training.optimizer must be {' or '.join(OPTIMIZERS)}, got {cfg['optimizer']!r}")
    if cfg["schedule"] not in SCHEDULES:
        raise UserError(f"training.schedule must be {' or '.join(SCHEDULES)}, got {cfg['schedule']!r}")


def make_optimizer(model, config):
    """The optimizer described by `config['training']`."""
    check_config(config)
    cfg = config["training"]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["learning_rate"], momentum=cfg["momentum"],
                               nesterov=cfg["momentum"] > 0, weight_decay=cfg["weight_decay"])
    return torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])


def make_scheduler(optimizer, config, steps_per_epoch):
    """The learning-rate schedule described by `config['training']`, stepped once per batch."""
    check_config(config)
    cfg = config["training"]
    total_steps = cfg["num_epochs"] * steps_per_epoch
    if cfg["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["learning_rate"], total_steps=total_steps,
                                                   pct_start=cfg["warmup_fraction"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # constant
