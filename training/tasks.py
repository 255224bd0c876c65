"""What the loops compute on a batch: the model's output, the loss to train on, and the sums that become metrics.

A task is any object with these five methods; the loops in loop.py call nothing else, so a batch may be any
structure of tensors (a tuple, a dict) that the task understands.

    forward(model, batch) -> output                 the model applied to the batch's inputs (under autocast)
    loss(output, batch) -> tensor                   the mean loss that training minimises
    train_sums(output, batch, loss) -> (sums, n)    {metric: summed tensor} of one training batch, and what it counts
    eval_sums(output, batch) -> (sums, n)           the same for an evaluation batch
    summarize(sums, n) -> {metric: float}           the metrics, from the sums (added over batches and ranks) and n

`n` is what the metrics average over and the throughput counts: samples for a classifier, tokens for a language
model.
"""
import math

import torch
import torch.nn.functional as F


class Classification:
    """Labels from logits: cross-entropy (with label smoothing in training) and accuracy, per sample."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def forward(self, model, batch):
        images, _ = batch
        return model(images)

    def loss(self, output, batch):
        return F.cross_entropy(output.float(), batch[1], label_smoothing=self.label_smoothing)

    def train_sums(self, output, batch, loss):
        labels = batch[1]
        return {"loss": loss * len(labels), "accuracy": (output.detach().argmax(dim=1) == labels).sum()}, len(labels)

    def eval_sums(self, output, batch):
        labels = batch[1]
        return {"accuracy": (output.argmax(dim=1) == labels).sum(),
                "loss": F.cross_entropy(output.float(), labels, reduction="sum")}, len(labels)

    def summarize(self, sums, count):
        return {name: value / count for name, value in sums.items()}


class NextToken:
    """The next token of each position from logits [B, T, vocab]: cross-entropy in nats per token, and in bits.

    A target equal to `ignore_index` is not scored (data.windows masks an evaluation window's overlap with the one
    before it so): the metrics average over the scored targets only."""

    def __init__(self, ignore_index: int):
        self.ignore_index = ignore_index

    def forward(self, model, batch):
        inputs, _ = batch
        return model(inputs)

    def loss(self, output, batch):
        return F.cross_entropy(output.float().flatten(0, 1), batch[1].flatten(), ignore_index=self.ignore_index)

    def train_sums(self, output, batch, loss):
        scored = (batch[1] != self.ignore_index).sum()
        return {"loss": loss * scored, "scored": scored}, batch[1].numel()

    def eval_sums(self, output, batch):
        targets = batch[1]
        loss = F.cross_entropy(output.float().flatten(0, 1), targets.flatten(), ignore_index=self.ignore_index,
                               reduction="sum")
        return {"loss": loss, "scored": (targets != self.ignore_index).sum()}, targets.numel()

    def summarize(self, sums, count):
        loss = sums["loss"] / sums["scored"]
        return {"loss": loss, "bpc": loss / math.log(2)}


class Regression:
    """Values from outputs [B, T] (or [B] for one): mean squared error to train on; mse, mae and r2 (the share of the
    targets' variance explained, averaged over the targets) to judge by, per target value."""

    def forward(self, model, batch):
        inputs, _ = batch
        return model(inputs)

    def loss(self, output, batch):
        return F.mse_loss(output.float().reshape(batch[1].shape), batch[1].float())

    def train_sums(self, output, batch, loss):
        targets = batch[1]
        return {"mse": loss * targets.numel()}, targets.numel()

    def eval_sums(self, output, batch):
        targets = batch[1].float().reshape(len(batch[1]), -1)
        error = output.float().reshape(targets.shape) - targets
        return {"squared": (error ** 2).sum(0), "absolute": error.abs().sum(0), "sum": targets.sum(0),
                "sum_of_squares": (targets ** 2).sum(0), "examples": torch.tensor(float(len(targets)),
                                                                                   device=targets.device)}, \
            targets.numel()

    def summarize(self, sums, count):
        if "squared" not in sums:  # a training pass: its mean loss
            return {"mse": sums["mse"] / count}
        squared = sums["squared"]
        variance = sums["sum_of_squares"] - sums["sum"] ** 2 / sums["examples"]  # n times each target's variance
        return {"mse": float(squared.sum()) / count, "mae": float(sums["absolute"].sum()) / count,
                "r2": float((1 - squared / variance.clamp_min(1e-12)).mean())}


def to_device(batch, device):
    """`batch` (a tensor, or a tuple, list or dict of them, nested) with every tensor on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch
