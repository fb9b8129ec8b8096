"""The one root finder of ufm's 1-D reductions: bisection of a monotone function on a bracket.

Every closed form that is "the root of a scalar equation" (a margin, a scale, a multiplier, a
threshold ratio) is found here, in plain Python floats (the reductions are cheap and run once per
model, outside any trace). Contract, for both functions:

* monotone: f is non-decreasing on the bracket (pass -f for a non-increasing one);
* bracket: f(lo) < 0 <= f(hi), so the root is the point where f changes sign; `bracket` finds
  such an interval by growing hi geometrically;
* tolerance: `bisect` halves the bracket until hi - lo <= xtol + rtol |hi|, or until the midpoint
  equals an endpoint (the bracket is two adjacent floats: float64 resolution, the default);
* log scale: with ``log=True`` the midpoint is geometric, sqrt(lo hi) (bisection in log x), for
  positive brackets that span many orders of magnitude.

Bisection needs no derivative and cannot leave the bracket; at most ~2100 halvings reach adjacent
floats from any float64 bracket, and a fixed ``maxiter`` bounds the loop regardless.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["bisect", "bracket"]


def bracket(
    f: Callable[[float], float], lo: float, hi: float, *, factor: float = 2.0, limit: float = 1e300
) -> tuple[float, float]:
    """A bracket [lo', hi'] with f(lo') < 0 <= f(hi') for a non-decreasing f with f(lo) < 0.

    While f(hi) < 0 the interval moves up: (lo, hi) <- (hi, factor hi). Needs 0 < hi, factor > 1.
    f(lo) < 0 is the caller's to ensure (it is not evaluated: f may be costly).

    Args:
      f: non-decreasing function of one float.
      lo, hi: a start, lo < hi, with f(lo) < 0.
      factor: growth of hi per step.
      limit: give up when hi exceeds it.

    Returns:
      (lo', hi').

    Raises:
      ValueError: hi <= 0, lo >= hi, factor <= 1, or no sign change below `limit`.
    """
    if not (0 < hi and lo < hi and factor > 1):
        raise ValueError(f"bracket needs lo < hi, hi > 0, factor > 1; got {lo=}, {hi=}, {factor=}")
    while f(hi) < 0:
        lo, hi = hi, hi * factor
        if hi > limit:
            raise ValueError(f"f has no sign change on [{lo!r}, {limit!r}]")
    return lo, hi


def bisect(
    f: Callable[[float], float],
    lo: float,
    hi: float,
    *,
    log: bool = False,
    xtol: float = 0.0,
    rtol: float = 0.0,
    maxiter: int = 4000,
) -> float:
    """The root of a non-decreasing f bracketed by f(lo) < 0 <= f(hi), by bisection.

    Keeps f(lo) < 0 <= f(hi) at every step (f(mid) < 0 moves lo, else hi), so the result is within
    the final bracket whatever f does elsewhere; the signs at lo and hi are not re-evaluated.

    Args:
      f: non-decreasing function of one float.
      lo, hi: the bracket, lo < hi (0 < lo with log=True).
      log: bisect in log x (geometric midpoints).
      xtol, rtol: stop when hi - lo <= xtol + rtol |hi| (0, 0: to adjacent floats).
      maxiter: bound on the number of halvings.

    Returns:
      The midpoint of the final bracket (geometric with log=True).
    """
    if not lo < hi or (log and lo <= 0):
        raise ValueError(f"bisect needs lo < hi (and lo > 0 with log=True), got {lo=}, {hi=}")

    def mid(a: float, b: float) -> float:
        return math.sqrt(a) * math.sqrt(b) if log else 0.5 * (a + b)

    for _ in range(maxiter):
        m = mid(lo, hi)
        if hi - lo <= xtol + rtol * abs(hi) or m <= lo or m >= hi:
            break
        if f(m) < 0:
            lo = m
        else:
            hi = m
    return mid(lo, hi)
