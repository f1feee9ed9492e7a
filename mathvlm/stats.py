"""Statistics for sweeps with several seeds (numpy only, pure functions; :mod:`mathvlm.tools.sweep` uses them).

The data of one grid point is a 0/1 matrix ``correct[seeds, items]``: row ``s`` is the run with model and
data seed ``s``, column ``i`` one held-out item (the same items, in the same order, for every run).
Two sources of variation are in it: which items were asked (the held-out set is a sample of problems)
and which seed trained the model. The bootstraps below resample both.

* :func:`bootstrap_interval` — mean accuracy and its two-level percentile bootstrap interval.
* :func:`paired_test` — one point against a baseline on the same items: mean difference, its bootstrap
  interval and a paired sign-flip permutation p-value.
* :func:`holm` — Holm's step-down adjustment of several p-values (one per point compared with the
  baseline).

Every random draw comes from ``rng`` (default ``np.random.default_rng(0)``), so results are reproducible.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95          # interval coverage
ALPHA = 0.05          # significance threshold of the p-values
RESAMPLES = 2000      # bootstrap resamples
PERMUTATIONS = 10000  # Monte Carlo sign patterns when the exact test is too large
EXACT_MAX = 16        # exact sign-flip test up to this many non-zero item differences (2^16 patterns)


def _matrix(correct, name: str) -> np.ndarray:
    x = np.asarray(correct, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name}: expected a [seeds, items] array with at least one of each, got shape "
                         f"{np.shape(correct)}")
    return x


def _counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """``[resamples, n]`` counts of how often each of ``n`` units is drawn in a resample of size ``n``
    with replacement (multinomial with equal probabilities: the same law as drawing indices)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _resampled_means(x: np.ndarray, items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean of ``x`` for every resample: item counts ``items[b]`` (shared by the caller across arrays, so
    paired) and seed counts drawn here. The mean of the resampled matrix ``x[rows][:, cols]`` is
    ``Σ_s Σ_i w_s u_i x_si / (S·I)`` with ``w`` the seed counts and ``u`` the item counts."""
    seeds, n_items = x.shape
    rows = _counts(rng, seeds, items.shape[0])
    return np.einsum("bs,si,bi->b", rows, x, items) / (seeds * n_items)


def bootstrap_interval(correct, level: float = LEVEL, resamples: int = RESAMPLES,
                       rng: np.random.Generator | None = None) -> tuple[float, float, float]:
    """Mean accuracy of ``correct[seeds, items]`` and its two-level percentile bootstrap interval.

    ``mean = (1/(S·I)) Σ_s Σ_i correct[s, i]``. Each of ``resamples`` resamples draws ``I`` items
    (columns) with replacement and, independently, ``S`` seeds (rows) with replacement, and takes the
    mean of the resampled ``S × I`` matrix; ``(lo, hi)`` are the ``(1 − level)/2`` and
    ``(1 + level)/2`` quantiles of those means (numpy's linear interpolation). With one seed only the
    items vary. Returns ``(mean, lo, hi)``.
    """
    x = _matrix(correct, "bootstrap_interval")
    rng = np.random.default_rng(0) if rng is None else rng
    items = _counts(rng, x.shape[1], resamples)
    lo, hi = _percentiles(_resampled_means(x, items, rng), level)
    return float(x.mean()), lo, hi


def sign_flip_p(d, *, exact_max: int = EXACT_MAX, permutations: int = PERMUTATIONS,
                rng: np.random.Generator | None = None) -> tuple[float, str]:
    """Two-sided paired sign-flip permutation p-value of the per-item differences ``d`` (null: each
    ``d_i`` is as likely to be ``+d_i`` as ``−d_i``).

    Statistic ``T = |Σ_i d_i|``. Items with ``d_i = 0`` do not change ``T`` under any flip and are
    dropped. With ``m ≤ exact_max`` non-zero differences the test is exact: ``p = #{s ∈ {±1}^m :
    |Σ s_i d_i| ≥ T} / 2^m`` (all ``d_i = 0`` gives ``p = 1``; ``m`` differences of the same sign and
    size give ``p = 2 / 2^m``). Otherwise Monte Carlo with ``permutations`` random sign vectors ``s``
    from ``rng``: ``p = (1 + #{|Σ s_i d_i| ≥ T}) / (1 + permutations)`` (never 0). Returns ``(p, method)``
    with ``method`` ``"exact"`` or ``"monte carlo"``. A 1e-9 tolerance keeps ties with ``T`` counted.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    d = d[d != 0]
    observed = abs(d.sum()) - 1e-9
    if d.size <= exact_max:
        signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
        return float(np.mean(np.abs(signs @ d) >= observed)), "exact"
    rng = np.random.default_rng(0) if rng is None else rng
    hits, left = 0, permutations
    while left:
        chunk = min(left, max(1, 2 ** 22 // d.size))
        signs = rng.choice(np.array([-1.0, 1.0]), size=(chunk, d.size))
        hits += int(np.sum(np.abs(signs @ d) >= observed))
        left -= chunk
    return (1 + hits) / (1 + permutations), "monte carlo"


def paired_test(a, b, *, level: float = LEVEL, resamples: int = RESAMPLES, exact_max: int = EXACT_MAX,
                permutations: int = PERMUTATIONS, rng: np.random.Generator | None = None) -> dict:
    """A point ``a[seeds_a, items]`` against the baseline ``b[seeds_b, items]`` on the same items
    (column ``i`` of both is the same item).

    Per-item accuracy averaged over seeds, ``ā_i = mean_s a[s, i]`` and ``b̄_i``; differences
    ``d_i = ā_i − b̄_i``; ``diff = mean_i d_i`` (= mean accuracy of ``a`` − mean accuracy of ``b``).
    Interval: percentile bootstrap of ``diff`` where each resample draws the items with replacement
    (the same draw for ``a`` and ``b``: paired) and the seeds of ``a`` and of ``b`` with replacement,
    independently. p-value: :func:`sign_flip_p` of ``d`` (exact up to ``exact_max`` non-zero ``d_i``,
    else Monte Carlo). The p-value holds the trained models fixed (only which items were asked varies),
    so with few seeds it can be tiny for a difference that another draw of seeds would undo; the interval
    also resamples the seeds. ``significant``: ``p < ALPHA`` (0.05) *and* the interval excludes 0 — a
    difference the items support but the spread between seeds explains is not called significant.

    Returns ``{"diff", "lo", "hi", "p", "method", "excludes_zero", "significant", "items", "seeds_a",
    "seeds_b"}``.
    """
    x, y = _matrix(a, "paired_test a"), _matrix(b, "paired_test b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"paired_test: a has {x.shape[1]} items, b {y.shape[1]}; they must be the same items")
    rng = np.random.default_rng(0) if rng is None else rng
    d = x.mean(axis=0) - y.mean(axis=0)
    items = _counts(rng, x.shape[1], resamples)
    lo, hi = _percentiles(_resampled_means(x, items, rng) - _resampled_means(y, items, rng), level)
    p, method = sign_flip_p(d, exact_max=exact_max, permutations=permutations, rng=rng)
    excludes_zero = bool(lo > 0 or hi < 0)
    return {"diff": float(d.mean()), "lo": lo, "hi": hi, "p": p, "method": method,
            "excludes_zero": excludes_zero, "significant": significant(p, lo, hi),
            "items": int(x.shape[1]), "seeds_a": int(x.shape[0]),
            "seeds_b": int(y.shape[0])}


def significant(p: float, lo: float, hi: float) -> bool:
    """The decision rule: ``p < ALPHA`` and the difference's interval ``[lo, hi]`` excludes 0."""
    return bool(p < ALPHA and (lo > 0 or hi < 0))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control over ``m`` tests).

    Sort the ``m`` p-values ascending, ``p_(1) ≤ … ≤ p_(m)``; ``adj_(j) = max_{k ≤ j} min(1,
    (m − k + 1) · p_(k))``; returned in the input order. NaN entries (no test) stay NaN and do not
    count in ``m``. Reject the ``j``-th hypothesis at level α when ``adj_j < α``.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled) if m else scaled
    return out
