"""Checkpoints in a run's folder: the best model, and the full training state for resuming.

Every checkpoint is read with torch's safe loader (weights_only=True): it builds tensors, numbers, strings and
containers, and runs nothing, so a file planted in a shared results folder cannot run code. For that, the random
states are written as tensors and plain numbers, never as pickled objects.
"""
import io
import os
import pickle
import random

import numpy as np
import torch

from utils.distributed import unwrap
from utils.errors import UserError, disk_full, is_disk_full

TRUST_FLAG = "--trust-old-checkpoint"
# What a checkpoint written by the template before it stored its random states as tensors pickled: NumPy's state.
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # renamed in NumPy 2
OLD_FORMAT_GLOBALS = {"numpy._core.multiarray._reconstruct": lambda: _NUMPY_CORE.multiarray._reconstruct,
                      "numpy.core.multiarray._reconstruct": lambda: _NUMPY_CORE.multiarray._reconstruct,
                      "numpy.ndarray": lambda: np.ndarray, "numpy.dtype": lambda: np.dtype,
                      "numpy.dtypes.UInt32DType": lambda: np.dtypes.UInt32DType}


class CheckpointRefused(UserError):
    """A checkpoint that the safe loader refuses (it holds objects whose loading runs code) or cannot read."""


def save_checkpoint(path, model, **extra):
    """Write the model weights and any `extra` state (epoch, metric: tensors and plain values) to `path`."""
    _save({"model": unwrap(model).state_dict(), **extra}, path)


def load_checkpoint(path, model, device):
    """Load the weights saved at `path` into `model`; the whole checkpoint dict is returned."""
    checkpoint = read_checkpoint(path, device)
    unwrap(model).load_state_dict(checkpoint["model"])
    return checkpoint


def read_checkpoint(path, device="cpu", mmap=False):
    """The dict saved at `path`, read with the safe loader; a CheckpointRefused names the file and why otherwise.

    With `mmap`, the tensors stay on disk until used: a check of the file costs no second copy of the weights."""
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        unsafe = unsafe_globals(path)
        if unsafe is None:
            raise damaged(path) from None
        if unsafe <= set(OLD_FORMAT_GLOBALS):
            raise CheckpointRefused(
                f"{path} was written by an earlier version of the template (its NumPy random state is pickled), "
                f"which the safe loader does not read; if you trust this file, resume with {TRUST_FLAG} to convert it"
                ) from None
        raise CheckpointRefused(f"{path} is refused: it holds {', '.join(sorted(unsafe))}, which loading would call "
                                f"(a checkpoint holds only tensors and numbers); nothing in it was run. Delete it, or "
                                f"restore the file this run wrote") from None
    except Exception:  # cut short, or not a checkpoint at all: torch raises many kinds of errors
        raise damaged(path) from None


def check_run_checkpoints(folder, convert_old=False, owner=None):
    """Refuse, before a run is resumed, a checkpoint in its `folder` that the safe loader would refuse or that another
    run wrote (`owner`: RunIdentity.owner); with `convert_old`, first rewrite the earlier template format in the safe
    one. Returns the names converted."""
    converted = []
    for name in ("last.pt", "best.pt"):
        path = folder / name
        if not path.exists():
            continue
        if convert_old and convert_old_checkpoint(path):
            converted.append(name)
        check_owner(path, owner, read_checkpoint(path, mmap=True))
    return converted


def check_owner(path, owner, state=None):
    """Refuse the checkpoint at `path` if it records another owner than `owner` (copied from another run's folder).
    Checkpoints written before they recorded one, and runs that know none, pass."""
    recorded = (state if state is not None else read_checkpoint(path, mmap=True)).get("owner")
    if owner is not None and recorded is not None and recorded != owner:
        raise UserError(f"{path} was written by another run (its checkpoints record whose they are); put this run's "
                        f"own checkpoint back, or start the run again, nothing was changed")


def unsafe_globals(path):
    """The names of the objects the file at `path` would have to build beyond what the safe loader builds, or None
    where it cannot be read at all."""
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return None


def damaged(path):
    return CheckpointRefused(f"{path} is damaged or cut short and cannot be read; restore it, or launch the config "
                             f"again as a new run")


def convert_old_checkpoint(path):
    """Rewrite the earlier template checkpoint at `path` (pickled NumPy state) in the safe format, reading only the
    NumPy objects that format holds; True when it was converted, False when it needs no conversion."""
    unsafe = unsafe_globals(path)
    if not unsafe:
        return False
    if not unsafe <= set(OLD_FORMAT_GLOBALS):
        read_checkpoint(path)  # refused, with the reason
    allowed = [get() for get in OLD_FORMAT_GLOBALS.values()]  # the dtype's class is found only while loading
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise damaged(path) from None
    for key, convert in (("numpy_rng", _numpy_state), ("python_rng", _python_state)):
        if isinstance(state.get(key), tuple):
            state[key] = convert(state[key])
    _save(state, path)
    return True


def save_training_state(path, model, optimizer, scheduler, draws, *, scaler=None, rng=None, **extra):
    """Everything needed to continue training bit for bit: weights, optimizer, schedule, the gradient scaler, the
    state the next (or current) pass of the data is drawn from (`draws`) and every random state (`rng`, as
    random_states() gives them; by default this moment's)."""
    _save({
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None, "generator": draws,
        **(rng if rng is not None else random_states()), **extra,
    }, path)


def load_training_state(path, model, optimizer, scheduler, device, scaler=None):
    """Restore the weights, optimizer, schedule, gradient scaler and random states save_training_state wrote; returns
    the checkpoint dict (the data's state and the `extra` entries included)."""
    state = load_checkpoint(path, model, device)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_random_states(state)
    return state


def random_states():
    """Every random state of this process, as tensors and plain numbers: torch's (CPU, and the accelerators'),
    NumPy's and Python's."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            **_accelerator_states(),
            "numpy_rng": _numpy_state(np.random.get_state()), "python_rng": _python_state(random.getstate())}


def restore_random_states(state):
    """Set every random state that `state` (random_states() as a checkpoint holds them) records."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    for kind in ACCELERATORS:
        if state.get(f"{kind}_rng") is not None and _available(kind):
            _set_accelerator_state(kind, state[f"{kind}_rng"])
    numpy_rng, python_rng = state["numpy_rng"], state["python_rng"]
    np.random.set_state((numpy_rng["kind"], numpy_rng["keys"].numpy().astype(np.uint32), numpy_rng["pos"],
                         numpy_rng["has_gauss"], numpy_rng["gauss"]))
    random.setstate((python_rng["version"], tuple(python_rng["internal"].tolist()), python_rng["gauss"]))


ACCELERATORS = ("mps", "xpu")  # accelerators besides CUDA whose generators a resume point keeps


def _available(kind):
    module = getattr(torch, kind, None)
    return module is not None and module.is_available()


def _accelerator_states():
    """{"mps_rng": ..., "xpu_rng": ...} of the accelerators besides CUDA this process has."""
    states = {}
    for kind in ACCELERATORS:
        if _available(kind):
            module = getattr(torch, kind)
            states[f"{kind}_rng"] = (module.get_rng_state_all() if hasattr(module, "get_rng_state_all")
                                     else module.get_rng_state())
    return states


def _set_accelerator_state(kind, value):
    module = getattr(torch, kind)
    if isinstance(value, (list, tuple)):
        module.set_rng_state_all(value)
    else:
        module.set_rng_state(value)


def _numpy_state(state):
    """NumPy's random state (a tuple holding an array) as tensors and plain numbers."""
    kind, keys, pos, has_gauss, gauss = state
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _python_state(state):
    """Python's random state (version, 625 words, the cached gauss) as a tensor and plain numbers."""
    version, internal, gauss = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": None if gauss is None else float(gauss)}


def _save(state, path):
    """Write `state` to `path` whole or not at all: a crash or a full disk never leaves a truncated file behind."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces the old file: a dead node keeps one whole of the two
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full(path.parent, path.name, len(data)) from None
        raise


def remove_partial_files(folder):
    """Delete the *.tmp files a process killed mid-write left in `folder` (a resumed run starts clean)."""
    for tmp in folder.glob("*.tmp"):
        tmp.unlink(missing_ok=True)
