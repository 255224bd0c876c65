"""Is a difference real? Means with 95% intervals over seeds, and tests of a difference between two groups of runs.

The statistics are the textbook ones (Student's paired t, Welch's t with the Welch-Satterthwaite degrees of
freedom); their distribution comes from scipy.stats.t, nothing is hand-rolled. They are computed from the sums here
rather than through scipy.stats.ttest_rel / ttest_ind, which cost about 0.7 ms a call: a comparison of thousands of
groups stays under a second (the tests check every number against those two functions).
"""
import math
from dataclasses import dataclass
from functools import cache

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """One metric over the runs of a group: their number, mean, sample standard deviation and 95% interval."""
    n: int
    mean: float
    std: float | None  # None for a single run
    ci95: tuple | None  # (low, high) from Student's t; None for a single run


@dataclass(frozen=True)
class Difference:
    """A group's mean minus the reference's, with its 95% interval, the p-value and the test that gave them.

    A test that has nothing to go on (no variation at all, a NaN result) gives no interval and no p-value, and says
    why in `no_test`: scipy's own tests return NaN there, never 0 or 1."""
    diff: float
    ci95: tuple | None
    p_value: float | None
    test: str  # "paired t" or "Welch t"
    n: int  # seeds both groups share (paired) or runs in the smaller group (Welch)
    no_test: str | None = None  # why there is no p-value, when there is none


def summarise(values):
    """The Summary of `values` (one per run)."""
    values = [float(v) for v in values]
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(n, mean, None, None)
    std = _std(values, mean)
    half = _critical(n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, (mean - half, mean + half))


def compare(group, reference):
    """The Difference of `group` against `reference`, both {seed: value}; None when there are too few runs.

    With at least two seeds in common, a paired t-test over those seeds (the same seed gives the same initialisation
    and batch order, so pairing removes that share of the noise); otherwise Welch's t-test over all runs of each.
    """
    shared = sorted(set(group) & set(reference))
    if len(shared) >= 2:
        differences = [group[seed] - reference[seed] for seed in shared]
        n = len(differences)
        diff = math.fsum(differences) / n
        error = _std(differences, diff) / math.sqrt(n)
        return _difference(diff, error, n - 1, "paired t", n, "the paired differences do not vary")
    a, b = [float(v) for v in group.values()], [float(v) for v in reference.values()]
    if len(a) < 2 or len(b) < 2:
        return None
    mean_a, mean_b = math.fsum(a) / len(a), math.fsum(b) / len(b)
    va, vb = _std(a, mean_a) ** 2 / len(a), _std(b, mean_b) ** 2 / len(b)
    error = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if error > 0 else len(a) + len(b) - 2
    return _difference(mean_a - mean_b, error, df, "Welch t", min(len(a), len(b)), "neither group varies")


def _difference(diff, error, df, test, n, constant):
    from scipy import stats

    if math.isnan(diff) or math.isnan(error):
        return Difference(diff, None, None, test, n, "a result is NaN")
    if error == 0:  # no spread to judge the difference against: a t-test says nothing (scipy gives NaN)
        return Difference(diff, None, None, test, n, constant)
    p_value = float(2 * stats.t.sf(abs(diff / error), df))
    half = _critical(df) * error
    return Difference(diff, (diff - half, diff + half), p_value, test, n)


@cache
def _critical(df):
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))


def _std(values, mean):
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
