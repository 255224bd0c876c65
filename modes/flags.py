"""Every flag of main.py, declared once: how it is read, what it is to a run (its role), and the modes it goes with.

Roles: Role.IDENTITY flags are part of a run's identity when away from their default (--comment, --watch);
Role.OUTPUT flags change only what is printed (--verbose); Role.MODE flags belong to a mode (--resume, --sweep,
--tolerance) and are never recorded. A flag that starts a mode names it and the function that carries it out, so
adding a mode or a flag is one declaration. main.py declares the flags handed to the experiment functions; this
module declares the template's own.
"""
import argparse
from dataclasses import dataclass, field

from utils.errors import UserError
from utils.runtable.schema import LARGEST_RUN_ID


def run_id(text):
    """A run ID as typed: a whole number that a run table can hold."""
    value = int(text)  # argparse says "invalid run_id value: 'abc'" in one line
    if abs(value) > LARGEST_RUN_ID:
        raise argparse.ArgumentTypeError(f"{text[:30]} is no run ID: a run table holds none past {LARGEST_RUN_ID:,}")
    return value


class Role:
    IDENTITY = "identity"
    OUTPUT = "output"
    MODE = "mode"


@dataclass(frozen=True)
class Flag:
    """One flag: its name and help, its role, the modes it goes with, and how argparse reads it (`options`)."""
    name: str  # as typed: "--search-space"
    help: str
    role: str = Role.MODE
    modes: tuple | None = None  # the modes it goes with; None: any. Given with another mode, it is refused.
    starts: str | None = None  # the mode it starts...
    runs: str | None = None  # ...and "module:function", the function that carries that mode out
    takes_record: bool = False  # its mode takes a recorded run's experiment, config and flags (--resume)
    allows: tuple = ()  # with takes_record: the recorded flags its mode takes all the same (--evaluate: --debug)
    recorded: bool = False  # a recorded run holds it (its run ID -1), as it holds its identity flags
    read_by_template: bool = False  # an experiment flag the template reads itself: experiments need not declare it
    options: dict = field(default_factory=dict)  # argparse's: type, default, action, metavar, nargs, choices, dest

    @property
    def dest(self) -> str:
        return self.options.get("dest", self.name.removeprefix("--").replace("-", "_"))

    @property
    def default(self):
        if "default" in self.options:
            return self.options["default"]
        return False if self.options.get("action") == "store_true" else None

    def given(self, args) -> bool:
        """Whether the command line set this flag away from its default."""
        return getattr(args, self.dest) != self.default


DEFAULT_MODE = "run"  # no flag starts it: a plain launch
DEFAULT_MODE_RUNS = "modes.run:run_new"

LAUNCH_FLAGS = (
    Flag("--experiment", "experiment to run (required): {experiments}", Role.IDENTITY),
    Flag("--config", "YAML file with the baseline parameters (required)", Role.IDENTITY),
    Flag("--debug", "record as run ID -1, replacing the last debug run", recorded=True,
         options=dict(action="store_true")),
    Flag("--comment", "a note stored with the run; part of its identity", Role.IDENTITY, options=dict(default="")),
)

MODE_FLAGS = (
    Flag("--resume", "continue failed run RUNID from its resume point (the step it stopped at), with its recorded "
         "config and flags",
         starts="resume", runs="modes.resume:resume", takes_record=True, options=dict(type=run_id, metavar="RUNID")),
    Flag("--trust-old-checkpoint", "with --resume: convert the run's checkpoints written by an earlier version of the "
         "template (pickled NumPy state) to the safe format; only for files you trust", modes=("resume",),
         options=dict(action="store_true")),
    Flag("--reproduce", "re-run recorded run RUNID as a debug run and compare every result and curve with it",
         starts="reproduce", runs="modes.reproduce:reproduce", takes_record=True,
         options=dict(type=run_id, metavar="RUNID")),
    Flag("--verify", "replay the first steps of recorded runs (default: the newest finished run of every identity) "
         "and check that every logged value comes out the same", starts="verify", runs="modes.verify:verify",
         takes_record=True, options=dict(type=run_id, nargs="*", metavar="RUNID")),
    Flag("--steps", "with --verify: replay N steps (default: the first epoch)", modes=("verify",),
         options=dict(type=int, metavar="N")),
    Flag("--tolerance", "with --reproduce or --verify: largest difference still counted as equal (default 0; for a "
         "run recorded with training.deterministic: false, 0.01)", modes=("reproduce", "verify"),
         options=dict(type=float)),
    Flag("--evaluate", "score run RUNID's best model on the data the --config.data.* overrides name (another "
         "dataset of the same shape, your folder, another split), recorded as an evaluation of the run",
         starts="evaluate", runs="modes.use:evaluate_mode", takes_record=True, allows=("--debug",),
         options=dict(type=run_id, metavar="RUNID")),
    Flag("--sample", "print the text run RUNID's model writes (a language model: charlm)", starts="sample",
         runs="modes.use:sample_mode", takes_record=True, options=dict(type=run_id, metavar="RUNID")),
    Flag("--prompt", "with --sample: the text it continues (default: the start of a line)", modes=("sample",),
         options=dict(default="")),
    Flag("--length", "with --sample: how many characters it writes (default 400)", modes=("sample",),
         options=dict(type=int, default=400)),
    Flag("--temperature", "with --sample: below 1 surer, above 1 more varied (default 1)", modes=("sample",),
         options=dict(type=float, default=1.0)),
    Flag("--seed", "with --sample: the seed of the sampling (default: the run's seed); the same arguments give the "
         "same text", modes=("sample",), options=dict(type=int)),
    Flag("--export", "write run RUNID's best model (safetensors), config, data description and a model card to "
         "--to=DIR, for use without the run table", starts="export", runs="modes.use:export_mode", takes_record=True,
         options=dict(type=run_id, metavar="RUNID")),
    Flag("--to", "with --export: the folder to write (new or empty)", modes=("export",), options=dict(metavar="DIR")),
    Flag("--compare", "groups of runs differing only in their seed: means, 95%% intervals and tests against a "
         "reference group (filter with run IDs, --experiment, --config and overrides)", starts="compare",
         runs="modes.compare:compare_mode", options=dict(type=run_id, nargs="*", metavar="RUNID")),
    Flag("--against", "with --compare: the reference is this run's group (default: the baseline config's)",
         modes=("compare",), options=dict(type=run_id, metavar="RUNID")),
    Flag("--format", "with --compare: a table (default), Markdown for a lab book, or JSON", modes=("compare",),
         options=dict(choices=("table", "markdown", "json"), default="table")),
    Flag("--list", "list the registered experiments and datasets and exit", starts="list",
         runs="modes.info:list_experiments", options=dict(action="store_true")),
    Flag("--print-config", "print the merged config (--config and overrides) and exit", starts="print_config",
         runs="modes.info:print_config", options=dict(action="store_true")),
    Flag("--new-experiment", "create experiments/NAME.py, configs/NAME.yml, its lab book and tests/test_NAME.py from "
         "experiment1 (or --from's) and register NAME in main.py", starts="new_experiment",
         runs="modes.scaffold:scaffold", options=dict(metavar="NAME")),
    Flag("--from", "with --new-experiment: the registered experiment to start from (default: experiment1; charlm for "
         "text, tabular for anything else)",
         modes=("new_experiment",), options=dict(dest="base", metavar="EXPERIMENT")),
    Flag("--search", "a study of N trials that Optuna proposes over the ranges (A..B, log:A..B) and choices (A,B,C) "
         "of the overrides; the same command continues it", starts="search", runs="modes.search:search",
         options=dict(type=int, metavar="N")),
    Flag("--search-space", "with --search: a YAML file of more ranges and choices ('training.learning_rate: "
         "log:1e-4..1e-2')", modes=("search",), options=dict(metavar="FILE")),
    Flag("--search-storage", "with --search: keep the study in this PostgreSQL database (postgresql://USER@HOST/DB), "
         "so that workers on several machines share it (default: results/search.journal)", modes=("search",),
         options=dict(metavar="URL")),
    Flag("--prune", "with --search: stop trials whose validation, epoch by epoch, falls below the median of earlier "
         "trials (Optuna's median pruner)", modes=("search",), options=dict(action="store_true")),
    Flag("--sweep", "split override values at commas and run every combination, skipping finished ones",
         starts="sweep", runs="modes.sweep:sweep", options=dict(action="store_true")),
    # Alone, --seeds is a sweep of seeds; with --search, it gives every trial its seeds.
    Flag("--seeds", "run every configuration with N seeds (the config's seed and the next N-1) or these seeds",
         starts="sweep", runs="modes.sweep:sweep", modes=("sweep", "search"), options=dict(metavar="N|A,B,...")),
    Flag("--workers", "with --sweep, --seeds or --search: start N local workers that share the runs, and wait for "
         "them", modes=("sweep", "search"), options=dict(type=int, metavar="N")),
)


class Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as a UserError (one line, exit code 2) instead of printing usage, and keeps the
    Flags it was built from."""

    def __init__(self, flags=(), **kwargs):
        super().__init__(**kwargs)
        self.flags = tuple(flags)

    def error(self, message):
        raise UserError(f"{message} (see python main.py --help)")


def build_parser(experiment_flags, experiments) -> Parser:
    """The parser of main.py: the template's launch and mode flags around the experiments' own."""
    parser = Parser((*LAUNCH_FLAGS, *experiment_flags, *MODE_FLAGS),
                    description="Train an experiment and record it in this checkout's results/resultTable.db (or in "
                                "the table the environment variable RESULT_TABLE names).",
                    epilog="Any config key can be overridden: --config.training.num_epochs=5", allow_abbrev=False)
    for title, flags in (("launch", LAUNCH_FLAGS), ("experiment flags", experiment_flags),
                         ("other modes", MODE_FLAGS)):
        group = parser.add_argument_group(title)
        for flag in flags:
            group.add_argument(flag.name, help=flag.help.format(experiments=", ".join(experiments)), **flag.options)
    return parser


def mode_functions(flags) -> dict:
    """{mode: "module:function" that carries it out}, the plain run's included."""
    return {DEFAULT_MODE: DEFAULT_MODE_RUNS, **{flag.starts: flag.runs for flag in flags if flag.starts}}


def mode_names(flags, modes) -> str:
    """How a user names `modes`: the flags that start them ("--sweep, --seeds or --search")."""
    return " or ".join(", ".join(flag.name for flag in flags if flag.starts == mode) for mode in modes)


def chosen_mode(args, flags) -> tuple:
    """(the mode this command asks for, the flag that starts it or None): one mode, and only flags it goes with."""
    starters = [flag for flag in flags if flag.starts and flag.given(args)]
    started = {flag.starts for flag in starters}
    chosen = {}
    for flag in starters:  # a starter given with a mode it goes with joins that mode (--search with --seeds)
        if not (set(flag.modes or ()) & started - {flag.starts}):
            chosen.setdefault(flag.starts, flag)
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(flag.name for flag in chosen.values())} do different things; use one of them")
    mode, starter = next(iter(chosen.items()), (DEFAULT_MODE, None))
    for flag in flags:
        if flag.modes is not None and mode not in flag.modes and flag.given(args):
            raise UserError(f"{flag.name} only applies to {mode_names(flags, flag.modes)}")
    if starter is not None and starter.takes_record:  # overrides of where-keys (data.path) are checked by the launch
        given = [flag.name for flag in flags if (flag.role == Role.IDENTITY or flag.recorded) and flag.given(args)
                 and flag.name not in starter.allows]
        if given:
            raise UserError(f"{starter.name} takes the run's recorded experiment, config and flags; drop "
                            f"{', '.join(given)}")
    return mode, starter
