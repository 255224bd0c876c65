"""A small causal transformer over tokens (a character-level language model), written with torch.nn.

Pre-norm blocks of causal self-attention and an MLP, learned position embeddings, the output layer tied to the token
embedding: the GPT-2 shape that nanoGPT trains, small enough for a CPU.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.config import require
from utils.cores import check_fits_in_memory
from utils.errors import UserError

if TYPE_CHECKING:  # for the hints only: the data's description comes from data/
    from data.text import TextInfo


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = (part.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2)
                   for part in self.qkv(x).split(width, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj_dropout(self.proj(y.transpose(1, 2).reshape(batch, length, width)))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attention = CausalSelfAttention(n_embd, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """Logits [B, T, vocab_size] of the next token at every position of token IDs [B, T] (T <= block_size)."""

    def __init__(self, vocab_size, block_size, n_layer=4, n_head=4, n_embd=128, dropout=0.0):
        super().__init__()
        self.block_size = block_size
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(n_embd, n_head, dropout) for _ in range(n_layer)))
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # tied, as in GPT-2 and nanoGPT
        self.apply(_init_weights)
        for name, parameter in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        return self.head(self.norm(self.blocks(x)))


def _init_weights(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


@torch.no_grad()
def generate(model: CharTransformer, prompt: list, length: int, seed: int, temperature: float = 1.0) -> list:
    """`length` token IDs sampled from `model` after the IDs of `prompt`, from a generator seeded by `seed` alone, so
    that the same weights always write the same text."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.tensor([prompt], dtype=torch.int64, device=device)
    written = []
    for _ in range(length):
        logits = model(tokens[:, -model.block_size:])[0, -1].float().cpu() / temperature
        # A model that diverged (a learning rate far too high) gives NaN: it writes noise, as it would, not a crash.
        logits = torch.nan_to_num(logits, nan=0.0, posinf=1e4, neginf=-1e4)
        token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        written.append(int(token))
        tokens = torch.cat([tokens, token.to(device).view(1, 1)], dim=1)
    return written


def check_config(config: dict, vocab_size: int) -> None:
    """Refuse a transformer that cannot be built or trained here for a text of `vocab_size` characters: a width its
    heads do not divide, a negative dropout, more parameters and logits than this machine's memory holds."""
    require(config, "model.n_layer", int, low=1)
    n_head = require(config, "model.n_head", int, low=1)
    n_embd = require(config, "model.n_embd", int, low=1)
    require(config, "model.dropout", float, low=0, below=1)
    if n_embd % n_head:
        raise UserError(f"model.n_embd {n_embd} must divide evenly among model.n_head {n_head} heads")
    n_layer, block = config["model"]["n_layer"], config["data"]["block_size"]
    # Each block: attention's 4 n_embd^2 and the MLP's 8 n_embd^2 weights (the biases and norms are few); the token
    # table (tied to the output layer) a row a character, the positions block_size. A batch's logits, a float a
    # character at each place, are held three times (themselves, their softmax, their gradient): with a vocabulary of
    # a million characters they outweigh the rest.
    batch = max(config["data"]["batch_size"], config["data"]["eval_batch_size"])
    check_fits_in_memory(n_layer * 12 * n_embd ** 2 + (vocab_size + block) * n_embd,
                         f"the transformer of model.n_layer {n_layer} and model.n_embd {n_embd}",
                         activations=3 * 4 * batch * block * vocab_size,
                         of_what=f"logits over {vocab_size:,} characters")


def make_model(config: dict, info: TextInfo, device: torch.device) -> CharTransformer:
    """The CharTransformer described by `config['model']` for the corpus `info` describes (a TextInfo), with the
    context of `data.block_size`, on `device`."""
    check_config(config, info.vocab_size)
    cfg = config["model"]
    model = CharTransformer(info.vocab_size, config["data"]["block_size"], n_layer=cfg["n_layer"],
                            n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=cfg["dropout"])
    return model.to(device)
