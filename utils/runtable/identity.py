"""A run's identity: what makes two launches the same run, so that the second one is refused.

A run's identity is what it computed: its experiment, the flags that change results, its comment, its merged config
without the keys that only say where things are (`where_keys`: data.path, ...) and without the keys set to null
(null is not set: the code's own default applies), plus a fingerprint of the data's content. Where the files lie never
makes a run new; other data always does.
"""
import hashlib
import json
from dataclasses import dataclass, field

from utils.config import dump_config, load_config_text, with_renamed_keys, without_keys
from utils.measures import LEGACY, Measures

SEED_KEY = "seed"  # the config key that only picks the random draw: runs differing in it alone form a group
EVALUATES = "evaluates"  # the flag of an evaluation's identity: the run whose model it scores (--evaluate)


@dataclass(frozen=True)
class IdentityRules:
    """Every rule of the config keys in what makes two launches the same run; main.py declares the project's
    (IDENTITY). Which flags count is each flag's role, declared with the flag (modes/flags.py).

    where_keys: config keys that say where things are or how they are fetched, not what is computed: never part of
        a run's identity, and the only overrides --resume, --reproduce and --verify take.
    path_keys: config keys that are paths: relative to the checkout in a YAML file (launched from anywhere, `data`
        is the checkout's data/), relative to the launch folder when typed on the command line.
    implied: config keys added after runs were recorded without them, and the value those runs had: a launch with
        the key at that value records it as not set (null), so it stays the same run as the earlier ones.
    renamed: {config key: the name it had}: keys renamed after runs were recorded under their old name. A run's
        identity counts a renamed key under its old name, so a run with the same value is the same run as the earlier
        ones; a recorded run's config is handed to its experiment with the new name.
    seed_key: the config key that only picks the random draw: runs that differ in it alone form a group (fixed: the
        groups of recorded runs were hashed without it).
    """
    where_keys: tuple = ()
    path_keys: tuple = ()
    implied: dict = field(default_factory=dict)
    renamed: dict = field(default_factory=dict)
    seed_key: str = field(default=SEED_KEY, init=False)

    @property
    def old_names(self) -> tuple:
        """The (new name, old name) pairs of the renamed keys: how an identity counts them."""
        return tuple(self.renamed.items())

    @property
    def new_names(self) -> tuple:
        """The (old name, new name) pairs: how a recorded config reaches the code."""
        return tuple((old, new) for new, old in self.renamed.items())


@dataclass(frozen=True)
class RunIdentity:
    """What makes two runs the same (see the module docstring), and the config as it ran."""
    experiment: str
    config_text: str  # canonical dump of the merged config as it ran (overrides applied, where-keys included)
    flags: dict = field(default_factory=dict)  # result-changing flags that differ from their defaults
    comment: str = ""
    where_keys: tuple = ()  # dotted config keys that say where things are, not what is computed
    data: str | None = None  # fingerprint of the data's content, where the experiment declares one
    recorded_hash: str | None = None  # the hash a recorded run was registered with (older tables hashed otherwise)
    # What the run measures and which way is better: recorded with it, never part of its hash (--watch is a flag)
    measures: Measures = LEGACY
    old_names: tuple = ()  # (key, the name it had) of renamed keys, counted under their old name (IdentityRules)

    @property
    def counted_config(self):
        """The config as the identity counts it: without where-keys and nulls, renamed keys under their old names."""
        return counted(self.config_text, self.where_keys, self.old_names)

    @property
    def computed_text(self):
        """The canonical text of what this run computes: the config that counts, and the data's fingerprint."""
        text = dump_config(self.counted_config)
        return text + (f"# data: {self.data}\n" if self.data else "")

    @property
    def config_hash(self):
        return self.recorded_hash or hashlib.sha256(self.computed_text.encode()).hexdigest()

    @property
    def group_hash(self):
        """What this run shares with its seed siblings: its identity without the seed and without the data."""
        return group_hash(self.experiment, self.config_text, self.cli, self.comment, self.where_keys, self.old_names)

    @property
    def cli(self):
        return " ".join(f"{name}={value}" for name, value in sorted(self.flags.items()))

    def key(self):
        """The values of deepboard's unique columns (experiment, config_hash, cli, comment) for this identity."""
        return self.experiment, self.config_hash, self.cli, self.comment

    @property
    def owner(self):
        """What a run's checkpoints record as whose they are: the hash of its unique columns (no other run has it)."""
        return hashlib.sha256(json.dumps(self.key()).encode()).hexdigest()


def counted(config_text, where_keys=(), old_names=()):
    """The config of `config_text` as identities count it: without the `where_keys` and the keys set to null, the
    renamed keys of `old_names` ((key, old name) pairs) under their old names."""
    return with_renamed_keys(without_keys(load_config_text(config_text), set(where_keys)), old_names)


def group_hash(experiment, config_text, cli, comment, where_keys, old_names=()):
    """The hash that runs differing only in their seed (or in where their files lie) share."""
    config = without_keys(counted(config_text, where_keys, old_names), {SEED_KEY})
    text = json.dumps([experiment, dump_config(config), cli, comment])
    return hashlib.sha256(text.encode()).hexdigest()
