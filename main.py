"""Run an experiment and record it in the run table (this checkout's results/resultTable.db, or RESULT_TABLE's).

    python main.py --experiment=experiment1 --config=configs/config.yml [flags] [--config.SECTION.KEY=VALUE ...]
        [--seeds=N] [--sweep] [--search=N]
    python main.py --resume=RUNID | --reproduce=RUNID | --verify [RUNID ...] | --compare [RUNID ...]
    python main.py --list | --new-experiment=NAME | --config=FILE --print-config
"""
import importlib
import io
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

from modes.flags import Flag, Role, build_parser, mode_functions
from modes.launch import (Launch, Project, choose_mode, chosen_table, locate_config, read_command_line,
                          utf8_arguments)
from utils.errors import UserError, one_line
from utils.runtable.identity import IdentityRules
from utils.stopping import exit_code, ignore_stops, stop_behind, stop_on_signals

# ---- Register your experiments here: `from experiments.NAME import NAME` and a "NAME": NAME entry. ----
from experiments.charlm import charlm
from experiments.experiment1 import experiment1
from experiments.tabular import tabular

experiments = {"experiment1": experiment1, "charlm": charlm, "tabular": tabular}

# The flags handed to the experiment functions. Add yours here, with a default that keeps earlier runs as they were,
# and name it in the flags of the @declare(...) of the experiments that take it: away from its default, a flag of
# Role.IDENTITY is part of the run's identity; one of Role.OUTPUT only changes what is printed.
EXPERIMENT_FLAGS = (
    Flag("--watch", "validation metric that picks the best epoch and a search's best trial, one the experiment "
         "declares (default: the experiment's own choice)", Role.IDENTITY, read_by_template=True,
         options=dict(metavar="METRIC")),
    Flag("--cpu", "train on the CPU even when a GPU is available", Role.IDENTITY, read_by_template=True,
         options=dict(action="store_true")),
    Flag("--verbose", "0: final result only, 1: progress and a line per epoch (default), 2: + setup, 3: + steps",
         Role.OUTPUT, read_by_template=True, options=dict(type=int, choices=range(4), default=1)),
)
# ---------------------------------------------------------------------------------------------------------

CODE_DIR = Path(__file__).resolve().parent
# What makes two launches the same run, every rule in one place (IdentityRules says what each means). Add a key of
# yours to the rule it belongs to: an output folder of yours is a where-key.
IDENTITY = IdentityRules(
    where_keys=("data.path", "data.download", "data.workers", "data.memory_limit_mb", "training.checkpoint_every"),
    path_keys=("data.path",),
    implied={"data.name": "mnist", "training.accumulate": 1, "training.compile": False,
             "training.weight_decay_scope": "all", "training.fused": False},
    renamed={"training.precision": "training.autocast"},
)


def make_parser():
    """The command line's parser: the template's launch and mode flags (modes/flags.py) and EXPERIMENT_FLAGS."""
    return build_parser(EXPERIMENT_FLAGS, experiments)


def make_project(table=None):
    """This checkout's Project: the registry, the experiment flags and their roles, the where-, implied and path
    keys, and the run table (`table`: a table file or the results folder holding one; by default this checkout's
    results/resultTable.db, or the one RESULT_TABLE names).

    With it, a notebook starts runs as the command line does:
        from main import make_project
        from modes.launch import RunDescription
        from modes.run import start_run
        outcome = start_run(make_project(), RunDescription("experiment1", config, seed=1),
                            config_path="configs/config.yml")
    """
    if table is not None:
        table = Path(table).expanduser().absolute()
        table = table / "resultTable.db" if table.is_dir() else table
    return Project(experiments, EXPERIMENT_FLAGS, IDENTITY, CODE_DIR, table or chosen_table(CODE_DIR, os.environ))


def load_run(run, table=None, *, last=False, device="cpu"):
    """A recorded run as a model you can use: a LoadedRun (modes/use.py) holding its merged config, its measures,
    its data description, its recorded results and its model, built by its own experiment, with the weights of its
    best epoch (`last`: of its last resume point), in eval mode, on `device`.

    `run` is a run ID of this checkout's table (or of `table`: a table file or a results folder; RESULT_TABLE names
    another too), or a folder that --export wrote. What it loads is checked as --resume checks it: a checkpoint that is
    not the run's, or that the safe loader refuses, is one line (a UserError), and so is a run that never finished an
    epoch or whose experiment's code changed shape since.

        from main import load_run
        run = load_run(12)
        run.model, run.data, run.config["model"], run.results["test_accuracy"]
    """
    from modes.use import load

    return load(make_project(table), run, last=last, device=device)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    stop_on_signals()
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show a character gets its escape, never a crash
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    argv = utf8_arguments(argv)
    parser = make_parser()
    args, overrides = read_command_line(parser, argv)
    args.config = locate_config(args.config, CODE_DIR)
    mode = choose_mode(args, parser.flags)
    launch = Launch(args, overrides, argv, make_project())
    module, function = mode_functions(parser.flags)[mode].split(":")  # imported only when chosen: refusals stay fast
    return getattr(importlib.import_module(module), function)(launch)


def cli(argv=None):
    """main() as the shell sees it: a user's mistake is one line on stderr and exit code 2, never a traceback; a stop
    is one line and the shell's code (130, 143), whenever the signal lands."""
    try:
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {one_line(str(e))}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # the reader of the output left (`| head`): stop quietly, as Unix tools do
            _discard_stdout()
            return 0
    except BaseException as error:  # also a stop that lands while a mistake is being reported
        stop = stop_behind(error)  # a library may have turned the stop into an error of its own
        if stop is None:
            raise
        print(STOPPED_BEFORE_A_RUN, file=sys.stderr)
        return exit_code(stop)
    finally:
        ignore_stops()  # the exit code is chosen: a signal during the interpreter's exit must not kill it


def _discard_stdout():
    """Point stdout at /dev/null, so that flushing what is left at exit raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(cli())
