"""Batches of (inputs, targets) token windows from a text corpus, for next-token prediction.

An epoch is one pass over the training text's windows: `data.block_size` characters each, in an order and at offsets
that follow from the seed and the pass's number alone (data.plans.SeededDraws), so a resume, the torchrun ranks
and the batch's split among them never change what a window holds. Validation and test cover their whole split: every
character but the first is predicted exactly once, from up to `block_size` characters before it (the last window is
moved back to end with the split, its overlap masked), so the loss is over the whole split, not a sample of it.
"""
import math

import torch

from data.loaders import check_batch_keys, check_batch_size, training_subset
from data.plans import EpochPlan, PlannedBatches, SeededDraws
from data.registry import check_fits, dataset_name, describe_data, find_dataset
from data.text import TextInfo
from utils.config import require
from utils.errors import UserError

IGNORED = -100  # a target that is not scored: the task's ignore_index (F.cross_entropy's default)


class TokenWindows(PlannedBatches):
    """Batches of (inputs [B, T], targets [B, T]) int64 token IDs cut from `tokens` at the windows an EpochPlan draws.

    For training, window i starts at i * T plus the shift the plan draws for it; for evaluation, at `starts[i]`, with
    the targets before `first_scored[i]` masked.
    """

    def __init__(self, tokens, plan, block_size, starts=None, first_scored=None):
        super().__init__(plan)
        self.tokens, self.block_size, self.starts, self.first_scored = tokens, block_size, starts, first_scored
        self._span = torch.arange(block_size + 1, device=tokens.device)

    def __iter__(self):
        for index, shift, _ in self.plan.batches():
            index = index.to(self.tokens.device)
            if self.starts is None:
                starts = index * self.block_size  # a window of one character is never shifted
                if shift is not None:
                    starts = starts + shift.to(self.tokens.device)
            else:
                starts = self.starts[index]
            chunk = self.tokens[starts[:, None] + self._span]
            inputs, targets = chunk[:, :-1], chunk[:, 1:]
            if self.first_scored is not None:
                targets = targets.masked_fill(self._span[None, :-1] < self.first_scored[index][:, None], IGNORED)
            yield inputs, targets


def training_windows(tokens, block_size, batch_size, seed, world=None):
    """The training split's TokenWindows: len // block_size - 2 windows a pass, each moved by up to block_size // 2."""
    shift = block_size // 2
    count = len(tokens) // block_size - 2  # the last window, moved by the largest shift, still ends in the text
    plan = EpochPlan(count, batch_size, SeededDraws(seed), shift, world)
    return TokenWindows(tokens, plan, block_size)


def evaluation_windows(tokens, block_size, batch_size, world=None):
    """TokenWindows that predict every token of `tokens` but the first exactly once (see the module docstring)."""
    starts, first_scored = covering_windows(len(tokens), block_size)
    plan = EpochPlan(len(starts), batch_size, world=world)
    return TokenWindows(tokens, plan, block_size, torch.tensor(starts, device=tokens.device),
                        torch.tensor(first_scored, device=tokens.device))


def covering_windows(length, block_size):
    """(starts, first scored position) of windows of block_size + 1 tokens that score each of tokens 1..length-1
    once: back to back, then one ending with the text whose overlap with the others is not scored."""
    if length < block_size + 1:
        raise UserError(f"a split of {length} characters is shorter than data.block_size {block_size} + 1")
    full = (length - 1) // block_size
    starts, first_scored = [i * block_size for i in range(full)], [0] * full
    if full * block_size < length - 1:
        last = length - 1 - block_size
        starts.append(last)
        first_scored.append(full * block_size - last)
    return starts, first_scored


def make_text_loaders(config: dict, device: torch.device, seed: int, world=None,
                      trained_on: TextInfo | None = None) -> tuple[TokenWindows, TokenWindows, TokenWindows, TextInfo]:
    """(train, validation, test) TokenWindows of the corpus `config['data']` names, and its TextInfo.

    The training windows are ordered and moved from `seed`; with `world` (torchrun), each rank gets its share of every
    batch. With `trained_on` (the TextInfo a model was trained on), characters are numbered by that model's
    vocabulary, and a text with a character outside it is refused."""
    cfg = config["data"]
    check_batch_size(cfg["batch_size"], world.size if world is not None else 1)
    dataset = find_dataset(dataset_name(cfg))
    if trained_on is not None:
        check_fits(dataset.describe(cfg), trained_on)
    corpus = dataset.load(cfg, world=world, vocab=trained_on.vocab if trained_on is not None else None)
    block, batch, eval_batch = cfg["block_size"], cfg["batch_size"], cfg["eval_batch_size"]
    train = corpus.train[:training_characters(config, corpus.info)]
    return (training_windows(train.to(device), block, batch, seed, world),
            evaluation_windows(corpus.val.to(device), block, eval_batch, world),
            evaluation_windows(corpus.test.to(device), block, eval_batch, world), corpus.info)


def check_config(config: dict, world_size: int = 1) -> TextInfo:
    """The TextInfo of the corpus, after refusing what it could not give: windows longer than a split, a batch the
    torchrun processes cannot share, an image dataset."""
    check_batch_keys(config, world_size)
    block_size = require(config, "data.block_size", int, low=1)
    require(config, "data.val_size", int, low=1)
    info = describe_data(config)
    if not isinstance(info, TextInfo):
        raise UserError(f"data.name {dataset_name(config['data'])!r} is not a text corpus; this experiment reads "
                        f"text (data.name: shakespeare_char, or a corpus of yours in data/registry.py)")
    shortest = min(training_characters(config, info), info.num_val, info.num_test)
    if shortest < 3 * block_size + 1:
        raise UserError(f"data.block_size {block_size} leaves a split of {shortest} characters too few windows; "
                        f"use a smaller block_size or a longer text")
    return info


def smallest_training_batch(config: dict, info: TextInfo, world_size: int = 1) -> int:
    """The fewest windows one process trains on in one step: its share of the last, partial batch of a pass (a last
    batch too small to give every process a window is dropped, see EpochPlan.batches)."""
    cfg = config["data"]
    last = (training_characters(config, info) // cfg["block_size"] - 2) % cfg["batch_size"] or cfg["batch_size"]
    return (last if last >= world_size else cfg["batch_size"]) // world_size


def steps_per_epoch(config: dict, info: TextInfo) -> int:
    """How many optimizer steps one pass over the training windows takes."""
    cfg = config["data"]
    return math.ceil((training_characters(config, info) // cfg["block_size"] - 2) / cfg["batch_size"])


def training_characters(config: dict, info: TextInfo) -> int:
    """How many characters of the training split a pass trains on: the first data.limit, when set."""
    return len(training_subset(range(info.num_train), config["data"].get("limit")))
