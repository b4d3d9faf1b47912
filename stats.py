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
- Seeds needed: the seeds per method at which the written rule (`verdict`) decides a claim in 80%
  of simulated experiments drawn with the measured spreads: a power calculation for the very
  interval and rule the summaries use, where a formula on the log scale would fail at the
  coefficients of variation near 1 that safe RL's violation counts show.

scipy.stats provides the t distribution; tests/test_stats.py checks our intervals against scipy's
own t tests and measures their coverage.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

LEVEL = 0.95                 # every interval's confidence level
POWER = 0.80                 # "seeds needed": the rule decides in this share of simulated experiments
# "about as good": at most sqrt(2) times the other's violations, half the paper's 2x on a log scale
AS_FEW_MARGIN = float(np.sqrt(2))


def _moments(values) -> tuple[float, float, int]:
    """(mean, standard error, n) of one method's per-seed values."""
    x = np.asarray(values, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))), len(x)


def _t(df: float, level: float = LEVEL) -> float:
    """The two-sided t quantile (the normal one where df is infinite or undefined)."""
    return float(stats.t.ppf((1 + level) / 2, df)) if np.isfinite(df) else float(stats.norm.ppf((1 + level) / 2))


def welch_df(se_a, n_a, se_b, n_b):
    """Welch-Satterthwaite degrees of freedom of a difference of two independent means (numpy
    arrays broadcast; infinite where both standard errors are 0)."""
    var_a, var_b = np.asarray(se_a, np.float64) ** 2, np.asarray(se_b, np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    return np.where(var_a + var_b > 0, df, np.inf)


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

def fieller(ma, sa, na, mb, sb, nb, level: float = LEVEL, floor: float = -np.inf):
    """Fieller's interval for mean_a / mean_b from means, standard errors and seed counts (numpy
    arrays broadcast, for seeds_needed's simulations): every rho with |ma - rho mb| <= t sqrt(sa^2 +
    rho^2 sb^2), t at the Welch degrees of freedom of the point estimate.

    Squaring gives A rho^2 + B rho + C <= 0 with A = mb^2 - t^2 sb^2: where A > 0 the set is the
    interval between the roots; where A <= 0 mean_b is not distinguishable from 0 and the interval
    is unbounded (high = inf). The low end is clipped at `floor` (0 for counts). Returns (low, high)."""
    ma, sa, mb, sb = (np.asarray(x, np.float64) for x in (ma, sa, mb, sb))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(mb != 0, ma / np.where(mb != 0, mb, 1), 1.0)
    df = welch_df(sa, na, rho * sb, nb)     # of ma - rho mb
    t = stats.t.ppf((1 + level) / 2, np.where(np.isfinite(df), df, 1e12))
    A, B, C = mb**2 - t**2 * sb**2, -2 * ma * mb, ma**2 - t**2 * sa**2
    bounded = A > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.sqrt(np.maximum(B**2 - 4 * A * C, 0.0))
        low = np.where(bounded, (-B - root) / (2 * A), floor)
        high = np.where(bounded, (-B + root) / (2 * A), np.inf)
    return np.maximum(low, floor), high


def ratio_interval(a, b, level: float = LEVEL) -> tuple[float, float, float] | None:
    """mean(a) / mean(b) and its Fieller interval (`fieller`); non-negative data (violation counts)
    clip the low end at 0. None with fewer than 2 seeds on either side."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa, na), (mb, sb, nb) = _moments(a), _moments(b)
    ratio = ma / mb if mb != 0 else (float("nan") if ma == 0 else float("inf"))
    floor = 0.0 if min(np.min(a), np.min(b)) >= 0 else -np.inf
    low, high = fieller(ma, sa, na, mb, sb, nb, level, floor)
    return ratio, float(low), float(high)


def difference_interval(a, b, level: float = LEVEL) -> tuple[float, float, float] | None:
    """mean(a) - mean(b) with Welch's t interval (None with fewer than 2 seeds on either side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa, na), (mb, sb, nb) = _moments(a), _moments(b)
    half = _t(float(welch_df(sa, na, sb, nb)), level) * np.hypot(sa, sb)
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


def decided(claim: str, low, high, effect: float = 1.0):
    """Where `verdict` is not "undecided" (numpy arrays of interval ends)."""
    if claim == "fewer":
        return ((high < 1) & (low <= effect)) | (low > effect)
    return (high < AS_FEW_MARGIN) | (low > AS_FEW_MARGIN)


def seeds_needed(a, b, claim: str, effect: float = 1.0, target: float = POWER, most: int = 200,
                 draws: int = 2000, seed: int = 0) -> int | None:
    """The fewest seeds per method (2 to `most`) at which the written rule decides the claim in
    `target` of simulated experiments; None where even `most` do not (or nothing can be simulated).

    Each simulated experiment draws n normal seeds per method with each method's measured standard
    deviation and the means the claim turns on: for "fewer" with a size, mean(a) = effect x mean(b)
    (does the paper's effect, if true, get confirmed?), with a's measured coefficient of variation;
    otherwise the measured means (how many seeds until the measured difference is decided?). The
    same Fieller interval and rule as for the real runs decide each simulated experiment."""
    (ma, sa), (mb, sb) = ((np.mean(x), np.std(x, ddof=1)) for x in (a, b))     # means and standard deviations
    if claim == "fewer" and effect < 1:     # a's spread relative to its mean as measured (b's if a's mean is 0)
        ma, sa = effect * mb, (sa / ma if ma > 0 else sb / mb if mb > 0 else 0.0) * effect * mb
    if not (np.isfinite([ma, sa, mb, sb]).all() and mb > 0):
        return None
    rng = np.random.default_rng(seed)
    for n in range(2, most + 1):
        xa, xb = ma + sa * rng.standard_normal((draws, n)), mb + sb * rng.standard_normal((draws, n))
        se = lambda x: x.std(1, ddof=1) / np.sqrt(n)  # noqa: E731
        low, high = fieller(xa.mean(1), se(xa), n, xb.mean(1), se(xb), n, floor=0.0)
        if decided(claim, low, high, effect).mean() >= target:
            return n
    return None


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
                   seeds_needed=None if ratio is None else seeds_needed(a, b, claim, effect))
    return out
