"""mathvlm.stats on cases small enough to know the answer by hand or by enumerating every resample."""

import itertools

import numpy as np
import pytest

from mathvlm import stats


def test_bootstrap_of_a_constant_array_is_a_point():
    assert stats.bootstrap_interval(np.ones((3, 5))) == (1.0, 1.0, 1.0)
    assert stats.bootstrap_interval(np.zeros((1, 4), bool)) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_by_hand():
    # One seed, items 1,1,1,0: a resample's mean is k/4 with k ~ Binomial(4, 3/4): P(k=0) = 1/256,
    # P(k≤1) = 13/256 ≈ 0.051, P(k≤3) = 175/256 ≈ 0.68. The 2.5% quantile is 1/4, the 97.5% one is 1.
    mean, lo, hi = stats.bootstrap_interval([[1, 1, 1, 0]], resamples=4000)
    assert (mean, lo, hi) == (0.75, 0.25, 1.0)
    # Two seeds, one item, right for seed 0 only: the seed resample gives 1, ½, ½, 0 (equally likely),
    # so means 0 and 1 each have probability ¼ and the 95% interval is the whole of [0, 1].
    assert stats.bootstrap_interval([[1], [0]], resamples=4000) == (0.5, 0.0, 1.0)


def test_bootstrap_matches_enumerating_every_two_level_resample():
    x = np.array([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0]], float)
    means = np.array([x[list(rows)][:, list(cols)].mean()
                      for rows in itertools.product(range(2), repeat=2)
                      for cols in itertools.product(range(5), repeat=5)])  # 4 · 5^5 equally likely resamples
    assert means.size == 12500 and means.mean() == pytest.approx(x.mean())  # the bootstrap is centred
    values, counts = np.unique(means, return_counts=True)
    cdf = np.cumsum(counts) / means.size
    lo_at, hi_at = np.searchsorted(cdf, 0.025), np.searchsorted(cdf, 0.975)  # first CDF step ≥ the level
    # Both quantiles sit inside a CDF step, ≥ 0.018 from its edges (Monte Carlo s.d. here ≈ 0.001).
    assert min(cdf[lo_at] - 0.025, 0.025 - (cdf[lo_at - 1] if lo_at else 0.0),
               cdf[hi_at] - 0.975, 0.975 - cdf[hi_at - 1]) > 0.018
    assert (values[lo_at], values[hi_at]) == (0.0, 0.8)
    mean, lo, hi = stats.bootstrap_interval(x, resamples=20000, rng=np.random.default_rng(1))
    assert (mean, lo, hi) == (0.4, 0.0, 0.8)


def test_identical_arrays_differ_by_nothing():
    a = np.array([[1, 0, 1, 0, 1]])
    result = stats.paired_test(a, a.copy())
    assert result["diff"] == 0.0 and result["p"] == 1.0 and not result["significant"]
    assert (result["lo"], result["hi"]) == (0.0, 0.0)  # paired: the same items are drawn for a and b
    assert result["method"] == "exact" and result["items"] == 5


def test_six_items_all_better_give_the_exact_permutation_p():
    result = stats.paired_test(np.ones((2, 6)), np.zeros((1, 6)))
    # Of the 2^6 sign patterns only all-plus and all-minus reach |Σ d| = 6.
    assert result["p"] == 2 / 2 ** 6 == 0.03125
    assert result["diff"] == 1.0 and (result["lo"], result["hi"]) == (1.0, 1.0)
    assert result["significant"] and (result["seeds_a"], result["seeds_b"]) == (2, 1)


def test_paired_test_with_seeds_by_hand():
    a = [[1, 1, 0, 1],
         [1, 0, 0, 1]]                # per-item mean over seeds: 1, ½, 0, 1
    b = [[0, 1, 0, 0]]
    result = stats.paired_test(a, b)
    # d = (1, −½, 0, 1): mean 1.5 / 4. Non-zero d: 1, −½, 1 (T = 1.5); of the 8 sign patterns
    # +++ (1.5), +−+ (2.5), −+− (−2.5), −−− (−1.5) reach |Σ| ≥ 1.5: p = 4/8.
    assert result["diff"] == 0.375 and result["p"] == 0.5 and not result["significant"]
    assert result["lo"] < 0.375 < result["hi"]


def test_a_difference_the_seeds_explain_is_not_significant():
    # Seed 0 of a got every item right, seed 1 none: per item ā_i = ½ against b̄_i = 0, so the sign-flip
    # test over the 12 items (models held fixed) gives p = 2/2^12. But a resample of a's seeds draws
    # seed 1 twice with probability ¼, giving a difference of 0: the 2.5% quantile is 0, the interval
    # does not exclude 0, and the difference is not called significant.
    a = np.array([[1] * 12, [0] * 12])
    result = stats.paired_test(a, np.zeros((1, 12)))
    assert result["p"] == 2 / 2 ** 12 and result["diff"] == 0.5
    assert result["lo"] == 0.0 and result["hi"] == 1.0
    assert not result["excludes_zero"] and not result["significant"]


def test_many_items_use_monte_carlo():
    assert stats.sign_flip_p(np.ones(17), exact_max=17) == (2 / 2 ** 17, "exact")
    # Monte Carlo (20 > 16 differences): none of 10,000 random patterns is all-plus or all-minus (chance
    # 2^-19 each), so the p-value is its floor (1 + 0) / (1 + 10,000).
    assert stats.sign_flip_p(np.ones(20)) == (1 / 10001, "monte carlo")
    assert stats.sign_flip_p(np.r_[np.ones(10), -np.ones(10)])[0] == 1.0  # 20 items: Monte Carlo  # T = 0: every pattern reaches it
    with pytest.raises(ValueError, match="same items"):
        stats.paired_test(np.ones((1, 3)), np.ones((1, 4)))


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 → 3·0.01, 2·0.03, 1·0.04 = 0.03, 0.06, 0.04 → running max 0.03, 0.06, 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(stats.holm([0.02, np.nan, 0.5]), [0.04, np.nan, 0.5])  # NaN: no test, m = 2
    np.testing.assert_allclose(stats.holm([0.6, 0.7]), [1.0, 1.0])
    assert stats.holm([]).size == 0
