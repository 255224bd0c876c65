"""Running an experiment: register the run, execute it with everything set up, report how it ended.

`execute` is the one harness every mode runs experiments through (a new run, a resume, a reproduction, a sweep's
combination): it seeds, sets the threads, picks the device, records hparams and environment, and turns Ctrl-C and
SIGTERM into a failed run with every point it logged.
"""
import json
import sys

from modes.launch import TABLE_PATH, command_of, torchrun_world_size
from utils.config import flatten_values, load_config_text, without_keys
from utils.errors import DiskFull, Terminated, UserError
from utils.provenance import git_commit, git_diff


def run_new(launch):
    """Exit code of a fresh launch: a new run (or debug run) of the command's experiment and config."""
    def register(world_size):
        identity = launch.identity(world_size=world_size)
        if not launch.args.debug:
            launch.table.refuse_duplicate(identity)  # before any data or model is loaded
        launch.check_experiment_takes_flags()
        launch.check_config(identity)
        launch.warn_of_new_keys()
        run = launch.table.start_run(identity, config_path=launch.args.config, command=command_of(launch.argv),
                                     commit=git_commit(launch.code_dir), diff=git_diff(launch.code_dir),
                                     debug=launch.args.debug)
        return run, identity

    results, code, _ = run_registered(launch, register)
    return code


def run_registered(launch, register, threads=None):
    """(results, exit code, run) of a run that `register(world_size)` records, under torchrun or not.

    The run is None on torchrun's ranks other than 0, which record nothing.

    Under torchrun, rank 0 alone registers (checking for a duplicate once, before any rank trains) and tells the
    other ranks the run; they record nothing.
    """
    if torchrun_world_size() <= 1:
        run, identity = register(1)
        results, code = execute(launch, run, identity, launch.args.verbose, threads=threads)
        return results, code, run

    from utils.distributed import join_world, leave_world
    from utils.runtable.run import Replica

    world = join_world(launch.args.cpu)
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
            run, identity = Replica(*outcome[:3]), outcome[3]
        verbose = launch.args.verbose if world.is_main else 0
        results, code = execute(launch, run, identity, verbose, world, threads=threads)
        # Every rank is done with its collectives before the process group goes away. Not after a stop: a stopped
        # rank may have left the others inside a collective, and a barrier would hang until torchrun kills every
        # rank; once this one exits, theirs fail at once on the closed connection.
        if code == 0:
            world.barrier()
        return results, code, run if world.is_main else None
    finally:
        leave_world(world)


def execute(launch, run, identity, verbose, world=None, announce=True, threads=None, texts=None):
    """(results or None, exit code) of running `identity`'s experiment into `run`; `announce` prints how it ended.

    `threads` is the CPU thread count a recorded run had (a resume, a reproduction, a replay): CPU kernels sum in
    another order with another count, so the same count gives the same numbers. By default, the config's.

    Any exception, Ctrl-C and SIGTERM included, marks the run failed after writing what it logged; an interruption
    returns exit code 130 or 143 with a line on how to resume, any other exception propagates with its traceback.
    """
    speaks = (world is None or world.is_main) and announce
    if verbose >= 1:
        print(f"run {run.id}: {identity.experiment}{' (debug)' if run.id == -1 else ''}, checkpoints in {run.folder}",
              flush=True)
    experiment = launch.find_experiment(identity.experiment)
    flags = launch.experiment_flags(identity.flags)
    flags["verbose"] = verbose
    kwargs = launch.experiment_kwargs(experiment, flags)
    try:
        with run:
            # torch is imported only once a run really starts
            from data.loaders import loader_workers
            from utils.device import keep_freed_memory, pick_device, set_threads
            from utils.distributed import World
            from utils.provenance import environment
            from utils.seed import seed_everything

            world = world or World()
            keep_freed_memory()
            # The experiment gets the config back from its recorded text: what runs is exactly what was recorded.
            config = without_keys(load_config_text(identity.config_text), set())  # a key set to null is not set
            training = config.get("training", {})
            threads = set_threads(threads or training.get("threads", 0), processes_per_machine=world.local_size,
                                  loader_workers=loader_workers(config, TABLE_PATH.parent))
            seed_everything(config.get("seed", 0), deterministic=training.get("deterministic", True))
            device = pick_device(force_cpu=flags.get("cpu", False), index=world.local_rank)
            run.log_hparams({**flatten_values(config), **{k: v for k, v in flags.items() if k != "verbose"},
                             "threads": threads, "world_size": world.size})
            run.log_text("environment", json.dumps(environment(device, threads), indent=2))
            for tag, text in (texts or {}).items():  # what the caller records beside the run (a search's trial)
                run.log_text(tag, text)
            results = experiment(config, run, device, world, **kwargs)
            if run.status == "running":
                run.finish(results)
    except DiskFull as full:  # the run is failed (or left for the next launch to mark): say how to continue it
        raise DiskFull(full.what, f"free some space, then continue run {run.id} with python main.py --resume={run.id}"
                       ) from None
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        if speaks:
            print(f"{what}: run {run.id} is marked failed, with all it logged; continue it with "
                  f"python main.py --resume={run.id}", file=sys.stderr)
        return None, 130 if isinstance(stop, KeyboardInterrupt) else 143
    if speaks:
        print(f"run {run.id} finished: " + ", ".join(f"{k} {format_value(v)}" for k, v in results.items()), flush=True)
    return results, 0


def format_value(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)
