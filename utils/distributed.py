"""Data-parallel training with torchrun: who this process is, and the few collective operations a run needs.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op for a single process, so the same
experiment code runs either way.
"""
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self):
        """Rank 0 alone talks to the run table, writes checkpoints and prints progress."""
        return self.rank == 0

    @property
    def distributed(self):
        return self.size > 1

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`model` wrapped in DistributedDataParallel when there are several processes, else `model` itself."""
        if not self.distributed:
            return model
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def sum(self, tensor):
        """`tensor` summed over all processes (in place; returned for convenience)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object), on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gathered(self, value):
        """[every rank's `value`] on rank 0 (any picklable object), None on the others; [value] without torchrun."""
        if not self.distributed:
            return [value]
        everyone = [None] * self.size if self.is_main else None
        dist.gather_object(value, everyone, dst=0)
        return everyone

    def agreed_stop(self, stop):
        """The stop (KeyboardInterrupt, Terminated or None) every rank acts on after a training step: one that any
        rank received, so that all of them stop after the same step (one all-reduce a step under torchrun)."""
        if not self.distributed:
            return stop
        from utils.errors import Terminated

        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        code = torch.tensor(0 if stop is None else 1 if isinstance(stop, KeyboardInterrupt) else 2, device=device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        agreed = int(code.item())
        if not agreed:
            return None
        return stop if stop is not None else KeyboardInterrupt() if agreed == 1 else Terminated()

    def check_same_weights(self, model):
        """The sha256 of `model`'s weights, after checking that every rank holds the very same bytes."""
        digest = hashlib.sha256()
        for name, tensor in sorted(unwrap(model).state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()
        if self.distributed:
            everyone: list[str | None] = [None] * self.size
            dist.all_gather_object(everyone, mine)
            if len(set(everyone)) != 1:
                raise RuntimeError(f"the ranks' weights differ after training: {everyone}")
        return mine


def join_world(force_cpu=False):
    """The World of this process: joins torchrun's process group (NCCL on GPUs, gloo on CPUs) when there is one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                  local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and not force_cpu
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world


def leave_world(world):
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model):
    """The module inside torch.compile's and DistributedDataParallel's wrappers (or `model` itself): what checkpoints
    hold."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif is_compiled(model):
            model = model._orig_mod
        else:
            return model


def is_compiled(model):
    """Whether `model` is a module torch.compile returned."""
    import torch._dynamo  # noqa: F401  (imported at every run's start already: what torch.optim imports)

    return isinstance(model, torch._dynamo.eval_frame.OptimizedModule)
