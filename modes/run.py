"""Starting a run: `start_run` takes a RunDescription, registers a new run, executes it and reports its Outcome;
`claim_shared_run` does the same for a run other workers may start too (--seeds, --sweep, --search).

The front door and a notebook start their runs through `start_run`, the sweeps and searches through `claim_shared_run`.
Under both, `execute` is the one harness every mode runs experiments through (a new run, a resume, a reproduction, a
replay): it seeds, sets the threads, picks the device, records hparams and environment, and turns Ctrl-C and SIGTERM
into a failed run with every point it logged.
"""
import json
import sys
import traceback
from contextlib import nullcontext
from dataclasses import dataclass

from modes.launch import WATCH_FLAG, command_of, torchrun_world_size
from utils.config import flatten_values, load_config_text, without_keys
from utils.errors import DiskFull, NondeterministicOp, Pruned, UserError, as_seen_from_here
from utils.output import kept_output
from utils.provenance import git_commit, git_diff
from utils.runtable.readers import read_run
from utils.runtable.run import recorded_results
from utils.stopping import exit_code, raise_if_stopped, stop_behind, stops_held

# How far apart two values of a run recorded with training.deterministic: false may be and still count as the same
# (--reproduce, --verify): such a run is not bit-reproducible on a GPU. A judgement, stated: --tolerance=X overrides it.
NONDETERMINISTIC_TOLERANCE = 0.01
DATA_TEXT = "data"  # the text of a run that describes its data (what its experiment's describe_data gives), as JSON


@dataclass(frozen=True)
class Outcome:
    """How a started run ended, or how its identical run in the table stands when it was not run (`ran` False).

    state: "finished", "running" (in another live process), "crashed" (its code raised, now or too often before),
    "pruned" (a search's pruner stopped it), "stopped" (Ctrl-C or SIGTERM: `code` is 130 or 143), "refused" (under
    torchrun, on the ranks other than 0, when rank 0 refused the launch and said why).
    """
    results: dict | None  # the run's final results, when it finished now or before
    run_id: int | None
    state: str
    ran: bool  # whether it ran in this call; False when an identical run already finished, runs or gave up
    code: int = 0  # the exit code this run gives a command: 0, or 130/143 when stopped


def start_run(project, description, *, debug=False, config_path="", command=None, heading=None) -> Outcome:
    """The Outcome of a new run of `description`: registered in the table, executed, its results returned.

    An identical run already recorded is refused (a UserError naming it); under torchrun every rank trains and rank
    0 records. `debug` records it as run -1 instead, replacing the last one. config_path and command are recorded as
    where the run came from (by default, the command a user would type to start it from config_path); a new run
    warns once of keys that config sets and no recorded run has. `heading` is printed before it starts, with its ID.
    """
    command, commit, diff, output = _provenance(project, description, config_path, command)
    table = project.table

    def register(world_size):
        identity = project.identity(description, world_size)
        if not debug:
            table.refuse_duplicate(identity)  # before any data or model is loaded
        project.check_takes_flags(description)
        project.check_config(identity)
        if config_path:
            project.warn_of_new_keys(description.experiment, config_path)
        run = table.start_run(identity, config_path=config_path, command=command, commit=commit, diff=diff,
                              debug=debug)
        if heading is not None:
            print(f"{heading}: run {run.id}", flush=True)
        return run, identity

    results, code, run = run_registered(project, register, output, cpu=description.flags.get("cpu", False))
    state = "finished" if results is not None else "stopped" if code in (130, 143) else "refused"
    return Outcome(results, run.id if run is not None else None, state, True, code)


def claim_shared_run(project, description, *, config_path="", command=None, heading=None, texts=None,
                     judge=None) -> Outcome:
    """The Outcome of a run of `description` that other workers may start too: how --seeds, --sweep and --search
    start theirs.

    An identical finished run is not run again (its results are returned, `ran` False), one running elsewhere is
    left to its process, a killed one is resumed, and a crash of the code is reported (its traceback on stderr)
    rather than raised. `texts` are logged beside the run; `judge(epoch, value, last)` is handed each epoch's watched
    validation value and may raise Pruned (a search's pruner). config_path, command and heading as for start_run.
    """
    if torchrun_world_size() > 1:
        raise UserError("runs that workers share run one after another in one process; launch without torchrun")
    command, commit, diff, output = _provenance(project, description, config_path, command)
    table = project.table
    identity = project.identity(description)
    latest = table.latest_run(identity)
    if latest is not None and latest[1] == "finished":  # read-only: a finished sweep costs no write lock
        return Outcome(read_run(table.path, latest[0]).results, latest[0], "finished", ran=False)
    raise_if_stopped()
    claim = table.claim(identity, config_path=config_path, command=command, commit=commit, diff=diff, judge=judge)
    if claim.run is None:
        results = read_run(table.path, claim.run_id).results if claim.state == "finished" else None
        return Outcome(results, claim.run_id, claim.state, ran=False)
    if heading is not None:
        print(f"{heading}: run {claim.run.id}{', resumed' if claim.run.resumed else ''}", flush=True)
    try:
        results, code = execute(project, claim.run, identity, output, threads=claim.threads, texts=texts)
    except UserError:  # a mistake every run would repeat (a full disk): the caller stops
        raise
    except Pruned:
        return Outcome(None, claim.run.id, "pruned", ran=True)
    except Exception:
        traceback.print_exc()
        return Outcome(None, claim.run.id, "crashed", ran=True)
    return Outcome(results, claim.run.id, "finished" if results is not None else "stopped", True, code)


def _provenance(project, description, config_path, command):
    """(the command recorded, git commit, git diff, the output-only flags) of a run about to start."""
    if command is None:
        command = project.command(description, config_path) if config_path else "(started from Python)"
    output = {name: description.flags.get(name, project.flag_defaults[name]) for name in project.output_only}
    return command, git_commit(project.code_dir), git_diff(project.code_dir), output


def run_new(launch):
    """Exit code of a fresh launch: a new run (or debug run) of the command's experiment and config."""
    description = launch.description()
    outcome = start_run(launch.project, description, debug=launch.args.debug, config_path=launch.args.config,
                        command=command_of(launch.argv))
    return outcome.code


def run_registered(project, register, output, cpu=False, threads=None):
    """(results, exit code, run) of a run that `register(world_size)` records, under torchrun or not.

    The run is None on torchrun's ranks other than 0, which record nothing.

    Under torchrun, rank 0 alone registers (checking for a duplicate once, before any rank trains) and tells the
    other ranks the run; they record nothing.
    """
    if torchrun_world_size() <= 1:
        run, identity = register(1)
        results, code = execute(project, run, identity, output, threads=threads)
        return results, code, run

    from utils.distributed import join_world, leave_world
    from utils.runtable.run import Replica

    world = join_world(cpu)
    try:
        outcome = None
        if world.is_main:
            try:
                run, identity = register(world.size)
                outcome = (run.id, str(run.folder), run.resumed, identity)
            except UserError:
                world.broadcast(None)
                raise
        outcome = world.broadcast(outcome)
        if outcome is None:
            return None, 2, None  # rank 0 said why
        if not world.is_main:
            run, identity = Replica(*outcome[:3], measures=outcome[3].measures), outcome[3]
        results, code = execute(project, run, identity, output if world.is_main else {**output, "verbose": 0}, world,
                                threads=threads)
        # Every rank is done with its collectives before the process group goes away. Not after a stop: a stopped
        # rank may have left the others inside a collective, and a barrier would hang until torchrun kills every
        # rank; once this one exits, theirs fail at once on the closed connection.
        if code == 0:
            world.barrier()
        return results, code, run if world.is_main else None
    finally:
        leave_world(world)


def execute(project, run, identity, output, world=None, announce=True, threads=None, texts=None):
    """(results or None, exit code) of running `identity`'s experiment into `run`, with the output-only flags
    `output` (verbose); `announce` prints how it ended.

    `threads` is the CPU thread count a recorded run had (a resume, a reproduction, a replay): CPU kernels sum in
    another order with another count, so the same count gives the same numbers. By default, the config's.

    Any exception, Ctrl-C and SIGTERM included, marks the run failed after writing what it logged; an interruption
    returns exit code 130 or 143 with a line on where and how it continues, any other exception propagates with its
    traceback. What the run prints is also kept in its folder (utils/output.py), on torchrun's rank 0.
    """
    speaks = (world is None or world.is_main) and announce
    kept = kept_output(run.folder, f"run {run.id}{', resumed' if run.resumed else ''}") \
        if world is None or world.is_main else nullcontext()
    with kept:
        return _execute(project, run, identity, output, world, speaks, threads, texts)


def _execute(project, run, identity, output, world, speaks, threads, texts):
    verbose = output.get("verbose", 1)
    if verbose >= 1:
        print(f"run {run.id}: {identity.experiment}{' (debug)' if run.id == -1 else ''}, checkpoints in "
              f"{as_seen_from_here(run.folder)}", flush=True)
    experiment = project.find_experiment(identity.experiment)
    flags = {**project.experiment_flags(identity.flags, output), WATCH_FLAG: identity.measures.select}
    kwargs = project.experiment_kwargs(experiment, flags)
    try:
        with run:
            with stops_held():  # torch is imported only once a run really starts, and whole
                import torch._dynamo  # noqa: F401  (what torch.optim imports at the first optimizer: 1 s on a CPU)
                from data.loaders import loader_workers
                from data.registry import description_json
                from training.recipe import resolve_precision
                from utils.device import keep_freed_memory, nondeterministic_op, pick_device, set_threads
                from utils.distributed import World
                from utils.provenance import environment
                from utils.seed import seed_everything

            world = world or World()
            keep_freed_memory()
            # The experiment gets the config back from its recorded text: what runs is exactly what was recorded,
            # its relative paths the checkout's (data.path: data is the checkout's data/) wherever it runs from.
            recorded = without_keys(load_config_text(identity.config_text), set())  # a key set to null is not set
            config = project.runnable(recorded)
            training = config.get("training", {})
            threads = set_threads(threads or training.get("threads", 0), processes_per_machine=world.local_size,
                                  loader_workers=loader_workers(config, project.table.files))
            deterministic = training.get("deterministic", True)
            seed_everything(config.get("seed", 0), deterministic=deterministic)
            device = pick_device(force_cpu=flags.get("cpu", False), index=world.local_rank)
            run.log_hparams({**flatten_values(recorded),
                             **{k: v for k, v in flags.items() if k not in project.output_only},
                             "threads": threads, "world_size": world.size})
            # What the run chose where the config let it choose, and whether it is bit-reproducible at all.
            chosen = {"precision": resolve_precision(training.get("precision", "off"), device),
                      "deterministic": deterministic}
            run.log_text("environment", json.dumps({**environment(device, threads), **chosen}, indent=2))
            if experiment.describe_data is not None:  # what its model needs of the data, to be built again without it
                run.log_text(DATA_TEXT, description_json(experiment.describe_data(config)))
            if not deterministic and speaks and verbose >= 1:
                print(f"note: training.deterministic is false: run {run.id} is not bit-reproducible (--reproduce "
                      f"compares it within {NONDETERMINISTIC_TOLERANCE:g})", file=sys.stderr)
            for tag, text in (texts or {}).items():  # what the caller records beside the run (a search's trial)
                run.log_text(tag, text)
            try:
                results = experiment(config, run, device, world, **kwargs)
            except RuntimeError as error:
                op = nondeterministic_op(error)
                if op is None:
                    raise
                raise NondeterministicOp(
                    f"run {run.id} stopped: {op} has no deterministic implementation on {device.type}, and "
                    f"training.deterministic: true refuses it; to train this model, launch it with "
                    f"--config.training.deterministic=false (a new run, recorded as not bit-reproducible), or replace "
                    f"the operation (docs/reproducibility.md)") from None
            results = recorded_results(results)  # one line for what is not a dict of numbers, never a traceback
            if run.status == "running":
                run.finish(results)
    except DiskFull as full:  # the run is failed (or left for the next launch to mark): say how to continue it
        raise DiskFull(full.what, full.remedy, f"continue run {run.id} with {resume_command(run, world)}") from None
    except BaseException as error:
        stop = stop_behind(error)  # a library may have turned the stop into an error of its own
        if stop is None:
            raise
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        where = run.resume_point.described() if run.resume_point is not None else "from its start"
        if speaks:
            print(f"{what}: run {run.id} is marked failed, with all it logged; it continues {where} with "
                  f"{resume_command(run, world)}", file=sys.stderr)
        return None, exit_code(stop)
    if speaks:
        print(f"run {run.id} finished: " + ", ".join(f"{k} {format_value(v)}" for k, v in results.items()), flush=True)
    return results, 0


def resume_command(run, world=None):
    """The command that continues `run`: with torchrun on as many processes as it ran on."""
    size = world.size if world is not None else 1
    launcher = f"torchrun --nproc_per_node={size} main.py" if size > 1 else "python main.py"
    return f"{launcher} --resume={run.id}"


def format_value(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)
