"""--resume=RUNID: continue a failed run from its last finished epoch, with its recorded config and flags."""
from modes.run import run_registered
from utils.errors import UserError
from utils.runtable.identity import EVALUATES
from utils.runtable.readers import read_row_of


def resume(launch):
    """Exit code of continuing run `--resume` in place (on data moved elsewhere with --config.data.path=DIR)."""
    run_id = launch.args.resume
    table = launch.project.table
    if not table.path.exists():
        raise UserError(f"there is no run table at {table.path}, so no run {run_id} to resume")
    row = read_row_of(table.path, run_id)
    recorded = row.identity
    refuse_evaluation(recorded, run_id, "resume")
    identity = launch.relocated(recorded)
    if recorded.data and identity.data != recorded.data:
        raise UserError(f"the data the config now points at is not the data run {run_id} was trained on "
                        f"(fingerprint {identity.data[:12]}, recorded {recorded.data[:12]}); point "
                        f"--config.data.path at the run's data")

    from utils.checkpoint import check_run_checkpoints  # torch, only once the run is known to be resumable

    # Before the run is touched: a checkpoint that would be refused leaves it failed, as it was.
    folder = table.folder(run_id)
    for name in check_run_checkpoints(folder, convert_old=launch.args.trust_old_checkpoint, owner=recorded.owner):
        print(f"{folder / name} converted to the safe format (its random states as tensors)")

    def register(world_size):
        run, _ = table.resume_run(
            run_id, check=lambda identity: check_world_size(identity, run_id, world_size, "--resume"))
        return run, identity

    _, code, _ = run_registered(launch.project, register, launch.output_flags(), cpu=identity.flags.get("cpu", False),
                                threads=row.threads)
    return code


def check_world_size(identity, run_id, world_size, mode):
    """Refuse to resume or reproduce run `run_id` on another number of processes than it ran on."""
    recorded_size = identity.flags.get("world_size", 1)
    if recorded_size != world_size:
        launcher = f"torchrun --nproc_per_node={recorded_size} main.py" if recorded_size > 1 else "python main.py"
        raise UserError(f"run {run_id} ran on {recorded_size} process(es), this launch has {world_size}; "
                        f"use {launcher} {mode}={run_id}")


def refuse_evaluation(identity, run_id, mode):
    """Refuse to `mode` (resume, reproduce) run `run_id` when it is an evaluation: it trained nothing."""
    evaluated = identity.flags.get(EVALUATES)
    if evaluated is not None:
        raise UserError(f"run {run_id} is an evaluation of run {evaluated}: there is no training to {mode}; evaluate "
                        f"again with python main.py --evaluate={evaluated} --debug")
