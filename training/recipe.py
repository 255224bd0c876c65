"""How each optimizer step is taken: its precision (autocast, and a gradient scaler for fp16), gradient clipping,
gradient accumulation, and whether the model is compiled. Each is read from `training.*` and off by default, so a
config that does not set them computes what it always did.

    training.precision   auto (bf16 where the device has bf16 arithmetic, fp16 with a gradient scaler on CUDA devices
                         without it, float32 elsewhere), bf16, fp16 (with a gradient scaler) or "off" (float32)
    training.grad_clip   the largest global norm of the gradients (null: no clipping)
    training.accumulate  micro-batches each batch is split into, one backward pass each, before the optimizer steps
                         once (null or 1: none); data.batch_size stays what one optimizer step sees
    training.compile     torch.compile the model (null or false: eager)

Nothing here imports torch until a recipe is made, so that a refused launch answers at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from utils.config import require
from utils.errors import UserError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "bf16", "fp16", "off")
# What a setting resolves to on a device; the choice made is recorded with the run (its environment text).
BF16, FP16, FP32 = "bf16", "fp16", "fp32"


@dataclass(frozen=True)
class StepRecipe:
    """How train_epoch takes each optimizer step; the default is one float32 backward pass, no clipping."""
    precision: str = FP32  # the precision chosen: bf16, fp16 or fp32
    scaler: object = None  # the gradient scaler of fp16 (torch.amp.GradScaler), whose state resume points keep
    grad_clip: float | None = None
    accumulate: int = 1
    compile: bool = False

    @property
    def autocast(self) -> torch.dtype | None:
        """The dtype the forward passes autocast to, or None for float32."""
        import torch

        return {BF16: torch.bfloat16, FP16: torch.float16}.get(self.precision)

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` compiled by torch.compile when the recipe asks for it, else `model` itself."""
        if not self.compile:
            return model
        import torch

        if torch.are_deterministic_algorithms_enabled():  # the compiler's own switch, which utils.seed leaves alone
            torch.use_deterministic_algorithms(True)
        return cast("torch.nn.Module", torch.compile(model))


def make_step_recipe(config: dict, device: torch.device) -> StepRecipe:
    """The StepRecipe that `config['training']` describes for `device`."""
    check_config(config)
    training = config["training"]
    precision = resolve_precision(training["precision"], device)
    scaler = None
    if precision == FP16:
        import torch

        scaler = torch.amp.GradScaler(device.type)
    return StepRecipe(precision, scaler, training.get("grad_clip"), training.get("accumulate") or 1,
                      bool(training.get("compile")))


def resolve_precision(setting: str, device: torch.device) -> str:
    """The precision (bf16, fp16 or fp32) that `setting` (auto, bf16, fp16 or off) gives on `device`."""
    if setting == "off":
        return FP32
    if setting in (BF16, FP16):
        return setting
    if device.type == "cuda":
        return BF16 if _has_bf16_arithmetic() else FP16  # T4, V100: fp16 with a scaler is what runs fast there
    return BF16 if device.type == "xpu" else FP32


def _has_bf16_arithmetic():
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 has no emulation to leave out
        return torch.cuda.is_bf16_supported()


def check_config(config: dict, smallest_batch: int | None = None) -> None:
    """Refuse a precision, clipping, accumulation or compile setting this module does not take; given the fewest
    samples a process trains on in one step, also more micro-batches than that."""
    training = config["training"]
    if "autocast" in training:  # a config written for the template before the key was renamed
        raise UserError("training.autocast is now training.precision (the same values: auto, bf16, off, and fp16); "
                        "rename it in your config")
    if training.get("precision") is False:  # YAML 1.1 reads a bare `off` as false
        raise UserError('training.precision: YAML reads a bare off as false; write precision: "off" (quoted)')
    setting = require(config, "training.precision", str)
    if setting not in PRECISIONS:
        raise UserError(f"training.precision must be auto, bf16, fp16 or off, got {setting!r}")
    clip = require(config, "training.grad_clip", float, low=0, optional=True)
    if clip == 0:
        raise UserError("training.grad_clip is the largest gradient norm kept: give a number above 0, or null for no "
                        "clipping")
    accumulate = require(config, "training.accumulate", int, low=1, optional=True)
    require(config, "training.compile", bool, optional=True)
    if accumulate and smallest_batch is not None and accumulate > smallest_batch:
        raise UserError(f"training.accumulate {accumulate} splits each batch into {accumulate} micro-batches, but a "
                        f"training step of this config has as few as {smallest_batch} samples per process; use at "
                        f"most {smallest_batch}, or a larger data.batch_size")
