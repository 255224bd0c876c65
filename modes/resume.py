"""--resume=RUNID: continue a failed run from its last finished epoch, with its recorded config and flags."""
import hashlib
import json
import sys
from datetime import datetime

from modes.run import run_registered
from utils.errors import UserError
from utils.provenance import git_commit, git_diff
from utils.runtable.identity import EVALUATES
from utils.runtable.readers import read_row_of, run_text

CODE_TEXT = "code"  # the run's text listing the code each of its segments ran with, once a resume ran other code


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

    segments = code_segments(table.path, run_id, row)
    now = {"commit": git_commit(launch.project.code_dir), "diff": git_diff(launch.project.code_dir)}
    changed = (now["commit"], now["diff"]) != (segments[-1]["commit"], segments[-1]["diff"])

    def register(world_size):
        run, _ = table.resume_run(
            run_id, check=lambda identity: check_world_size(identity, run_id, world_size, "--resume"))
        if changed:  # a bug fixed before resuming, say: the run keeps the record of every version it ran with
            print(f"note: run {run_id} resumes with other code than it last ran with ({describe_code(segments[-1])} "
                  f"then, {describe_code(now)} now); its text '{CODE_TEXT}' records each version and when it started",
                  file=sys.stderr)
            started = datetime.now().isoformat(sep=" ", timespec="seconds")
            run.log_text(CODE_TEXT, json.dumps([*segments, {**now, "resumed": started}], indent=1))
        return run, identity

    _, code, _ = run_registered(launch.project, register, launch.output_flags(), cpu=identity.flags.get("cpu", False),
                                threads=row.threads)
    return code


def code_segments(table_path, run_id, row):
    """The code run `run_id` ran with, version by version: [{"commit", "diff", "resumed"}], its first the one it
    started with (recorded with the run)."""
    recorded = run_text(table_path, run_id, CODE_TEXT)
    return json.loads(recorded) if recorded else [{"commit": row.commit, "diff": row.diff, "resumed": None}]


def describe_code(code):
    """A version of the code in a few words: its commit, and a hash of its uncommitted changes if any."""
    commit = (code["commit"] or "no commit")[:10]
    diff = code["diff"]
    return f"commit {commit}" + (f" with changes {hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else "")


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
