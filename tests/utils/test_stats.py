"""The statistics of --compare, checked against scipy's distributions computed another way, on known tables."""
import math

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
    differences = [VARIANT[s] - BASELINE[s] for s in BASELINE]
    mean = sum(differences) / 5
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 4)
    t = mean / (sd / math.sqrt(5))
    assert result.test == "paired t" and result.n == 5
    assert result.diff == pytest.approx(mean)
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 4))
    half = scipy_stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert result.ci95 == pytest.approx((mean - half, mean + half))
    assert result.p_value < 0.05  # this variant is better on every seed


def test_groups_without_two_shared_seeds_give_welch_t_test():
    other = {10 + seed: value for seed, value in VARIANT.items()}  # other seeds: nothing to pair
    result = compare(other, BASELINE)
    a, b = list(other.values()), list(BASELINE.values())
    va, vb = scipy_stats.tvar(a), scipy_stats.tvar(b)
    se = math.sqrt(va / 5 + vb / 5)
    df = (va / 5 + vb / 5) ** 2 / ((va / 5) ** 2 / 4 + (vb / 5) ** 2 / 4)
    diff = sum(a) / 5 - sum(b) / 5
    assert result.test == "Welch t" and result.diff == pytest.approx(diff)
    assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(diff / se), df))
    half = scipy_stats.t.ppf(0.975, df) * se
    assert result.ci95 == pytest.approx((diff - half, diff + half))


def test_identical_groups_show_no_difference():
    result = compare(dict(BASELINE), BASELINE)
    assert result.diff == 0 and result.p_value == 1.0
