"""Is a difference real? Means with 95% intervals over seeds, and tests of a difference between two groups of runs.

The distributions come from scipy; nothing here is hand-rolled.
"""
import math
from dataclasses import dataclass

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
    """A group's mean minus the reference's, with its 95% interval, the p-value and the test that gave them."""
    diff: float
    ci95: tuple
    p_value: float
    test: str  # "paired t" or "Welch t"
    n: int  # seeds both groups share (paired) or runs in the smaller group (Welch)


def summarise(values):
    """The Summary of `values` (one per run)."""
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(n, mean, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, (mean - half, mean + half))


def compare(group, reference):
    """The Difference of `group` against `reference`, both {seed: value}; None when there are too few runs.

    With at least two seeds in common, a paired t-test over those seeds (the same seed gives the same initialisation
    and batch order, so pairing removes that share of the noise); otherwise Welch's t-test over all runs of each.
    """
    from scipy import stats

    shared = sorted(set(group) & set(reference))
    if len(shared) >= 2:
        differences = [group[seed] - reference[seed] for seed in shared]
        result = stats.ttest_rel([group[s] for s in shared], [reference[s] for s in shared])
        summary = summarise(differences)
        interval = result.confidence_interval(CONFIDENCE)
        return Difference(summary.mean, (float(interval.low), float(interval.high)), _p(result.pvalue), "paired t",
                          len(shared))
    a, b = list(group.values()), list(reference.values())
    if len(a) < 2 or len(b) < 2:
        return None
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    diff = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    return Difference(diff, (float(interval.low), float(interval.high)), _p(result.pvalue), "Welch t",
                      min(len(a), len(b)))


def _p(value):
    # Identical runs (zero variance) give NaN: no evidence of a difference at all.
    return 1.0 if math.isnan(value) else float(value)
