"""Always-valid bounds for the canary verdict: right at every look, however often the controller looks.

A rollout is judged again every tick on the traffic so far, so a fixed-sample test (a p-value
compared with alpha once) would be wrong: looked at a thousand times, noise crosses it. These are
confidence *sequences* (Robbins 1970; Howard, Ramdas et al., "Time-uniform, nonparametric,
nonasymptotic confidence sequences", Ann. Statist. 2021): the chance that the true value ever
leaves the bounds, at any look, is at most ``alpha``.

- ``bernoulli_bounds``: the beta-binomial mixture sequence for a proportion (an error rate, the
  share of requests slower than a threshold, the share of probes answered worse). Exact for
  Bernoulli data at any count, including 0 of n, where normal approximations fail.
- ``discordance_evalue``: the one-sided e-value that discordant probe pairs favour the champion
  (McNemar's question, asked sequentially).

Everything takes arrays (one row per rollout): the controller passes one row, ``make canary-eval``
thousands, through the same code.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betainc, betaln, expit, log_expit, logit

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

#: Jeffreys' prior for the mixture: tight from a few dozen samples up, for rates near 0 too.
PRIOR = 0.5
_NEWTON_STEPS = 6
_EDGE = 30.0  # logit bound: p in [1e-13, 1 - 1e-13]


def bernoulli_bounds(k: ArrayLike, n: ArrayLike, alpha: float) -> tuple[Array, Array]:
    """Lower and upper bounds on a proportion from ``k`` successes in ``n`` trials, valid at every look.

    The set is every p whose beta-binomial mixture martingale stays under 1/alpha:
    ``k log p + (n-k) log(1-p) > log B(a+k, b+n-k) - log B(a, b) - log(1/alpha)``. Its two ends are
    found by Newton's method in logit space (the left side is concave there), started from the
    Wilson-style quadratic approximation. ``k`` may be fractional (interpolated histogram counts).
    """
    return bernoulli_bound(k, n, alpha, lower=True), bernoulli_bound(k, n, alpha, lower=False)


def bernoulli_bound(k: ArrayLike, n: ArrayLike, alpha: float, *, lower: bool) -> Array:
    """One end of ``bernoulli_bounds`` (half the work when only one is needed)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    k, n = np.broadcast_arrays(np.clip(k, 0.0, n), n)
    safe_n = np.maximum(n, 1e-12)
    level = betaln(PRIOR + k, PRIOR + n - k) - betaln(PRIOR, PRIOR) + np.log(alpha)
    p_hat = np.clip(k / safe_n, 1e-12, 1 - 1e-12)
    centre = logit(p_hat)
    # The log-likelihood may fall this far below its maximum: a Wilson interval with this budget starts Newton.
    budget = np.maximum(k * np.log(p_hat) + (n - k) * np.log1p(-p_hat) - level, 1e-9)
    a, b = safe_n + 2 * budget, 2 * safe_n * p_hat + 2 * budget
    root = np.sqrt(np.maximum(b * b - 4 * a * safe_n * p_hat * p_hat, 0.0))
    start = (b - root) / (2 * a) if lower else (b + root) / (2 * a)
    x = logit(np.clip(start, 1e-13, 1 - 1e-13))
    for _ in range(_NEWTON_STEPS):
        value = k * log_expit(x) + (n - k) * log_expit(-x) - level
        slope = k - n * expit(x)
        moving = np.abs(slope) > 1e-12
        x = x - np.where(moving, value / np.where(moving, slope, 1.0), 0.0)
        # The root lies on its own side of the maximum, inside the representable range.
        x = np.clip(np.minimum(x, centre) if lower else np.maximum(x, centre), -_EDGE, _EDGE)
    bound = expit(x)
    if lower:
        return np.asarray(np.where((k <= 0) | (n <= 0), 0.0, bound), dtype=np.float64)
    return np.asarray(np.where((k >= n) | (n <= 0), 1.0, bound), dtype=np.float64)


def discordance_evalue(worse: ArrayLike, better: ArrayLike) -> Array:
    """Evidence that discordant probe pairs go against the canary more often than for it.

    ``worse``: pairs the champion answered right and the canary wrong; ``better``: the reverse. Under
    "the canary is as good" each discordant pair is a fair coin; the e-value mixes the alternatives
    (coin biased against the canary, uniformly over (1/2, 1]):
    ``E = 2^(w+b+1) * B(w+1, b+1) * (1 - I_{1/2}(w+1, b+1))``. Its chance of ever reaching 1/alpha when
    the canary is as good is at most alpha (Ville). Identical answers (no discordant pair) give 1.
    """
    w = np.asarray(worse, dtype=np.float64)
    b = np.asarray(better, dtype=np.float64)
    log_e = (
        (w + b + 1) * np.log(2.0) + betaln(w + 1, b + 1) + np.log(np.maximum(1 - betainc(w + 1, b + 1, 0.5), 1e-300))
    )
    return np.asarray(np.exp(np.minimum(log_e, 700.0)), dtype=np.float64)


#: Alternatives the conditional test mixes over: the canary's rate this many times the champion's.
RATIOS = np.array([1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0])


def conditional_log_ratios(canary_events: Array, canary_n: Array, champion_events: Array, champion_n: Array) -> Array:
    """One look's log likelihood ratios (rows x ``RATIOS``) that canary events are ``ratio`` times as frequent.

    Given how many events happened in both versions together, each one is a canary event with
    probability ``w`` (the canary's share of attempts in this look) if the rates are equal, and
    ``ratio * w / (1 + (ratio - 1) * w)`` if the canary's is ``ratio`` times the champion's. The
    product of these ratios over looks is a test martingale under "the canary's rate is no higher"
    (sampling without replacement only tightens it: Hoeffding 1963), exact for rare events such as
    errors, and it needs no champion history: each look compares the two over the same seconds.
    """
    total = canary_n + champion_n
    share = np.where(total > 0, canary_n / np.maximum(total, 1e-12), 0.0)[:, None]
    events = (canary_events + champion_events)[:, None]
    ratio = RATIOS[None, :]
    return np.asarray(canary_events[:, None] * np.log(ratio) - events * np.log1p((ratio - 1.0) * share))


def mixture_evalue(log_ratios: Array) -> Array:
    """The e-value of the equal-weight mixture over ``RATIOS`` of cumulative log likelihood ratios."""
    top = log_ratios.max(axis=1, keepdims=True)
    return np.asarray(np.exp(np.minimum(top[:, 0], 700.0)) * np.exp(log_ratios - top).mean(axis=1))
