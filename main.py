"""Run one experiment and record it in the run table.

    python main.py --experiment=experiment1 --config=configs/config.yml [flags] [--config.SECTION.KEY=VALUE ...]
    python main.py --resume=RUNID          continue a failed run from its last epoch
    python main.py --reproduce=RUNID       run a recorded run again (as a debug run) and compare the numbers
    python main.py --list | --new-experiment=NAME | --config=FILE --print-config
"""
import argparse
import difflib
import json
import signal
import sys
from pathlib import Path

from experiments.experiment1 import experiment1
from utils.config import OVERRIDE_PREFIX, apply_overrides, dump_config, load_config, load_config_text, parse_override
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
                                    ("--new-experiment", args.new_experiment is not None)) if on]
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


def new_identity(args, overrides):
    """The RunIdentity of a fresh launch: experiment, merged config, changed result flags, comment."""
    find_experiment(args.experiment)
    config = apply_overrides(load_config(args.config), overrides)
    parser = make_parser()
    flags = {name: getattr(args, name) for name in RESULT_FLAGS if getattr(args, name) != parser.get_default(name)}
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
    command = command_line([sys.argv[0], *argv])

    recorded = None
    if args.resume is not None:
        run, identity = table.resume_run(args.resume)
    elif args.reproduce is not None:
        recorded = table.recorded_run(args.reproduce)
        identity = recorded.identity
        find_experiment(identity.experiment)
        commit, diff = git_commit(CODE_DIR), git_diff(CODE_DIR)
        run = table.start_run(identity, config_path=f"(run {recorded.run_id})", command=command, commit=commit,
                              diff=diff, debug=True)
    else:
        identity = new_identity(args, overrides)
        if not args.debug:
            table.refuse_duplicate(identity)  # before any data or model is loaded
        commit, diff = git_commit(CODE_DIR), git_diff(CODE_DIR)
        run = table.start_run(identity, config_path=args.config, command=command, commit=commit, diff=diff,
                              debug=args.debug)

    if args.verbose >= 1:
        what = f"reproducing run {recorded.run_id} as run -1" if recorded else "debug" if run.id == -1 else ""
        print(f"run {run.id}: {identity.experiment}{f' ({what})' if what else ''}, checkpoints in {run.folder}",
              flush=True)
    flags = {**{name: make_parser().get_default(name) for name in RESULT_FLAGS}, **identity.flags}
    try:
        with run:  # any exception, Ctrl-C and SIGTERM included, marks the run failed after writing what it logged
            from utils.device import pick_device  # imports torch: only once a run really starts
            from utils.provenance import environment
            device = pick_device(force_cpu=flags["cpu"])
            run_environment = environment(device)
            run.log_text("environment", json.dumps(run_environment, indent=2))
            # The experiment gets the recorded config back from its canonical text: what runs is what was recorded.
            results = find_experiment(identity.experiment)(
                load_config_text(identity.config_text), run, device, watch=flags["watch"], verbose=args.verbose)
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        print(f"{what}: run {run.id} is marked failed, with all it logged; continue it with "
              f"python main.py --resume={run.id}", file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 143
    print(f"run {run.id} finished: " + ", ".join(f"{k} {_format(v)}" for k, v in results.items()))

    if recorded is not None:
        return report_reproduction(table, recorded, run.id, commit, diff, run_environment, args.tolerance)
    return 0


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
