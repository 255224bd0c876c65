"""What an experiment is: its function, and what it declares beside it for the template to read.

    @declare(metrics={"accuracy": "higher", "loss": "lower"}, select="accuracy",
             check_config=check_config, data_fingerprint=data_fingerprint, flags=("verbose",))
    def experiment1(config, run, device, world, verbose=1):
        ...

`declare` turns the function into an Experiment that is still called like it and keeps its name; main.py registers
it as `"experiment1": experiment1`. Nothing about it is found by attribute name or by its signature: what it
measures, its check, what identifies its data and the flags it takes are what it declares here, and so is how a
recorded run of it becomes a model again (`model`, `describe_data`, `evaluate`, `sample`: load_run, --evaluate,
--sample and --export use them).
"""
import functools
from dataclasses import dataclass
from collections.abc import Callable

from utils.errors import UserError
from utils.measures import Measures


@dataclass(eq=False)
class Experiment:
    """A registered experiment: `function(config, run, device, world, **flags)` and its declaration.

    measures: the metrics its validation reports, which way each is better, and the one that selects the best epoch
        (and a search's best trial) unless --watch names another.
    check_config(config, world_size): raises a UserError for a value its pieces would refuse, before the run is
        registered.
    data_fingerprint(config, cache_path): the sha256 of the data's content, part of the run's identity; None only
        for an experiment that reads no data (`reads_no_data=True` says so).
    flags: the experiment flags of main.py its function takes as keyword arguments.
    config: its baseline YAML file, relative to the checkout (the reference group of --compare, the config that
        --new-experiment --from=NAME names).
    model(config, data, device): its model, untrained, for the data that `data` describes (what describe_data gives):
        how load_run builds a recorded run's model before its weights are loaded. None: its runs cannot be loaded.
    describe_data(config): what its model needs to know of the data (DataInfo, TextInfo): recorded with each run, so
        that a run's model can be built again without the data (an export).
    evaluate(config, model, data, device): its test metrics of `model`, a run's, on the test split of the data that
        `config` names, read as `data` (the run's description: its normalisation, its vocabulary) says; --evaluate.
    sample(model, data, prompt, length, temperature, seed): text its model writes after `prompt`; --sample. Only a
        language model declares one.
    """
    function: Callable
    measures: Measures
    check_config: Callable[[dict, int], None]
    data_fingerprint: Callable[[dict, object], str] | None
    flags: tuple = ()
    reads_no_data: bool = False
    config: str = "configs/config.yml"
    model: Callable | None = None
    describe_data: Callable[[dict], object] | None = None
    evaluate: Callable | None = None
    sample: Callable | None = None

    def __post_init__(self):
        functools.update_wrapper(self, self.function)

    def __call__(self, config, run, device, world, **flags):
        return self.function(config, run, device, world, **flags)

    def check(self, name):
        """Refuse, in one line, a declaration the template could not follow (main.py calls it at start-up)."""
        self.measures.check(f"experiment {name}")
        hooks = {"check_config": self.check_config, "data_fingerprint": self.data_fingerprint, "model": self.model,
                 "describe_data": self.describe_data, "evaluate": self.evaluate, "sample": self.sample}
        for hook, value in hooks.items():
            if value is not None and not callable(value):
                raise UserError(f"experiment {name} declares {hook}={value!r}, which is not a function")
        if self.model is not None and self.describe_data is None:
            raise UserError(f"experiment {name} declares a model but not describe_data, what its model is built for; "
                            f"declare both (see experiments/experiment1.py)")
        if not callable(self.check_config):
            raise UserError(f"experiment {name} declares no check_config; give a function that refuses what its "
                            f"pieces would refuse")
        if self.data_fingerprint is None and not self.reads_no_data:
            raise UserError(f"experiment {name} declares no data_fingerprint (what identifies its data), so runs on "
                            f"other data would be the same run; declare one, or reads_no_data=True if it reads none")


def declare(*, metrics: dict, select: str, check_config: Callable, data_fingerprint: Callable | None,
            flags: tuple = (), reads_no_data: bool = False, config: str = "configs/config.yml",
            model: Callable | None = None, describe_data: Callable | None = None, evaluate: Callable | None = None,
            sample: Callable | None = None):
    """The decorator that makes a function an Experiment (see Experiment for what each argument means).

    metrics, select, check_config and data_fingerprint are required: an experiment that forgets what identifies its
    data would make runs on different data the same run. An experiment that truly reads no data passes
    data_fingerprint=None together with reads_no_data=True. model and describe_data (together), evaluate and sample
    are what a recorded run needs to be used again; without them its runs are records only.
    """
    def wrap(function):
        return Experiment(function, Measures(metrics, select), check_config, data_fingerprint, tuple(flags),
                          reads_no_data, config, model, describe_data, evaluate, sample)
    return wrap


def check_registry(experiments: dict):
    """Refuse, in one line, a registry entry that is not a declared experiment (a plain function, a partial)."""
    for name, value in experiments.items():
        if not isinstance(value, Experiment):
            raise UserError(f"experiment {name!r} in main.py is {type(value).__name__} {value!r:.60}, not a declared "
                            f"experiment; decorate its function with @declare(...) from experiments (see "
                            f"experiments/experiment1.py)")
        value.check(name)
