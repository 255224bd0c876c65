"""What a run measures and which way is better: declared by its experiment, recorded with the run, read back.

The best epoch, `--compare`, `--search`, its pruner and the notebook all read a run's Measures; none of them decides
from a metric's name. Runs recorded before runs carried their Measures keep the meaning they had then (`LEGACY`).
"""
import json
import math
from dataclasses import dataclass

from utils.errors import UserError

HIGHER, LOWER = "higher", "lower"
DIRECTIONS = (HIGHER, LOWER)
REPORTED = None  # a metric with no better side (a VAE's KL term): reported, plotted, compared, never selected by
# Results that the epoch bookkeeping (utils/epochs.py) adds: the test set's value of each metric, the validation value
# of the selected epoch, and the epoch itself.
TEST_PREFIX, BEST_VAL_PREFIX, BEST_EPOCH = "test_", "best_val_", "best_epoch"
# What a training pass adds to its metrics that measures speed (training/loop.py): the only values two identical runs
# may differ in, which --reproduce and --verify leave out by these names, never by a word a metric's name contains.
EPOCH_TIME, THROUGHPUT = "epoch_time", "throughput"
TIMINGS = (EPOCH_TIME, THROUGHPUT)


def is_timing(curve):
    """Whether a recorded curve (train/epoch_time) is one of the declared TIMINGS."""
    return curve.rsplit("/", 1)[-1] in TIMINGS


@dataclass(frozen=True)
class Measures:
    """The metrics a run's validation reports with the way each is better, and the one that selects.

    `better` maps each metric to "higher", "lower" or None (a diagnostic with no better side), in the order the
    template prints them; `select` names the metric that picks the best epoch and a search's best trial (one with a
    direction).
    """
    better: dict
    select: str

    def check(self, owner):
        """Refuse, in one line, a declaration that says nothing usable; `owner` names where it was declared."""
        if not isinstance(self.better, dict) or not self.better:
            raise UserError(f"{owner} declares no metrics: give metrics={{'NAME': 'higher' or 'lower', ...}}")
        for name, direction in self.better.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise UserError(f"{owner} declares the metric {name!r}: a metric is named by a Python identifier")
            if direction not in (*DIRECTIONS, REPORTED):
                raise UserError(f"{owner} declares metric {name!r} as {direction!r}; a metric is 'higher' or "
                                f"'lower' (which way is better), or None (reported only, no better side)")
        if self.select not in self.better:
            raise UserError(f"{owner} selects by {self.select!r}, which its metrics ({', '.join(self.better)}) do "
                            f"not list; select one of them or declare it")
        if self.better[self.select] is REPORTED:
            raise UserError(f"{owner} selects by {self.select!r}, which it declares without a direction; select a "
                            f"metric that is 'higher' or 'lower' (better)")
        return self

    def selecting(self, metric):
        """These Measures with `metric` selecting instead (what --watch=METRIC asks for)."""
        if metric not in self.better or self.better[metric] is REPORTED:
            raise UserError(f"--watch={metric} is not a metric this experiment declares with a direction; it declares "
                            f"{', '.join(self.directed)}")
        return Measures(self.better, metric)

    @property
    def directed(self):
        """The metrics with a better side: those a run may select by."""
        return [name for name, direction in self.better.items() if direction is not REPORTED]

    def ordered(self, names):
        """`names` (metrics, results such as test_loss, curves such as val/loss) in the order the metrics are
        declared, a metric's results together; those of no declared metric after them, alphabetically."""
        declared = list(self.better)

        def position(name):
            metric = self.metric_of(name)
            return (declared.index(metric) if metric is not None else len(declared), name)
        return sorted(names, key=position)

    def metric_of(self, name):
        """The declared metric a result or curve is of (test_loss, best_val_loss, val/loss: loss), else None."""
        for prefix in (TEST_PREFIX, BEST_VAL_PREFIX, "train/", "val/", "test/", "train/step_", ""):
            if name.startswith(prefix) and name[len(prefix):] in self.better:
                return name[len(prefix):]
        return None

    def higher_is_better(self, metric):
        return self.better[metric] == HIGHER

    def improves(self, value, best):
        """Whether `value` of the selected metric beats `best` (None: nothing to beat). NaN (a diverged epoch) beats
        nothing, and any number beats it: a NaN first epoch never stays the best one."""
        if best is None:
            return True
        if math.isnan(value):
            return False
        if math.isnan(best):
            return True
        return value > best if self.higher_is_better(self.select) else value < best

    def direction_of(self, result):
        """"higher", "lower" or None (no better way) for a recorded result: a metric, its test_ or best_val_ value."""
        metric = self.metric_of(result)
        return None if metric is None or result.startswith(("train/", "val/", "test/")) else self.better[metric]

    @property
    def selected_result(self):
        """The result that holds the selected metric's value at the best epoch, as a search ranks trials by."""
        return f"{BEST_VAL_PREFIX}{self.select}"

    @property
    def held_out_result(self):
        """The test set's value of the selected metric: reported, never chosen by."""
        return f"{TEST_PREFIX}{self.select}"

    def to_json(self):
        return json.dumps({"better": self.better, "select": self.select})  # in declared order: the order printed

    @classmethod
    def from_json(cls, text):
        value = json.loads(text)
        return cls(dict(value["better"]), value["select"])


# What every run recorded before runs carried their Measures meant: the template measured accuracy (higher is
# better) and loss (lower), and selected by accuracy unless --watch=loss was given.
LEGACY = Measures({"accuracy": HIGHER, "loss": LOWER}, "accuracy")


def recorded_measures(text, flags):
    """The Measures a recorded run carries (`text`, its JSON), or for an older run the ones it had: LEGACY, selecting
    by the --watch it was recorded with (`flags`)."""
    if text:
        return Measures.from_json(text)
    watch = (flags or {}).get("watch")
    return LEGACY.selecting(watch) if watch in LEGACY.better else LEGACY
