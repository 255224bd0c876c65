"""Run an experiment and record it in the run table (results/resultTable.db).

    python main.py --experiment=experiment1 --config=configs/config.yml [flags] [--config.SECTION.KEY=VALUE ...]
    python main.py --resume=RUNID | --reproduce=RUNID | --verify [RUNID ...] | --list | --new-experiment=NAME
    python main.py --config=FILE --print-config
"""
import signal
import sys
from pathlib import Path

from modes.launch import Launch, Parser, group_defaults, read_command_line
from utils.errors import Terminated, UserError

# ---- Register your experiments here: `from experiments.NAME import NAME` and a "NAME": NAME entry. ----
from experiments.experiment1 import experiment1

experiments = {"experiment1": experiment1}
# ---------------------------------------------------------------------------------------------------------

CODE_DIR = Path(__file__).resolve().parent
# Experiment flags that change only what is printed: never part of a run's identity.
OUTPUT_ONLY = ("verbose",)
# Config keys that say where things are or how they are fetched, not what is computed: never part of a run's
# identity, and the only overrides --resume, --reproduce and --verify take. Add a key of yours of that kind here.
WHERE_KEYS = ("data.path", "data.download")


def add_experiment_flags(parser):
    """Flags handed to the experiment function as keyword arguments (when it has a parameter of that name).

    Add yours here, with a default that keeps earlier runs as they were: a flag that differs from its default is
    part of the run's identity, unless it is named in OUTPUT_ONLY.
    """
    parser.add_argument("--watch", choices=("accuracy", "loss"), default="accuracy",
                        help="validation metric that picks the best checkpoint (default: accuracy)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is available")
    parser.add_argument("--verbose", type=int, choices=range(4), default=1,
                        help="0: final result only, 1: progress and a line per epoch (default), 2: + setup, 3: + steps")


def make_parser():
    parser = Parser(description="Train an experiment and record it in results/resultTable.db.",
                    epilog="Any config key can be overridden: --config.training.num_epochs=5", allow_abbrev=False)
    launch = parser.add_argument_group("launch")
    launch.add_argument("--experiment", help=f"experiment to run (required): {', '.join(experiments)}")
    launch.add_argument("--config", help="YAML file with the baseline parameters (required)")
    launch.add_argument("--debug", action="store_true", help="record as run ID -1, replacing the last debug run")
    launch.add_argument("--comment", default="", help="a note stored with the run; part of its identity")
    add_experiment_flags(parser.add_argument_group("experiment flags"))
    modes = parser.add_argument_group("other modes")
    modes.add_argument("--resume", type=int, metavar="RUNID",
                       help="continue failed run RUNID from its last epoch, with its recorded config and flags")
    modes.add_argument("--reproduce", type=int, metavar="RUNID",
                       help="re-run recorded run RUNID as a debug run and compare every result and curve with it")
    modes.add_argument("--verify", type=int, nargs="*", metavar="RUNID",
                       help="replay the first steps of recorded runs (default: the newest finished run of every "
                            "identity) and check that every logged value comes out the same")
    modes.add_argument("--steps", type=int, metavar="N",
                       help="with --verify: replay N steps (default: the first epoch)")
    modes.add_argument("--tolerance", type=float, default=0.0,
                       help="with --reproduce or --verify: largest difference still counted as equal (default 0)")
    modes.add_argument("--sweep", action="store_true",
                       help="split override values at commas and run every combination, skipping finished ones")
    modes.add_argument("--list", action="store_true", help="list the registered experiments and exit")
    modes.add_argument("--print-config", action="store_true",
                       help="print the merged config (--config and overrides) and exit")
    modes.add_argument("--new-experiment", metavar="NAME",
                       help="create experiments/NAME.py and NAME.md from experiment1 and register NAME here")
    return parser


def choose_mode(args, overrides, parser):
    """The name of the mode this command asks for, after refusing combinations that make no sense."""
    chosen = [mode for mode, on in (("resume", args.resume is not None), ("reproduce", args.reproduce is not None),
                                    ("verify", args.verify is not None), ("list", args.list), ("print_config", args.print_config),
                                    ("new_experiment", args.new_experiment is not None), ("sweep", args.sweep)) if on]
    if len(chosen) > 1:
        raise UserError(f"{' and '.join('--' + m.replace('_', '-') for m in chosen)} do different things; "
                        f"use one of them")
    mode = chosen[0] if chosen else "run"
    if args.tolerance != 0.0 and mode not in ("reproduce", "verify"):
        raise UserError("--tolerance only applies to --reproduce and --verify")
    if args.steps is not None and (mode != "verify" or args.steps < 1):
        raise UserError("--steps=N (N >= 1) only applies to --verify")
    if mode in ("resume", "reproduce", "verify"):  # the run's recorded experiment, config and flags are used
        recorded = ("experiment", "config", "comment", "debug", *group_defaults(parser, "experiment flags"))
        given = [f"--{name}" for name in recorded
                 if name not in OUTPUT_ONLY and getattr(args, name) != parser.get_default(name)]
        if given:  # overrides of where-keys (data.path) are allowed: the launch checks them
            raise UserError(f"--{mode} takes the run's recorded experiment, config and flags; drop {', '.join(given)}")
    elif mode == "print_config" and args.config is None:
        raise UserError("--print-config needs --config=FILE (and any --config.* overrides)")
    elif mode in ("run", "sweep"):
        missing = [f"--{name}" for name in ("experiment", "config") if getattr(args, name) is None]
        if missing:
            raise UserError(f"{' and '.join(missing)} required, e.g. "
                            f"python main.py --experiment=experiment1 --config=configs/config.yml")
    if args.sweep and args.debug:
        raise UserError("--sweep records every combination as a run of its own; drop --debug")
    return mode


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C interrupts even where SIGINT was ignored
    parser = make_parser()
    args, overrides = read_command_line(parser, argv)
    mode = choose_mode(args, overrides, parser)
    launch = Launch(args, overrides, argv, experiments, group_defaults(parser, "experiment flags"), OUTPUT_ONLY,
                    WHERE_KEYS, CODE_DIR)
    if mode == "run":
        from modes.run import run_new
        return run_new(launch)
    if mode == "resume":
        from modes.resume import resume
        return resume(launch)
    if mode == "reproduce":
        from modes.reproduce import reproduce
        return reproduce(launch)
    if mode == "verify":
        from modes.verify import verify
        return verify(launch)
    if mode == "sweep":
        from modes.sweep import sweep
        return sweep(launch)
    if mode == "new_experiment":
        from modes.scaffold import scaffold
        return scaffold(launch)
    from modes.info import list_experiments, print_config
    return list_experiments(launch) if mode == "list" else print_config(launch)


def _raise_terminated(signum, frame):
    raise Terminated()


def cli(argv=None):
    """main() as the shell sees it: a user's mistake is one line on stderr and exit code 2, never a traceback."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated):
        print("interrupted before a run started: nothing was recorded", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
