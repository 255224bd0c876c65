"""What one command asks for: its flags and overrides, read and checked, and the identity of the run it would make.

Nothing here imports torch or deepboard, so that a launch refused for a mistake or a duplicate answers at once.
"""
import argparse
import difflib
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from utils.config import (OVERRIDE_PREFIX, apply_overrides, dump_config, flatten, flatten_values, load_config,
                          load_config_text, override_text, parse_override, require, unset_implied, with_changed_keys,
                          with_renamed_keys, without_keys)
from experiments import Experiment, check_registry
from modes.flags import Role, chosen_mode
from utils.errors import MissingKey, UserError
from utils.runtable.identity import SEED_KEY, IdentityRules, RunIdentity
from utils.runtable.readers import table_files
from utils.runtable.registry import RunTable
from utils.stopping import stops_held

TABLE_ENV = "RESULT_TABLE"  # the one way to record somewhere else than the checkout's results/resultTable.db
# Flags the template itself uses while running an experiment: they need not be parameters of its function.
WATCH_FLAG = "watch"  # the metric that selects the best epoch and trial; by default the experiment's own


@dataclass(frozen=True)
class RunDescription:
    """What one run computes: the experiment, its merged config, its experiment flags, its comment and its seed.

    `flags` may hold any experiment flag declared in main.py: those marked output-only (verbose) change what is
    printed, the others are part of the identity when they differ from their default. `seed`, when given, replaces
    the config's seed (what --seeds does).
    """
    experiment: str
    config: dict
    flags: dict = field(default_factory=dict)
    comment: str = ""
    seed: int | None = None

    def run_config(self):
        """The config the run records and gets: `config` with `seed` in it."""
        return self.config if self.seed is None else {**self.config, SEED_KEY: self.seed}


@contextmanager
def naming_its_config(name, experiment):
    """Within it, a key the config lacks is refused naming the config that has it: the experiment's own baseline."""
    try:
        yield
    except MissingKey as missing:
        raise UserError(f"{missing}; add it ({experiment.config}, {name}'s baseline, has every key it reads)"
                        ) from None


@dataclass
class Project:
    """What main.py declares: the registry, the experiment flags, the rules of a run's identity."""
    experiments: dict  # the registry: name -> Experiment
    flags: tuple  # the experiment flags (Flag), handed to the experiment functions that declare them
    rules: IdentityRules  # what makes two launches the same run: where-keys, path keys, implied keys
    code_dir: Path
    table_path: Path | None = None  # the run table; by default the checkout's results/resultTable.db

    @cached_property
    def flag_defaults(self) -> dict:
        """{experiment flag: its default}."""
        return {flag.dest: flag.default for flag in self.flags}

    @cached_property
    def output_only(self) -> tuple:
        """The experiment flags that change only what is printed: never part of a run's identity."""
        return tuple(flag.dest for flag in self.flags if flag.role == Role.OUTPUT)

    @cached_property
    def template_flags(self) -> tuple:
        """The experiment flags the template reads itself: an experiment need not declare them."""
        return tuple(flag.dest for flag in self.flags if flag.read_by_template)

    @cached_property
    def table(self):
        elsewhere = self.table_path != own_table(self.code_dir)
        note = f"recording in {self.table_path} ({TABLE_ENV}), not in this checkout's results/" if elsewhere else None
        return RunTable(self.table_path, note=note)

    def runnable(self, config):
        """`config` (merged, or read back from a recorded run) as the code gets it: without the keys set to null,
        renamed keys under their current names, and its relative paths (path_keys) joined to the checkout, so that a
        run finds the same files wherever it is launched from."""
        config = with_renamed_keys(without_keys(config, set()), self.rules.new_names)
        return located(config, self.rules.path_keys, self.code_dir)

    def __post_init__(self):
        self.table_path = Path(self.table_path or own_table(self.code_dir))
        check_registry(self.experiments)  # a wrong declaration is refused at start-up, in one line

    def find_experiment(self, name) -> Experiment:
        """The registered Experiment called `name`, or a UserError naming the close ones."""
        if name in self.experiments:
            return self.experiments[name]
        close = difflib.get_close_matches(name, self.experiments, n=1, cutoff=0.3)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown experiment {name!r}{hint}; registered: {', '.join(self.experiments)}")

    def flag_default(self, experiment, name):
        """The default of experiment flag `name` for `experiment`: main.py's, but --watch's is the experiment's own
        selected metric (a flag's default never replaces what the experiment declares)."""
        if name == WATCH_FLAG:
            return self.find_experiment(experiment).measures.select
        return self.flag_defaults[name]

    def result_flags(self, experiment, flags):
        """{flag: value} of `flags` that change results and differ from their default for `experiment`.

        Only flags away from their default count, so adding a flag with a default keeps every earlier identity.
        """
        unknown = sorted(set(flags) - set(self.flag_defaults))
        if unknown:
            raise UserError(f"{unknown[0]!r} is not an experiment flag; main.py declares "
                            f"{', '.join(self.flag_defaults)}")
        return {name: value for name, value in flags.items()
                if name not in self.output_only and value is not None
                and value != self.flag_default(experiment, name)}

    def measures(self, experiment, flags):
        """The Measures a run of `experiment` with `flags` records: the declared ones, selecting by --watch's metric
        when it names one."""
        declared = self.find_experiment(experiment).measures
        watch = flags.get(WATCH_FLAG)
        return declared if watch is None else declared.selecting(watch)

    def identity(self, description, world_size=1, with_data=True):
        """The RunIdentity of a fresh run of `description`; without its data's fingerprint unless `with_data` (what
        a command that only reads the table needs: it never reads the data)."""
        config = unset_implied(description.run_config(), self.rules.implied)
        flags = self.result_flags(description.experiment, description.flags)
        measures = self.measures(description.experiment, description.flags)
        if world_size > 1:  # BatchNorm sees each rank's shard: the numbers differ from a single process
            flags["world_size"] = world_size
        data = self.data_fingerprint(description.experiment, config) if with_data else None
        return RunIdentity(description.experiment, dump_config(config), flags, description.comment,
                           self.rules.where_keys, data, measures=measures, old_names=self.rules.old_names)

    def data_fingerprint(self, experiment, config):
        """The fingerprint of the data `config` points at, as the experiment declares it (None for one that
        declares it reads no data)."""
        declared = self.find_experiment(experiment)
        if declared.data_fingerprint is None:
            return None
        with naming_its_config(experiment, declared):
            cache = table_files(self.table_path) / "data_fingerprints.json"
            return declared.data_fingerprint(self.runnable(config), cache)

    def experiment_flags(self, recorded_flags, output):
        """Every experiment flag's value for a run with `recorded_flags`; output-only ones from `output`."""
        values = {**self.flag_defaults, **{k: v for k, v in recorded_flags.items() if k in self.flag_defaults}}
        values.update({name: output[name] for name in self.output_only if name in output})
        return values

    def experiment_kwargs(self, experiment, flags):
        """The keyword arguments `experiment` (an Experiment) gets: the flags it declares it takes.

        A flag away from its default that neither the experiment nor the template uses is refused: it would change
        the run's identity without changing what it computes.
        """
        name = experiment.__name__
        for flag, value in flags.items():
            if flag not in experiment.flags and flag not in self.template_flags and value is not None \
                    and value != self.flag_default(name, flag):
                raise UserError(f"experiment {name} does not take --{flag.replace('_', '-')}; add {flag!r} to the "
                                f"flags of its @declare(...) and a parameter {flag}={self.flag_defaults[flag]!r} "
                                f"to its function")
        return {flag: flags[flag] for flag in experiment.flags if flag in flags}

    def check_takes_flags(self, description):
        """Refuse, before anything is registered, a flag the chosen experiment cannot use."""
        self.experiment_kwargs(self.find_experiment(description.experiment),
                               self.experiment_flags(self.result_flags(description.experiment, description.flags), {}))

    def check_config(self, identity):
        """The experiment's declared check_config(config, world_size): mistakes found before registering.

        It runs after the duplicate check (a duplicate is refused without importing torch) and before the run is
        registered, so a value the experiment's pieces would refuse leaves no failed row behind.
        """
        config = self.runnable(load_config_text(identity.config_text))
        # What the template itself reads for every experiment: the seed (NumPy takes 0 to 2**32 - 1), the threads.
        require(config, SEED_KEY, int, low=0, high=2**32 - 1, optional=True)
        require(config, "training.threads", int, low=0, optional=True)
        require(config, "training.deterministic", bool, optional=True)
        experiment = self.find_experiment(identity.experiment)
        with naming_its_config(identity.experiment, experiment), stops_held():  # torch's import: a Ctrl-C inside
            experiment.check_config(config, world_size=identity.flags.get("world_size", 1))  # it can abort it

    def warn_of_new_keys(self, experiment, config_path):
        """Say once (until a run has them) that the YAML at `config_path` sets keys no recorded run of `experiment`
        has."""
        config = without_keys(unset_implied(load_config(config_path), self.rules.implied), set(self.rules.where_keys))
        keys = flatten_values(with_renamed_keys(config, self.rules.old_names))
        new = self.table.keys_new_to(experiment, keys)
        if new:
            print(f"warning: {config_path} sets {', '.join(new)}, which no recorded run of {experiment} "
                  f"has: those runs no longer match it as duplicates (a new key set to null keeps their identity)",
                  file=sys.stderr)

    def command(self, description, config_path):
        """The command line that starts `description` from the YAML at `config_path`, as a user could paste it."""
        from utils.provenance import command_line

        base = flatten_values(unset_implied(load_config(config_path), self.rules.implied))
        wanted = flatten_values(unset_implied(description.run_config(), self.rules.implied))
        overrides = [f"{OVERRIDE_PREFIX}{key}={override_text(value)}" for key, value in wanted.items()
                     if key not in base or base[key] != value]
        flags = [f"--{name.replace('_', '-')}={value}"
                 for name, value in self.result_flags(description.experiment, description.flags).items()]
        comment = [f"--comment={description.comment}"] if description.comment else []
        return command_line(["main.py", f"--experiment={description.experiment}", f"--config={config_path}", *flags,
                             *comment, *overrides])


@dataclass
class Launch:
    """One command line, read: its flags and overrides, and the project main.py declares."""
    args: argparse.Namespace
    overrides: list  # [(dotted key, value text)]
    argv: list
    project: Project

    def config(self, overrides=None):
        """The merged config of this command (with `overrides` instead of the command's own), as a run records it."""
        config = self.overridden(load_config(self.args.config), self.overrides if overrides is None else overrides)
        return unset_implied(config, self.project.rules.implied)

    def overridden(self, config, overrides):
        """`config` with `overrides` applied; a relative path (path_keys) typed on the command line is relative to
        where the command runs, so it is made absolute, unless the command runs in the checkout (where both agree,
        and the path is recorded as typed)."""
        renamed, known = dict(self.project.rules.new_names), flatten(config)
        for key, _ in overrides:
            if key not in known and renamed.get(key) in known:  # the key of a config written before the rename
                raise UserError(f"'{key}' is now '{renamed[key]}'; write --config.{renamed[key]}=VALUE")
        config = apply_overrides(config, overrides)
        typed = {key for key, _ in overrides} & set(self.project.rules.path_keys)
        if not typed or Path.cwd() == self.project.code_dir.resolve():
            return config
        return located(config, typed, Path.cwd())

    def description(self, overrides=None, seed=None):
        """The RunDescription of this command (with `overrides` instead of the command's own, and `seed`)."""
        return RunDescription(self.args.experiment, self.config(overrides), self.flags(), self.args.comment, seed)

    def flags(self):
        """{flag: value} of every experiment flag of this command."""
        return {name: getattr(self.args, name) for name in self.project.flag_defaults}

    def identity(self, overrides=None, world_size=1):
        """The RunIdentity of a fresh launch of this command (with `overrides` instead of the command's own)."""
        return self.project.identity(self.description(overrides), world_size)

    def result_flags(self):
        """{flag: value} of this command's experiment flags that are part of a run's identity."""
        return self.project.result_flags(self.args.experiment, self.flags())

    def measures(self):
        """The Measures a run of this command records (the experiment's, selecting by --watch's metric)."""
        return self.project.measures(self.args.experiment, self.flags())

    def relocated(self, identity):
        """A recorded run's identity with this command's where-key overrides (--config.data.path=DIR) applied.

        Only where-keys may change: anything else would be another run. The data's fingerprint is taken anew.
        """
        self.check_only_where_keys_overridden()
        if not self.overrides:
            return identity
        config = self.overridden(load_config_text(identity.config_text), self.overrides)
        return replace(identity, config_text=dump_config(config),
                       data=self.project.data_fingerprint(identity.experiment, config))

    def check_only_where_keys_overridden(self):
        others = [key for key, _ in self.overrides if key not in self.project.rules.where_keys]
        if others:
            raise UserError(f"{self.mode_flag()} takes the run's recorded config; of the overrides only where-keys "
                            f"({', '.join(self.project.rules.where_keys)}) may change, drop --config.{others[0]}")

    def mode_flag(self):
        return next((f"--{mode}" for mode in ("resume", "reproduce", "verify") if getattr(self.args, mode, None)
                     is not None), "this command")

    def output_flags(self):
        """{flag: value} of this command's output-only experiment flags (--verbose)."""
        return {name: value for name, value in self.flags().items() if name in self.project.output_only}

    def warn_of_new_keys(self):
        self.project.warn_of_new_keys(self.args.experiment, self.args.config)


def choose_mode(args, flags):
    """The name of the mode this command asks for (given the declared `flags`), after refusing combinations that
    make no sense."""
    mode, _ = chosen_mode(args, flags)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps=N replays N >= 1 steps, got {args.steps}")
    if mode == "print_config" and args.config is None:
        raise UserError("--print-config needs --config=FILE (and any --config.* overrides)")
    elif mode in ("run", "sweep", "search"):
        missing = [f"--{name}" for name in ("experiment", "config") if getattr(args, name) is None]
        if missing:
            raise UserError(f"{' and '.join(missing)} required, e.g. "
                            f"python main.py --experiment=experiment1 --config=configs/config.yml")
    if mode == "search" and args.debug:
        raise UserError("--search records every trial as a run of its own; drop --debug")
    if mode == "sweep" and args.debug:
        raise UserError(f"{'--sweep' if args.sweep else '--seeds'} records every run as a run of its own; "
                        f"drop --debug")
    return mode


def utf8_arguments(argv):
    """The command line's arguments read as UTF-8 text whatever the locale (which decoded them, and in an ASCII one
    left bytes it could not read as lone surrogates): the same command is the same run everywhere."""
    decoded = []
    for number, arg in enumerate(argv, start=1):
        try:
            decoded.append(os.fsencode(arg).decode("utf-8"))
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise UserError(f"argument {number} ({arg[:40]!r}...) holds bytes that are not UTF-8 text; the run table "
                            f"and the config store text only, retype it") from None
    return decoded


def read_command_line(parser, argv):
    """(flags, [(dotted key, value text)]) of the command line; unknown flags are refused, never ignored."""
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        if arg.startswith(OVERRIDE_PREFIX):
            overrides.append(parse_override(arg))
        elif arg.startswith("-"):
            raise UserError(f"unknown flag {arg.split('=', 1)[0]} ({flag_hint(parser, args, arg)})")
        else:
            raise UserError(f"unexpected argument {arg!r}; overrides take the form --config.SECTION.KEY=VALUE")
    return args, overrides


def own_table(code_dir):
    """The checkout's own run table."""
    return Path(code_dir) / "results" / "resultTable.db"


def chosen_table(code_dir, environ, launched_from=None):
    """The run table: the checkout's own, wherever the command is launched from, unless RESULT_TABLE names another
    (`~` is the home folder; a relative one is relative to `launched_from`, by default the current folder)."""
    named = environ.get(TABLE_ENV)
    if not named:
        return own_table(code_dir)
    path = Path(launched_from or Path.cwd()) / Path(named).expanduser()
    if path.is_dir() or named.endswith(os.sep):
        raise UserError(f"{TABLE_ENV}={named} names a folder; name the table file in it, e.g. "
                        f"{TABLE_ENV}={path / 'resultTable.db'}")
    return path


def located(config, keys, folder):
    """A copy of `config` with each relative path among the dotted `keys` joined to `folder` (~ counts as absolute)."""
    def joined(key, value):
        relative = isinstance(value, str) and value and not (Path(value).is_absolute() or value.startswith("~"))
        return str(Path(folder) / value) if relative else value
    return with_changed_keys(config, keys, joined)


def locate_config(path, code_dir):
    """--config as given, or the checkout's file of that relative path when there is none from the launch folder (a
    job script that starts main.py from elsewhere); a UserError naming a file that exists from here otherwise."""
    if path is None or Path(path).is_absolute() or Path(path).exists():
        return path
    if (code_dir / path).exists():
        return str(code_dir / path)
    example = os.path.relpath(code_dir / "configs" / "config.yml")
    raise UserError(f"config file {path} not found here nor in the checkout {code_dir}; pass an existing YAML file, "
                    f"e.g. --config={example}")


def flag_hint(parser, args, arg):
    """What an unknown flag `arg` most likely meant: the override of a config key of that name (--epochs=3 ->
    --config.training.num_epochs=3), else the closest flag."""
    name, _, value = arg.lstrip("-").partition("=")
    keys = []
    if args.config is not None:
        try:
            keys = [key for key, leaf in flatten(load_config(args.config)).items() if not isinstance(leaf, dict)]
        except UserError:  # the config itself is wrong: said once the flag is fixed
            pass
    leaves = {key.rsplit(".", 1)[-1]: key for key in keys}
    wanted = name.replace("-", "_")
    named = [key for leaf, key in leaves.items() if wanted and (wanted == leaf or wanted in leaf.split("_"))]
    known = ["--help", *(flag.name for flag in parser.flags)]
    flags = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1)
    similar = [leaves[leaf] for leaf in difflib.get_close_matches(wanted, leaves, n=1, cutoff=0.75)]
    if named or (similar and not flags):
        return f"did you mean {OVERRIDE_PREFIX}{(named or similar)[0]}={value or 'VALUE'}?"
    return f"did you mean {flags[0]}?" if flags else "see python main.py --help"


def torchrun_world_size():
    """How many processes torchrun started for this run (1 without torchrun), read without importing torch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def command_of(argv):
    """The command line as the user could paste it again."""
    from utils.provenance import command_line
    return command_line([sys.argv[0], *argv])
