"""The statistics of an ablation, from scipy.stats: per-variant means with Student-t intervals, paired comparisons
with a baseline over seeds (t interval, paired t-test, Holm correction, wins, smallest detectable difference),
Welch's unpaired comparison where the seeds differ, and the expected best of n tuning trials.

Pairing by seed (same initialisation, data order and augmentation) removes the seed-to-seed variance two variants
share, so the paired interval is usually much narrower than two independent ones. With n <= 5 seeds only the
t-test can reach significance: the exact Wilcoxon signed-rank test cannot go below p = 2 / 2^n (0.0625 at n = 5,
:func:`wilcoxon_floor`), and a bootstrap of 5 values has too few distinct resamples to give a trustworthy interval.
"""
import math

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
ALPHA = 0.05          # significance level of the tests (two-sided), after Holm's correction within a table
POWER = 0.8           # power at which the smallest detectable difference is quoted


def summarize(values, confidence: float = CONFIDENCE) -> dict:
    """Mean, sample standard deviation (ddof=1) and the Student-t confidence interval of the mean of ``values``.

    Returns ``{"n", "mean", "std", "ci_low", "ci_high"}``: ``mean ± t_{(1+confidence)/2, n-1} * std / sqrt(n)``
    (``scipy.stats.t.interval``). ``std`` and the interval are None below 2 values, ``mean`` is None for none.
    """
    x = np.asarray(list(values), dtype=np.float64)
    out = {"n": int(x.size), "mean": float(x.mean()) if x.size else None, "std": None, "ci_low": None,
           "ci_high": None}
    if x.size >= 2:
        std = float(x.std(ddof=1))
        low, high = stats.t.interval(confidence, x.size - 1, loc=out["mean"], scale=std / math.sqrt(x.size)) \
            if std > 0 else (out["mean"], out["mean"])
        out.update(std=std, ci_low=float(low), ci_high=float(high))
    return out


def paired_difference(values: dict, baseline: dict, confidence: float = CONFIDENCE) -> dict:
    """The per-seed differences ``values[s] - baseline[s]`` over the seeds both hold, summarised.

    ``values`` / ``baseline``: {seed: metric}. Returns :func:`summarize` of the differences plus ``seeds`` (the
    paired seeds), ``wins`` (seeds where the variant is higher), ``p_value`` (two-sided paired t-test,
    ``scipy.stats.ttest_rel``; None below 2 seeds or without spread) and ``min_detectable`` (see
    :func:`min_detectable_difference`).
    """
    seeds = sorted(set(values) & set(baseline))
    ours, theirs = np.array([values[s] for s in seeds], float), np.array([baseline[s] for s in seeds], float)
    out = {**summarize(ours - theirs, confidence), "seeds": seeds, "wins": int((ours > theirs).sum()),
           "p_value": None, "min_detectable": None}
    if len(seeds) >= 2 and out["std"] > 0:
        out["p_value"] = float(stats.ttest_rel(ours, theirs).pvalue)
        out["min_detectable"] = min_detectable_difference(out["std"], len(seeds))
    return out


def independent_difference(values, baseline, confidence: float = CONFIDENCE) -> dict:
    """``mean(values) - mean(baseline)`` of two independent samples (no pairing: different seeds), with Welch's
    t interval and two-sided test (``scipy.stats.ttest_ind(equal_var=False)``: unequal variances, the
    Welch-Satterthwaite degrees of freedom).

    Returns ``{"n": (len(values), len(baseline)), "mean", "ci_low", "ci_high", "p_value"}``; the interval and p are
    None unless each side has 2 values and one of them a spread, ``mean`` is None when a side is empty.
    """
    ours, theirs = np.asarray(list(values), dtype=np.float64), np.asarray(list(baseline), dtype=np.float64)
    out = {"n": (int(ours.size), int(theirs.size)), "mean": None, "ci_low": None, "ci_high": None, "p_value": None}
    if ours.size and theirs.size:
        out["mean"] = float(ours.mean() - theirs.mean())
    if min(ours.size, theirs.size) >= 2 and (ours.std() > 0 or theirs.std() > 0):
        test = stats.ttest_ind(ours, theirs, equal_var=False)
        low, high = test.confidence_interval(confidence)
        out.update(ci_low=float(low), ci_high=float(high), p_value=float(test.pvalue))
    return out


def min_detectable_difference(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference a two-sided paired t-test at level ``alpha`` detects with probability
    ``power`` from ``n`` pairs whose differences have standard deviation ``std``.

    Exact, from the noncentral t: solves P(|T'| > t_{1-alpha/2, n-1}) = power for the difference delta, where
    T' ~ nct(n - 1, delta * sqrt(n) / std) (``scipy.stats.nct``). Roughly (t_{1-alpha/2} + t_power) * std / sqrt(n).
    """
    if n < 2 or not std > 0:
        raise ValueError(f"need n >= 2 pairs and a positive std, got n={n}, std={std}")
    df, critical = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def shortfall(delta):
        noncentrality = delta * math.sqrt(n) / std
        # the lower tail is negligible for a positive noncentrality; scipy returns NaN for it at some df = 1 values
        lower = np.nan_to_num(stats.nct.cdf(-critical, df, noncentrality), nan=0.0)
        return stats.nct.sf(critical, df, noncentrality) + lower - power

    high = std
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-12 * std))


def holm(p_values: list) -> list:
    """Holm's step-down adjustment of ``p_values`` (None entries are kept as None and not counted).

    Sorted ascending, the i-th smallest of m p-values becomes max_{j <= i} min(1, (m - j + 1) p_(j)); rejecting
    where the adjusted value is below alpha controls the family-wise error rate (Holm, Scand. J. Statist. 1979).
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted, running = [None] * len(p_values), 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(difference: dict, adjusted_p: float | None, alpha: float = ALPHA) -> str:
    """The plain reading of a paired difference (higher is better) after the Holm correction."""
    n = difference["n"]
    if n == 0:
        return "no seed with both results"
    if n == 1:
        return "one seed: no test, run more seeds"
    if adjusted_p is not None and adjusted_p < alpha:
        return "better" if difference["mean"] > 0 else "worse"
    return f"not distinguishable at {n} seeds"


def wilcoxon_floor(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with ``n`` pairs (every
    difference of one sign): 2 / 2^n, computed by ``scipy.stats.wilcoxon``."""
    return float(stats.wilcoxon(np.arange(1.0, n + 1), method="exact").pvalue)


def expected_max(values, n: int) -> tuple[float, float]:
    """Expected best of ``n`` trials drawn with replacement from the observed trial results ``values``, and its
    standard deviation: Dodge et al., "Show Your Work" (EMNLP 2019), eq. 1.

    With v_(1) <= ... <= v_(N) the sorted values, the best of n draws is v_(i) with probability
    (i / N)^n - ((i - 1) / N)^n, so E = sum_i v_(i) [(i / N)^n - ((i - 1) / N)^n] and Var = E[max^2] - E^2.
    """
    v = np.sort(np.asarray(list(values), dtype=np.float64))
    if v.size == 0 or n < 1:
        raise ValueError(f"expected_max needs at least one value and n >= 1, got {v.size} values and n = {n}")
    ranks = np.arange(1, v.size + 1) / v.size
    weights = ranks ** n - (ranks - 1 / v.size) ** n
    mean = float(weights @ v)
    return mean, float(math.sqrt(max(0.0, weights @ v ** 2 - mean ** 2)))
