"""Run an experiment and record it in the run table (this checkout's results/resultTable.db, or RESULT_TABLE's).

    python main.py --experiment=experiment1 --config=configs/config.yml [flags] [--config.SECTION.KEY=VALUE ...]
        [--seeds=N] [--sweep] [--search=N]
    python main.py --resume=RUNID | --reproduce=RUNID | --verify [RUNID ...] | --compare [RUNID ...]
    python main.py --list | --new-experiment=NAME | --config=FILE --print-config
"""
import importlib
import os
import signal
import sys
from pathlib import Path

STOPPED_BEFORE_A_RUN = "interrupted before a run started: nothing was recorded"


def _leave_while_loading(signum, frame):
    """Ctrl-C or SIGTERM while the modules below load: nothing has started, so leave at once, in one line."""
    print(STOPPED_BEFORE_A_RUN, file=sys.stderr, flush=True)
    os._exit(130 if signum == signal.SIGINT else 143)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _leave_while_loading)
    signal.signal(signal.SIGTERM, _leave_while_loading)

from modes.launch import (Launch, Parser, Project, choose_mode, chosen_table, group_defaults, locate_config,
                          read_command_line)
from utils.errors import Terminated, UserError, one_line
from utils.runtable.identity import IdentityRules

# ---- Register your experiments here: `from experiments.NAME import NAME` and a "NAME": NAME entry. ----
from experiments.charlm import charlm
from experiments.experiment1 import experiment1

experiments = {"experiment1": experiment1, "charlm": charlm}
# ---------------------------------------------------------------------------------------------------------

CODE_DIR = Path(__file__).resolve().parent
# What makes two launches the same run, every rule in one place (IdentityRules says what each means). Add a key or
# a flag of yours to the rule it belongs to: an output folder of yours is a where-key, a flag that only prints is
# output-only.
IDENTITY = IdentityRules(
    where_keys=("data.path", "data.download", "data.workers", "data.memory_limit_mb"),
    path_keys=("data.path",),
    implied={"data.name": "mnist"},
    output_only=("verbose",),
)
# Each mode and the function that carries it out.
MODES = {"run": "modes.run:run_new", "resume": "modes.resume:resume", "reproduce": "modes.reproduce:reproduce",
         "verify": "modes.verify:verify", "sweep": "modes.sweep:sweep", "search": "modes.search:search",
         "compare": "modes.compare:compare_mode",
         "new_experiment": "modes.scaffold:scaffold", "list": "modes.info:list_experiments",
         "print_config": "modes.info:print_config"}


def add_experiment_flags(parser):
    """Flags of the experiments: each experiment names those its function takes in the flags of its @declare(...).

    Add yours here, with a default that keeps earlier runs as they were: a flag that differs from its default is
    part of the run's identity, unless it is named in IDENTITY's output_only.
    """
    parser.add_argument("--watch", metavar="METRIC",
                        help="validation metric that picks the best epoch and a search's best trial, one the "
                             "experiment declares (default: the experiment's own choice)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is available")
    parser.add_argument("--verbose", type=int, choices=range(4), default=1,
                        help="0: final result only, 1: progress and a line per epoch (default), 2: + setup, 3: + steps")


def make_parser():
    parser = Parser(description="Train an experiment and record it in this checkout's results/resultTable.db (or in "
                                "the table the environment variable RESULT_TABLE names).",
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
    modes.add_argument("--trust-old-checkpoint", action="store_true",
                       help="with --resume: convert the run's checkpoints written by an earlier version of the "
                            "template (pickled NumPy state) to the safe format; only for files you trust")
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
    modes.add_argument("--seeds", metavar="N|A,B,...",
                       help="run every configuration with N seeds (the config's seed and the next N-1) or these seeds")
    modes.add_argument("--search", type=int, metavar="N",
                       help="a study of N trials that Optuna proposes over the ranges (A..B, log:A..B) and choices "
                            "(A,B,C) of the overrides; the same command continues it")
    modes.add_argument("--search-space", metavar="FILE",
                       help="with --search: a YAML file of more ranges and choices ('training.learning_rate: "
                            "log:1e-4..1e-2')")
    modes.add_argument("--search-storage", metavar="URL",
                       help="with --search: keep the study in this PostgreSQL database (postgresql://USER@HOST/DB), "
                            "so that workers on several machines share it (default: results/search.journal)")
    modes.add_argument("--prune", action="store_true",
                       help="with --search: stop trials whose validation, epoch by epoch, falls below the median of "
                            "earlier trials (Optuna's median pruner)")
    modes.add_argument("--workers", type=int, metavar="N",
                       help="with --sweep, --seeds or --search: start N local workers that share the runs, and wait "
                            "for them")
    modes.add_argument("--compare", type=int, nargs="*", metavar="RUNID",
                       help="groups of runs differing only in their seed: means, 95%% intervals and tests against a "
                            "reference group (filter with run IDs, --experiment, --config and overrides)")
    modes.add_argument("--against", type=int, metavar="RUNID",
                       help="with --compare: the reference is this run's group (default: the baseline config's)")
    modes.add_argument("--format", choices=("table", "markdown", "json"), default="table",
                       help="with --compare: a table (default), Markdown for a lab book, or JSON")
    modes.add_argument("--list", action="store_true", help="list the registered experiments and datasets and exit")
    modes.add_argument("--print-config", action="store_true",
                       help="print the merged config (--config and overrides) and exit")
    modes.add_argument("--new-experiment", metavar="NAME",
                       help="create experiments/NAME.py and NAME.md from experiment1 (or --from's) and register NAME "
                            "here")
    modes.add_argument("--from", dest="base", metavar="EXPERIMENT",
                       help="with --new-experiment: the registered experiment to start from (default: experiment1)")
    return parser


def make_project(parser=None):
    """This checkout's Project: the registry, the experiment flags and their roles, the where-, implied and path
    keys, and the run table (this checkout's results/resultTable.db, or the one RESULT_TABLE names).

    With it, a notebook starts runs as the command line does:
        from main import make_project
        from modes.launch import RunDescription
        from modes.run import start_run
        outcome = start_run(make_project(), RunDescription("experiment1", config, seed=1),
                            config_path="configs/config.yml")
    """
    parser = parser or make_parser()
    return Project(experiments, group_defaults(parser, "experiment flags"), IDENTITY, CODE_DIR,
                   chosen_table(CODE_DIR, os.environ))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # Ctrl-C interrupts even where SIGINT was ignored
    parser = make_parser()
    args, overrides = read_command_line(parser, argv)
    args.config = locate_config(args.config, CODE_DIR)
    mode = choose_mode(args, overrides, parser, IDENTITY.output_only)
    launch = Launch(args, overrides, argv, make_project(parser))
    module, function = MODES[mode].split(":")  # imported only when chosen: a refusal stays fast
    return getattr(importlib.import_module(module), function)(launch)


def _stop(signum, frame):
    """The first Ctrl-C or SIGTERM unwinds like an exception (a run is marked failed, with all it logged); those
    after it are ignored, so that the unwinding and the interpreter's exit finish without a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def cli(argv=None):
    """main() as the shell sees it: a user's mistake is one line on stderr and exit code 2, never a traceback."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        print(STOPPED_BEFORE_A_RUN, file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130  # the shell's codes for SIGTERM and Ctrl-C
    except BrokenPipeError:  # the reader of the output left (`| head`): stop quietly, as Unix tools do
        _discard_stdout()
        return 0


def _discard_stdout():
    """Point stdout at /dev/null, so that flushing what is left at exit raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(cli())
