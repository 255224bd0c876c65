"""Where a run computes: the accelerator torch finds, or the CPU."""
from types import SimpleNamespace

import pytest
import torch

from utils.device import nondeterministic_op, pick_device


@pytest.mark.parametrize("accelerator, index, expected", [
    (None, 0, torch.device("cpu")), ("cuda", 1, torch.device("cuda", 1)), ("mps", 0, torch.device("mps")),
    ("xpu", 2, torch.device("xpu", 2))])
def test_a_run_computes_on_the_accelerator_torch_finds_unless_told_to_use_the_cpu(monkeypatch, accelerator, index,
                                                                                 expected):
    found = SimpleNamespace(is_available=lambda: accelerator is not None,
                            current_accelerator=lambda: torch.device(accelerator or "cuda"))
    monkeypatch.setattr(torch, "accelerator", found)
    assert pick_device(index=index) == expected
    assert pick_device(force_cpu=True, index=index) == torch.device("cpu")


def test_the_operation_torchs_deterministic_mode_refuses_is_read_from_its_error():
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError) as refused:
            torch.zeros(5).put_(torch.tensor([1, 1]), torch.tensor([1.0, 2.0]))
    finally:
        torch.use_deterministic_algorithms(False)
    assert nondeterministic_op(refused.value) == "put_"
    assert nondeterministic_op(RuntimeError("CUDA out of memory")) is None
    assert nondeterministic_op(ValueError("put_ does not have a deterministic implementation")) is None
