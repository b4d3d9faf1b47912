"""Statistics that can decide a claim: intervals over seeds, comparisons of methods, seeds needed.

A run's seed is the only honest unit of uncertainty: runs are reproducible bit for bit on one
machine but not across machines (floating point differs in the last digits and learning amplifies
it), so every interval here is over seeds, and there are few of them (3-5, 10 on the cheap
environments). That decides the choice of intervals (docs/statistics.md):

- The mean of a method: Student's t interval. With n seeds the percentile bootstrap never leaves
  the range of the n values seen; measured on normal draws it covers the truth in 76% (n = 3),
  83% (n = 5) and 89% (n = 10) of cases at a nominal 95%, the t interval in 95%.
- The ratio of two methods' means (the paper's claims are ratios: "up to 2x fewer violations"):
  Fieller's interval, the set of ratios rho for which mean(a) - rho mean(b) is not significantly
  different from 0 by a Welch t test. It is exact for normal seeds and, unlike a log or delta
  interval, honest when mean(b) is close to 0: the interval is then unbounded.
- The difference of two methods' final returns: Welch's t interval.
- The probability that a random seed of one method has fewer violations than a random seed of
  the other, counted over all pairs of seeds (ties one half): the Mann-Whitney U over n_a n_b.
- Seeds needed: the seeds per method at which a two-sided 5% t test on the log ratio has 80%
  power, given each method's measured coefficient of variation (noncentral t).

scipy.stats provides the t and noncentral t distributions; tests/test_stats.py checks our
intervals against scipy's own t tests and measures their coverage.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

LEVEL = 0.95                 # every interval's confidence level
ALPHA, POWER = 0.05, 0.80    # the test behind "seeds needed"
# "about as good": at most sqrt(2) times the other's violations, half the paper's 2x on a log scale
AS_FEW_MARGIN = float(np.sqrt(2))


def _moments(values) -> tuple[float, float, int]:
    """(mean, standard error, n) of one method's per-seed values."""
    x = np.asarray(values, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))), len(x)


def _t(df: float, level: float = LEVEL) -> float:
    """The two-sided t quantile (the normal one where df is infinite or undefined)."""
    return float(stats.t.ppf((1 + level) / 2, df)) if np.isfinite(df) else float(stats.norm.ppf((1 + level) / 2))


def welch_df(se_a: float, n_a: int, se_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom of a difference of two independent means."""
    numerator, denominator = (se_a**2 + se_b**2) ** 2, se_a**4 / (n_a - 1) + se_b**4 / (n_b - 1)
    return numerator / denominator if denominator > 0 else float("inf")


# ----------------------------------------------------------------------------- one method

def mean_interval(values, level: float = LEVEL, bounds=(-np.inf, np.inf)) -> tuple[float, float] | None:
    """Student's t interval of the mean over seeds: mean +- t_{n-1} s / sqrt(n) (None for one seed),
    clipped to the range the quantity can take (counts >= 0, rates in [0, 1])."""
    if len(values) < 2:
        return None
    mean, se, n = _moments(values)
    half = _t(n - 1, level) * se
    return float(max(mean - half, bounds[0])), float(min(mean + half, bounds[1]))


# ----------------------------------------------------------------------------- two methods

def ratio_interval(a, b, level: float = LEVEL) -> tuple[float, float, float] | None:
    """mean(a) / mean(b) and Fieller's interval: every rho with |mean(a) - rho mean(b)| <=
    t * sqrt(se_a^2 + rho^2 se_b^2), t at the Welch degrees of freedom of the point estimate.

    Squaring gives A rho^2 + B rho + C <= 0 with A = mean(b)^2 - t^2 se_b^2: where A > 0 the set
    is the interval between the roots; where A <= 0 mean(b) is not distinguishable from 0 and the
    interval is unbounded (high = inf). Non-negative data (violation counts) clip the low end at 0.
    None with fewer than 2 seeds on either side."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa, na), (mb, sb, nb) = _moments(a), _moments(b)
    ratio = ma / mb if mb != 0 else (float("nan") if ma == 0 else float("inf"))
    t = _t(welch_df(sa, na, (ratio if np.isfinite(ratio) else 1.0) * sb, nb), level)
    A, B, C = mb**2 - t**2 * sb**2, -2 * ma * mb, ma**2 - t**2 * sa**2
    floor = 0.0 if min(np.min(a), np.min(b)) >= 0 else -float("inf")
    if A <= 0:
        return ratio, floor, float("inf")
    root = np.sqrt(max(B**2 - 4 * A * C, 0.0))
    low, high = (-B - root) / (2 * A), (-B + root) / (2 * A)
    return ratio, max(float(low), floor), float(high)


def difference_interval(a, b, level: float = LEVEL) -> tuple[float, float, float] | None:
    """mean(a) - mean(b) with Welch's t interval (None with fewer than 2 seeds on either side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa, na), (mb, sb, nb) = _moments(a), _moments(b)
    half = _t(welch_df(sa, na, sb, nb), level) * np.hypot(sa, sb)
    return ma - mb, ma - mb - half, ma - mb + half


def probability_fewer(a, b) -> float:
    """P(a random seed of a has a smaller value than a random seed of b), over all n_a x n_b pairs,
    ties counted one half: the Mann-Whitney U statistic of b against a over n_a n_b."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None, :]
    return float(((a < b) + 0.5 * (a == b)).mean())


# ----------------------------------------------------------------------------- claims

def verdict(claim: str, interval: tuple[float, float], effect: float = 1.0) -> str:
    """The written rule, on the 95% interval [low, high] of mean(a) / mean(b).

    claim "fewer" (a has fewer than b, by the paper's factor `effect`, 1 where it names none):
      reproduced where the interval lies below 1 and reaches the paper's effect (low <= effect);
      refuted where it excludes the paper's effect on the other side (low > effect, which with
      effect < 1 includes "fewer, but by less than the paper's factor");
      undecided otherwise.
    claim "as_few" (about as good, i.e. not worse: a has at most m = AS_FEW_MARGIN times b's):
      reproduced where the interval lies below m, refuted where it lies above m, undecided otherwise.
      A method far better than the other passes: the paper's point is that MESA loses nothing.
    """
    low, high = interval
    if claim == "fewer":
        return "reproduced" if high < 1 and low <= effect else "refuted" if low > effect else "undecided"
    if claim == "as_few":
        m = AS_FEW_MARGIN
        return "reproduced" if high < m else "refuted" if low > m else "undecided"
    raise ValueError(f"unknown claim {claim!r}: 'fewer' or 'as_few'")


def power(n: int, distance: float, cv_a: float, cv_b: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided t test on log(mean(a) / mean(b)) with n seeds per method when the true
    log ratio lies `distance` from the value tested: noncentral t with df = 2n - 2 and noncentrality
    distance / sqrt((cv_a^2 + cv_b^2) / n) (the delta method's standard error of a log mean is cv / sqrt(n))."""
    df, nc = 2 * n - 2, distance / np.sqrt((cv_a**2 + cv_b**2) / n)
    t = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(t, df, nc) + stats.nct.cdf(-t, df, nc))


def seeds_needed(a, b, distance: float, target: float = POWER, most: int = 1000) -> int | None:
    """The fewest seeds per method (2 to `most`) at which power(...) reaches `target`, with each
    method's coefficient of variation (std / mean over its seeds) as measured; None where it cannot
    be computed (a mean of 0, no distance left) or exceeds `most`."""
    cv = [np.std(x, ddof=1) / np.mean(x) if np.mean(x) > 0 else float("nan") for x in (a, b)]
    if not np.all(np.isfinite(cv)) or distance <= 0:
        return None
    if cv[0] == cv[1] == 0:
        return 2
    return next((n for n in range(2, most + 1) if power(n, distance, *cv) >= target), None)


def claim_distance(claim: str, ratio: float, effect: float = 1.0) -> float:
    """How far the log ratio lies from what the test must exclude: for "fewer", from 1 at the paper's
    effect (at the measured ratio where the paper names no size); for "as_few", from the margin."""
    if not np.isfinite(ratio) or ratio <= 0:
        return float("nan")
    if claim == "fewer":
        return abs(np.log(effect if effect < 1 else ratio))
    return np.log(AS_FEW_MARGIN) - np.log(ratio)


def compare(a, b, returns_a=None, returns_b=None, claim: str | None = None, effect: float = 1.0) -> dict:
    """Everything summary.json records for one pair: the ratio of means of a and b (cumulative
    violations) with its interval, P(a seed of a has fewer), the difference of final returns with its
    interval, and, where the paper makes a claim about the pair, its verdict and the seeds needed."""
    ratio = ratio_interval(a, b)
    out = {"seeds": [len(a), len(b)], "ratio": None if ratio is None else ratio[0],
           "ci95": None if ratio is None else [float(v) for v in ratio[1:]], "probability_fewer": probability_fewer(a, b)}
    if returns_a is not None:
        diff = difference_interval(returns_a, returns_b)
        out["return_difference"] = None if diff is None else diff[0]
        out["return_difference_ci95"] = None if diff is None else [float(v) for v in diff[1:]]
    if claim is not None:
        out.update(claim=claim, paper_effect=effect,
                   verdict=None if ratio is None else verdict(claim, ratio[1:], effect),
                   seeds_needed=None if ratio is None else seeds_needed(a, b, claim_distance(claim, ratio[0], effect)))
    return out
