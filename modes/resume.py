"""--resume=RUNID: continue a failed run from its last finished epoch, with its recorded config and flags."""
from modes.run import run_registered
from utils.errors import UserError


def resume(launch):
    """Exit code of continuing run `--resume` in place."""
    run_id = launch.args.resume

    def register(world_size):
        return launch.table.resume_run(
            run_id, check=lambda identity: check_world_size(identity, run_id, world_size, "--resume"))

    _, code, _ = run_registered(launch, register)
    return code


def check_world_size(identity, run_id, world_size, mode):
    """Refuse to resume or reproduce run `run_id` on another number of processes than it ran on."""
    recorded_size = identity.flags.get("world_size", 1)
    if recorded_size != world_size:
        launcher = f"torchrun --nproc_per_node={recorded_size} main.py" if recorded_size > 1 else "python main.py"
        raise UserError(f"run {run_id} ran on {recorded_size} process(es), this launch has {world_size}; "
                        f"use {launcher} {mode}={run_id}")
