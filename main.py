"""Run one experiment and record it in the run table.

    python main.py --experiment=experiment1 --config=configs/config.yml [flags] [--config.SECTION.KEY=VALUE ...]
    python main.py --resume=RUNID          continue a failed run from its last epoch
    python main.py --reproduce=RUNID       run a recorded run again (as a debug run) and compare the numbers
    python main.py --list | --new-experiment=NAME | --config=FILE --print-config
"""
import argparse
import difflib
import itertools
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from experiments.experiment1 import experiment1
from utils.config import (OVERRIDE_PREFIX, apply_overrides, dump_config, load_config, load_config_text, parse_override,
                          sweep_values)
from utils.errors import UserError
from utils.provenance import command_line, git_commit, git_diff
from utils.runtable import RunIdentity, RunTable

experiments = {"experiment1": experiment1}

CODE_DIR = Path(__file__).resolve().parent
TABLE_PATH = Path("results") / "resultTable.db"
# Flags that change what a run computes: part of its identity (only when not at their default, so adding a flag
# later leaves every earlier run's identity as it was). --verbose and --debug change only the output.
RESULT_FLAGS = ("watch", "cpu")
# Flags that --resume and --reproduce take from the recorded run instead.
RECORDED_FLAGS = ("experiment", "config", "comment", "watch", "cpu", "debug")


class Terminated(BaseException):
    """SIGTERM arrived (cluster walltime, scancel, kill): unwinds like Ctrl-C so that the run is marked failed."""


def _raise_terminated(signum, frame):
    raise Terminated()


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see python main.py --help)")


def make_parser():
    parser = _Parser(description="Train an experiment and record it in results/resultTable.db.",
                     epilog="Any config key can be overridden: --config.training.num_epochs=5", allow_abbrev=False)
    parser.add_argument("--experiment", help=f"experiment to run (required): {', '.join(experiments)}")
    parser.add_argument("--config", help="YAML file with the baseline parameters (required)")
    parser.add_argument("--debug", action="store_true", help="record as run ID -1, replacing the last debug run")
    parser.add_argument("--comment", default="", help="a note stored with the run; part of its identity")
    parser.add_argument("--watch", choices=("accuracy", "loss"), default="accuracy",
                        help="validation metric that picks the best checkpoint (default: accuracy)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is available")
    parser.add_argument("--verbose", type=int, choices=range(4), default=1,
                        help="0: final result only, 1: progress and a line per epoch (default), 2: + setup, 3: + steps")
    parser.add_argument("--resume", type=int, metavar="RUNID",
                        help="continue failed run RUNID from its last epoch, with its recorded config and flags")
    parser.add_argument("--reproduce", type=int, metavar="RUNID",
                        help="re-run recorded run RUNID as a debug run and compare every result and curve with it")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="with --reproduce: largest difference still counted as equal (default 0: exact)")
    parser.add_argument("--list", action="store_true", help="list the registered experiments and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged config (--config and overrides) and exit")
    parser.add_argument("--sweep", action="store_true",
                        help="split override values at commas and run every combination, skipping finished ones")
    parser.add_argument("--new-experiment", metavar="NAME",
                        help="create experiments/NAME.py and NAME.md from experiment1 and register NAME in main.py")
    return parser


def parse_args(argv):
    """(flags, [(dotted key, value text)]) of the command line; unknown flags are refused, never ignored."""
    parser = make_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        if arg.startswith(OVERRIDE_PREFIX):
            overrides.append(parse_override(arg))
        elif arg.startswith("-"):
            name = arg.split("=", 1)[0]
            known = [s for action in parser._actions for s in action.option_strings]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}?" if close else "see python main.py --help"
            raise UserError(f"unknown flag {name} ({hint})")
        else:
            raise UserError(f"unexpected argument {arg!r}; overrides take the form --config.SECTION.KEY=VALUE")

    modes = [flag for flag, on in (("--resume", args.resume is not None), ("--reproduce", args.reproduce is not None),
                                    ("--list", args.list), ("--print-config", args.print_config),
                                    ("--new-experiment", args.new_experiment is not None), ("--sweep", args.sweep))
             if on]
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} do different things; use one of them")
    replay = next((mode for mode in modes if mode in ("--resume", "--reproduce")), None)
    if args.list or args.new_experiment is not None:
        pass  # they need nothing else
    elif args.print_config:
        if args.config is None:
            raise UserError("--print-config needs --config=FILE (and any --config.* overrides)")
    elif replay:
        given = [f"--{name}" for name in RECORDED_FLAGS if getattr(args, name) != parser.get_default(name)]
        given += ["--config.*"] if overrides else []
        if given:
            raise UserError(f"{replay} takes the run's recorded experiment, config and flags; drop {', '.join(given)}")
    else:
        missing = [f"--{name}" for name in ("experiment", "config") if getattr(args, name) is None]
        if missing:
            raise UserError(f"{' and '.join(missing)} required, e.g. "
                            f"python main.py --experiment=experiment1 --config=configs/config.yml")
    if args.sweep and args.debug:
        raise UserError("--sweep records every combination as a run of its own; drop --debug")
    if args.tolerance != 0.0 and args.reproduce is None:
        raise UserError("--tolerance only applies to --reproduce")
    return args, overrides


def list_experiments():
    """One line per registered experiment: its name and the first line of its lab book."""
    for name in experiments:
        lab_book = CODE_DIR / "experiments" / f"{name}.md"
        first = lab_book.read_text().splitlines()[0].lstrip("# ") if lab_book.exists() else "(no lab book)"
        print(f"{name:20s} {first}")


def find_experiment(name):
    if name in experiments:
        return experiments[name]
    close = difflib.get_close_matches(name, experiments, n=1, cutoff=0.3)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"unknown experiment {name!r}{hint}; registered: {', '.join(experiments)}")


def new_identity(args, overrides, world_size=1):
    """The RunIdentity of a fresh launch: experiment, merged config, changed result flags, comment.

    The number of torchrun processes changes the numbers too (BatchNorm sees each rank's shard), so a run on several
    processes has its world size among its flags.
    """
    find_experiment(args.experiment)
    config = apply_overrides(load_config(args.config), overrides)
    parser = make_parser()
    flags = {name: getattr(args, name) for name in RESULT_FLAGS if getattr(args, name) != parser.get_default(name)}
    if world_size > 1:
        flags["world_size"] = world_size
    return RunIdentity(args.experiment, dump_config(config), flags, args.comment)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C interrupts even where SIGINT was ignored
    args, overrides = parse_args(argv)
    if args.list:
        list_experiments()
        return 0
    if args.print_config:
        print(dump_config(apply_overrides(load_config(args.config), overrides)), end="")
        return 0
    if args.new_experiment is not None:
        from utils.scaffold import new_experiment
        for path in new_experiment(CODE_DIR, args.new_experiment, experiments):
            print(f"wrote {path.relative_to(CODE_DIR)}")
        print(f"edit experiments/{args.new_experiment}.py, then: python main.py "
              f"--experiment={args.new_experiment} --config=configs/config.yml")
        return 0

    table = RunTable(TABLE_PATH)
    if args.sweep:
        return run_sweep(table, args, overrides, argv)
    world = join_launched_world(args.cpu)
    if world is None:
        run, identity, recorded = register_run(table, args, overrides, argv, world_size=1)
    else:  # torchrun: rank 0 alone checks and registers the run, then tells the other ranks
        from utils.runtable import Replica
        outcome = None
        if world.is_main:
            try:
                run, identity, recorded = register_run(table, args, overrides, argv, world_size=world.size)
                outcome = (run.id, str(run.folder), run.resumed, identity)
            except UserError:
                world.broadcast(None)
                raise
        outcome = world.broadcast(outcome)
        if outcome is None:
            return 2  # rank 0 said why
        if not world.is_main:
            run, identity, recorded = Replica(*outcome[:3]), outcome[3], None

    verbose = args.verbose if world is None or world.is_main else 0
    try:
        results, code, run_environment = execute(run, identity, verbose, world)
        if world is not None:
            world.barrier()  # every rank is done with its collectives before the process group goes away
    finally:
        if world is not None:
            from utils.distributed import leave_world
            leave_world(world)
    if results is not None and recorded is not None:
        return report_reproduction(table, recorded, run.id, git_commit(CODE_DIR), git_diff(CODE_DIR), run_environment,
                                   args.tolerance)
    return code


def register_run(table, args, overrides, argv, world_size):
    """(Run, RunIdentity, RecordedRun or None) for this launch: a new run, a resumed one, or a reproduction."""
    command = command_line([sys.argv[0], *argv])
    if args.resume is not None:
        run, identity = table.resume_run(
            args.resume, check=lambda identity: check_world_size(identity, args.resume, world_size, "--resume"))
        return run, identity, None
    if args.reproduce is not None:
        recorded = table.recorded_run(args.reproduce)
        check_world_size(recorded.identity, recorded.run_id, world_size, "--reproduce")
        find_experiment(recorded.identity.experiment)
        run = table.start_run(recorded.identity, config_path=f"(run {recorded.run_id})", command=command,
                              commit=git_commit(CODE_DIR), diff=git_diff(CODE_DIR), debug=True)
        return run, recorded.identity, recorded
    identity = new_identity(args, overrides, world_size)
    if not args.debug:
        table.refuse_duplicate(identity)  # before any data or model is loaded
    run = table.start_run(identity, config_path=args.config, command=command, commit=git_commit(CODE_DIR),
                          diff=git_diff(CODE_DIR), debug=args.debug)
    return run, identity, None


def check_world_size(identity, run_id, world_size, mode):
    """Refuse to resume or reproduce run `run_id` on another number of processes than it ran on."""
    recorded_size = identity.flags.get("world_size", 1)
    if recorded_size != world_size:
        launcher = (f"torchrun --nproc_per_node={recorded_size} main.py" if recorded_size > 1 else "python main.py")
        raise UserError(f"run {run_id} ran on {recorded_size} process(es), this launch has {world_size}; "
                        f"use {launcher} {mode}={run_id}")


def execute(run, identity, verbose, world=None):
    """(results or None, exit code, environment) of running `identity`'s experiment into `run`.

    Any exception, Ctrl-C and SIGTERM included, marks the run failed after writing what it logged; an interruption
    returns exit code 130 or 143 with a line on how to resume, any other exception propagates with its traceback.
    """
    if verbose >= 1:
        what = "debug" if run.id == -1 else ""
        print(f"run {run.id}: {identity.experiment}{f' ({what})' if what else ''}, checkpoints in {run.folder}",
              flush=True)
    flags = {**{name: make_parser().get_default(name) for name in RESULT_FLAGS}, **identity.flags}
    try:
        with run:
            from utils.device import keep_freed_memory, pick_device  # imports torch: only once a run really starts
            from utils.provenance import environment
            keep_freed_memory()
            device = pick_device(force_cpu=flags["cpu"], index=world.local_rank if world else 0)
            run_environment = environment(device)
            run.log_text("environment", json.dumps(run_environment, indent=2))
            # The experiment gets the config back from its recorded text: what runs is exactly what was recorded.
            experiment = find_experiment(identity.experiment)
            extra = {"world": world} if world is not None else {}
            results = experiment(load_config_text(identity.config_text), run, device, watch=flags["watch"],
                                 verbose=verbose, **extra)
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        if world is None or world.is_main:
            print(f"{what}: run {run.id} is marked failed, with all it logged; continue it with "
                  f"python main.py --resume={run.id}", file=sys.stderr)
        return None, 130 if isinstance(stop, KeyboardInterrupt) else 143, None
    if world is None or world.is_main:
        print(f"run {run.id} finished: " + ", ".join(f"{k} {_format(v)}" for k, v in results.items()), flush=True)
    return results, 0, run_environment


def join_launched_world(force_cpu):
    """torchrun's World when this process was started by it (WORLD_SIZE > 1), else None without importing torch."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from utils.distributed import join_world
    return join_world(force_cpu)


def run_sweep(table, args, overrides, argv):
    """Run every combination of the comma-separated override values, one normal run after another.

    Finished combinations are skipped, so the same command resumes a sweep that crashed or was stopped; failed ones
    run again. Ends with a table of every combination, its run ID, status and results.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--sweep runs its combinations one after another in one process; launch it without torchrun")
    axes = [[(key, value) for value in sweep_values(text)] for key, text in overrides]
    combinations = list(itertools.product(*axes))
    identities = [new_identity(args, combination) for combination in combinations]  # every value checked first
    count = f"{len(combinations)} combination{'s' if len(combinations) > 1 else ''}"
    print(f"sweep: {count} of {', '.join(key for key, _ in overrides)}" if overrides else f"sweep: {count}")
    rows, code = [], 0
    for number, (combination, identity) in enumerate(zip(combinations, identities), start=1):
        label = " ".join(f"{key}={value}" for key, value in combination) or "(the config as it is)"
        found = table.find_run(identity)
        if found is not None:
            run_id, status, *_ = found
            print(f"[{number}/{len(combinations)}] {label}: skipped, {status} as run {run_id}")
            rows.append((label, run_id, status, table.recorded_run(run_id).results if status == "finished" else {}))
            continue
        print(f"[{number}/{len(combinations)}] {label}", flush=True)
        command = command_line([sys.argv[0], *[a for a in argv if a != "--sweep" and not a.startswith(OVERRIDE_PREFIX)],
                                *[f"{OVERRIDE_PREFIX}{key}={value}" for key, value in combination]])
        run = table.start_run(identity, config_path=args.config, command=command, commit=git_commit(CODE_DIR),
                              diff=git_diff(CODE_DIR))
        try:
            results, stopped, _ = execute(run, identity, args.verbose)
        except UserError:  # missing data, a bad value...: every other combination would stop the same way
            rows.append((label, run.id, run.status, {}))
            print_sweep_table(rows)
            raise
        except Exception:  # a crash of one combination: show it, keep it failed in the table, go on with the next
            traceback.print_exc()
            results, stopped, code = {}, 0, 1
        rows.append((label, run.id, run.status, results or {}))
        if stopped:
            print_sweep_table(rows)
            print("the sweep stopped; the same command resumes it, skipping the finished combinations",
                  file=sys.stderr)
            return stopped
    print_sweep_table(rows)
    return code


def print_sweep_table(rows):
    names = sorted({name for *_, results in rows for name in results})
    header = ["combination", "run", "status", *names]
    lines = [header] + [[label, str(run_id), status, *(_format(results[n]) if n in results else "" for n in names)]
                        for label, run_id, status, results in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def report_reproduction(table, recorded, new_run_id, commit, diff, run_environment, tolerance):
    """Print the recorded and new values side by side; 0 when they all match, 1 when any differs."""
    from utils.reproduce import compare_runs, provenance_warnings

    for line in provenance_warnings(recorded, commit, diff, run_environment):
        print(line, file=sys.stderr)
    lines, differing = compare_runs(recorded, table.recorded_run(new_run_id), tolerance)
    print("\n".join(lines))
    if differing:
        print(f"run {recorded.run_id} NOT reproduced: {differing} of {len(lines) - 1} values differ "
              f"(tolerance {tolerance:g}; timings are not compared)")
        return 1
    print(f"run {recorded.run_id} reproduced: all {len(lines) - 1} results and curves match "
          f"(tolerance {tolerance:g}; timings are not compared)")
    return 0


def _format(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Terminated):
        print("interrupted before a run started: nothing was recorded", file=sys.stderr)
        sys.exit(130)
