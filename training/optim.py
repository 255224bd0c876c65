"""Optimizer and learning-rate schedule factories."""
import torch

from utils.config import require
from utils.errors import UserError


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "constant")
DECAY_SCOPES = ("all", "matrices")  # training.weight_decay_scope: every parameter, or only the weight matrices


def check_config(config: dict, steps_per_epoch: int | None = None) -> None:
    """Refuse an optimizer or schedule this module does not make, and (given the steps of an epoch) a onecycle
    schedule too short to warm up. Each key is required only where it is used: momentum by sgd, beta2 (optional)
    by adamw, warmup_fraction by onecycle."""
    require(config, "training.num_epochs", int, low=1)
    require(config, "training.learning_rate", float, low=0)
    require(config, "training.weight_decay", float, low=0)
    cfg = config["training"]
    if require(config, "training.optimizer", str) not in OPTIMIZERS:
        raise UserError(f"training.optimizer must be {' or '.join(OPTIMIZERS)}, got {cfg['optimizer']!r}")
    if require(config, "training.schedule", str) not in SCHEDULES:
        raise UserError(f"training.schedule must be {' or '.join(SCHEDULES)}, got {cfg['schedule']!r}")
    if cfg["optimizer"] == "sgd":
        require(config, "training.momentum", float, low=0, high=1)
    else:
        require(config, "training.beta2", float, low=0, below=1, optional=True)
    scope = require(config, "training.weight_decay_scope", str, optional=True)
    if scope is not None and scope not in DECAY_SCOPES:
        raise UserError(f"training.weight_decay_scope must be {' or '.join(DECAY_SCOPES)}, got {scope!r}")
    require(config, "training.fused", bool, optional=True)
    if cfg["schedule"] == "onecycle":
        # below 1: OneCycleLR divides by the steps left after the warm-up too
        require(config, "training.warmup_fraction", float, low=0, below=1)
    total_steps = cfg["num_epochs"] * steps_per_epoch if steps_per_epoch else None
    # OneCycleLR divides by its warm-up's length in steps (less one): it must be more than one step.
    if cfg["schedule"] == "onecycle" and total_steps and cfg["warmup_fraction"] * total_steps <= 1:
        raise UserError(f"training.warmup_fraction {cfg['warmup_fraction']} of {total_steps} steps leaves the onecycle "
                        f"schedule no warm-up; train more steps (training.num_epochs, a smaller data.batch_size), "
                        f"raise warmup_fraction, or use training.schedule=constant")


def make_optimizer(model: torch.nn.Module, config: dict) -> torch.optim.Optimizer:
    """The optimizer described by `config['training']`.

    With `weight_decay_scope: matrices`, only weight matrices decay (not biases, norms' gains and shifts, nor
    embeddings, a weight tied to one included). The multi-tensor ("foreach") implementation is used on the CPU, where
    it gives the very numbers of the one-tensor loop (a test checks it); `fused: true` asks for the fused kernels,
    which round otherwise.
    """
    check_config(config)
    cfg = config["training"]
    parameters = decay_groups(model, cfg["weight_decay"]) if cfg.get("weight_decay_scope") == "matrices" \
        else model.parameters()
    device = next(model.parameters()).device
    implementation = {"fused": True} if cfg.get("fused") else {"foreach": True} if device.type == "cpu" else {}
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(parameters, lr=cfg["learning_rate"], momentum=cfg["momentum"],
                               nesterov=cfg["momentum"] > 0, weight_decay=cfg["weight_decay"], **implementation)
    betas = (0.9, cfg["beta2"]) if cfg.get("beta2") is not None else (0.9, 0.999)  # torch's default
    return torch.optim.AdamW(parameters, lr=cfg["learning_rate"], betas=betas, weight_decay=cfg["weight_decay"],
                             **implementation)


NORMS = tuple(getattr(torch.nn, name) for name in ("LayerNorm", "GroupNorm", "LocalResponseNorm", "RMSNorm")
              if hasattr(torch.nn, name)) + (torch.nn.modules.batchnorm._NormBase,)  # BatchNorm, InstanceNorm


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list:
    """The optimizer's parameter groups when only weight matrices decay: those of layers that multiply (linear,
    convolution, attention) with `weight_decay`, the rest (biases, norms, embeddings) without."""
    kept = set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias" or parameter.ndim < 2 or isinstance(module, (*NORMS, torch.nn.Embedding)):
                kept.add(id(parameter))  # an embedding tied to an output layer is an embedding: not decayed
    parameters = list(model.parameters())  # each once, a tied one included
    groups = [{"params": [p for p in parameters if id(p) not in kept], "weight_decay": weight_decay},
              {"params": [p for p in parameters if id(p) in kept], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def make_scheduler(optimizer: torch.optim.Optimizer, config: dict,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule described by `config['training']`, stepped once per batch."""
    check_config(config)
    cfg = config["training"]
    total_steps = cfg["num_epochs"] * steps_per_epoch
    if cfg["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["learning_rate"], total_steps=total_steps,
                                                   pct_start=cfg["warmup_fraction"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # constant
