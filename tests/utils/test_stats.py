"""The statistics of --compare, checked on known tables against scipy's own t-tests (ttest_rel, ttest_ind)."""
import math
import warnings

import pytest
from scipy import stats as scipy_stats

from utils.stats import compare, summarise

BASELINE = {0: 0.9950, 1: 0.9940, 2: 0.9955, 3: 0.9948, 4: 0.9952}
VARIANT = {0: 0.9958, 1: 0.9947, 2: 0.9960, 3: 0.9949, 4: 0.9961}


def test_a_group_summary_is_the_mean_with_a_student_t_interval():
    values = list(BASELINE.values())
    summary = summarise(values)
    mean = sum(values) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    half = scipy_stats.t.ppf(0.975, 4) * std / math.sqrt(5)  # 2.776 * s / sqrt(n)
    assert summary.n == 5 and summary.mean == pytest.approx(mean) and summary.std == pytest.approx(std)
    assert summary.ci95 == pytest.approx((mean - half, mean + half))
    assert scipy_stats.t.ppf(0.975, 4) == pytest.approx(2.7764451)  # the textbook value


def test_a_group_of_one_run_has_no_interval_and_cannot_be_tested():
    summary = summarise([0.99])
    assert (summary.n, summary.mean, summary.std, summary.ci95) == (1, 0.99, None, None)
    assert compare({0: 0.99}, BASELINE) is None


def test_shared_seeds_give_a_paired_t_test():
    result = compare(VARIANT, BASELINE)
    expected = scipy_stats.ttest_rel(list(VARIANT.values()), list(BASELINE.values()))
    interval = expected.confidence_interval(0.95)
    assert result.test == "paired t" and result.n == 5
    assert result.diff == pytest.approx(sum(VARIANT.values()) / 5 - sum(BASELINE.values()) / 5)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.ci95 == pytest.approx((interval.low, interval.high))
    assert result.p_value < 0.05  # this variant is better on every seed
    # Only the shared seeds are paired.
    partial = compare({**VARIANT, 9: 0.5}, {seed: BASELINE[seed] for seed in (0, 1, 2)})
    assert partial.n == 3 and partial.p_value == pytest.approx(scipy_stats.ttest_rel(
        [VARIANT[s] for s in (0, 1, 2)], [BASELINE[s] for s in (0, 1, 2)]).pvalue)


def test_groups_without_two_shared_seeds_give_welch_t_test():
    other = {10 + seed: value for seed, value in VARIANT.items() if seed < 4}  # other seeds, other sizes: no pairs
    result = compare(other, BASELINE)
    expected = scipy_stats.ttest_ind(list(other.values()), list(BASELINE.values()), equal_var=False)
    interval = expected.confidence_interval(0.95)
    assert result.test == "Welch t" and result.n == 4
    assert result.diff == pytest.approx(sum(other.values()) / 4 - sum(BASELINE.values()) / 5)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.ci95 == pytest.approx((interval.low, interval.high))


@pytest.mark.parametrize("group, reference, reason", [
    ({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.5, 1: 0.6, 2: 0.7}, "the paired differences do not vary"),  # identical
    ({0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.6}, "the paired differences do not vary"),  # the same shift on both seeds
    ({0: 2.0, 1: 2.0}, {2: 1.0, 3: 1.0}, "neither group varies"),  # a constant metric (best_epoch), unpaired
    ({0: float("nan"), 1: 0.6}, {0: 0.5, 1: 0.6}, "a result is NaN"),
])
def test_a_test_with_nothing_to_go_on_has_no_p_value_as_in_scipy(group, reference, reason):
    result = compare(group, reference)
    assert result.p_value is None and result.ci95 is None and result.no_test == reason
    shared = sorted(set(group) & set(reference))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = (scipy_stats.ttest_rel([group[s] for s in shared], [reference[s] for s in shared]) if shared else
                    scipy_stats.ttest_ind(list(group.values()), list(reference.values()), equal_var=False))
    # scipy has no p-value there either: NaN, or an infinite t whose p of 0 only restates that nothing varies
    assert math.isnan(expected.pvalue) or (math.isinf(expected.statistic) and expected.pvalue == 0)


def test_a_single_run_on_either_side_is_too_few_to_test():
    assert compare({0: 0.5}, {1: 0.4, 2: 0.6}) is None and compare({0: 0.5, 1: 0.6}, {2: 0.4}) is None
