"""Minority collapse from certified optima: the collapse curve of the regularised UFM, the
Hong-Ling threshold and the layer-peeled R_0, each from the convex forms of docs/theory.md
§15-§16 solved to a duality gap (no multi-start, no restriction to collapsed points).

Two groups: K_A majority classes of n_A samples and K_B >= 2 minority classes of n_B; the counts
may be real (they enter the convex form only through the weights n_k/N and the metric), so a
whole curve is one vmapped, compiled call and a threshold is a root-find in a real variable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ufm.metrics.imbalance import minority_cosine, minority_spread
from ufm.models._base import check_choice, check_int, check_real
from ufm.theory._certify_form import lpm_form, ufm_form
from ufm.theory._roots import bisect, bracket
from ufm.theory.certify import recover, solve_forms

__all__ = [
    "CertifiedCurve",
    "certified_hong_ling_threshold",
    "certified_lpm_curve",
    "certified_lpm_threshold",
    "certified_minority_curve",
]

SPREAD_TOL = 1e-8  # minority spread below which the certified optimum counts as collapsed


class CertifiedCurve(NamedTuple):
    """Minority collapse of certified optima along the imbalance ratio (one entry per point).

    R: n_A/n_B. cosine, spread: `ufm.metrics.imbalance.minority_cosine` / `minority_spread` of
    the optimal W. value, gap: the convex optimum and its relative duality gap. rank: rank of the
    optimal Z. dual_norm: ||G R^{-T}||_op of the certificate (mu for the UFM, the budget's
    multiplier m for the layer-peeled model).
    """

    R: np.ndarray
    cosine: np.ndarray
    spread: np.ndarray
    value: np.ndarray
    gap: np.ndarray
    rank: np.ndarray
    dual_norm: np.ndarray


def _curve(build, xs, K_A: int, K: int, R: np.ndarray, tol: float) -> CertifiedCurve:
    """Certify the forms build(x) for x in xs in one vmapped call, and measure the minority."""
    tol = check_real("tol", tol, strict=True)
    with jax.enable_x64(True):
        forms = jax.vmap(build)(jnp.asarray(xs, dtype=jnp.float64))
        sol = solve_forms(forms, tol)
        W, _, rank = jax.vmap(lambda f, X: recover(f, X, K))(forms, sol.X)
        minority = tuple(range(K_A, K))
        out = (minority_cosine(W, minority), minority_spread(W, minority))
        out += (sol.value, (sol.value - sol.lower) / jnp.abs(sol.value), rank, sol.dual_norm)
        return CertifiedCurve(np.asarray(R, float), *(np.asarray(x) for x in out))


def _groups(K_A, K_B):
    return check_int("K_A", K_A, 1), check_int("K_B", K_B, 2)


def certified_minority_curve(
    K_A: int,
    K_B: int,
    n_A: float,
    n_B: Sequence[float],
    lam_W: float,
    lam_H: float,
    loss: str = "ce",
    bias: bool = False,
    lam_b: float = 0.0,
    alpha: float = 0.0,
    tol: float = 1e-11,
) -> CertifiedCurve:
    """Minority collapse of the regularised UFM (any bias mode; CE, label smoothing or MSE) at
    certified optima, for each minority count in `n_B` (reals > 0) at fixed n_A.

    Hong & Ling (2023): for CE the minority classes collapse iff n_B <= N^2 lam_W lam_H,
    N = K_A n_A + K_B n_B (docs/theory.md §15); the curve shows it without any local search.
    """
    K_A, K_B = _groups(K_A, K_B)
    n_A = check_real("n_A", n_A, strict=True)
    n_B = np.asarray([check_real("n_B", x, strict=True) for x in np.ravel(n_B)], dtype=float)
    check_choice("loss", loss, ("ce", "ls", "mse"))
    lam_W, lam_H = check_real("lam_W", lam_W, strict=True), check_real("lam_H", lam_H, strict=True)
    lam_b = check_real("lam_b", lam_b)
    if not 0.0 <= check_real("alpha", alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got alpha={alpha!r}")

    def build(x):
        counts = jnp.concatenate([jnp.full((K_A,), n_A), jnp.full((K_B,), 1.0) * x])
        return ufm_form(counts, loss, lam_W, lam_H, alpha=alpha, bias=bias, lam_b=lam_b)

    return _curve(build, n_B, K_A, K_A + K_B, n_A / n_B, tol)


def certified_hong_ling_threshold(
    K_A: int,
    K_B: int,
    n_A: float,
    lam_W: float,
    lam_H: float,
    bias: bool = False,
    lam_b: float = 0.0,
    rtol: float = 1e-9,
) -> float:
    """The minority count n_B* in (0, n_A) at which the certified CE-UFM optimum stops being
    minority-collapsed (collapsed for n_B < n_B*), found by bisection in log n_B on the spread
    of certified optima (<= 1e-8 counts as collapsed).

    Theory (Hong & Ling 2023; docs/theory.md §15): n_B* is the smallest root of
    n_B = (K_A n_A + K_B n_B)^2 lam_W lam_H, for every bias mode. Raises ValueError when the
    optimum at n_B = n_A is still collapsed (no threshold below n_A) or when the classes do not
    collapse even at n_B = 1e-6 n_A.
    """
    K_A, K_B = _groups(K_A, K_B)
    n_A = check_real("n_A", n_A, strict=True)

    def separated(x):  # >= 0 once the minority classifiers separate
        curve = certified_minority_curve(K_A, K_B, n_A, [x], lam_W, lam_H, "ce", bias, lam_b)
        return 1.0 if curve.spread[0] > SPREAD_TOL else -1.0

    lo, hi = 1e-6 * n_A, n_A
    if separated(lo) >= 0 or separated(hi) < 0:
        raise ValueError(
            f"no collapse threshold in n_B in [{lo:g}, {hi:g}] for lam_W={lam_W!r}, "
            f"lam_H={lam_H!r}: the minority classes are collapsed at both ends or at neither"
        )
    return bisect(separated, lo, hi, log=True, rtol=rtol)


def _lpm_build(K_A, K_B, E_W, E_H, h_budget):
    K_A, K_B = _groups(K_A, K_B)
    E_W, E_H = check_real("E_W", E_W, strict=True), check_real("E_H", E_H, strict=True)
    check_choice("h_budget", h_budget, ("class", "sample"))

    def build(R):
        counts = jnp.concatenate([jnp.full((K_A,), 1.0) * R, jnp.ones((K_B,))])
        return lpm_form(counts, E_W, E_H, h_budget)

    return build


def _minority_norm(K: int, pi_B: np.ndarray, h_budget: str) -> np.ndarray:
    """s_B: the norm of the minority-separating block of G R^{-T} at a collapsed point,
    sqrt(K) pi_B (per-class budget) or sqrt(pi_B) (sample-averaged)."""
    return math.sqrt(K) * pi_B if h_budget == "class" else np.sqrt(pi_B)


def certified_lpm_curve(
    K_A: int,
    K_B: int,
    R: Sequence[float],
    E_W: float = 1.0,
    E_H: float = 1.0,
    h_budget: str = "class",
    tol: float = 1e-12,
) -> CertifiedCurve:
    """Minority collapse of the layer-peeled CE model (n_A = R, n_B = 1) at certified optima of
    its class-mean convex form, for each ratio in `R` (reals > 0); docs/theory.md §16."""
    R = np.asarray([check_real("R", x, strict=True) for x in np.ravel(R)], dtype=float)
    build = _lpm_build(K_A, K_B, E_W, E_H, h_budget)
    return _curve(build, R, K_A, K_A + K_B, R, tol)


def certified_lpm_threshold(
    K_A: int,
    K_B: int,
    *,
    E_W: float = 1.0,
    E_H: float = 1.0,
    h_budget: str = "class",
    rtol: float = 1e-10,
) -> float:
    """R_0 of the layer-peeled CE model from its convex form: the root of kappa(R) = m(R)/s_B(R),
    where m is the multiplier of the nuclear-norm budget at the certified optimum (its
    `dual_norm`) and s_B the norm the minority-separating block of the dual takes at a collapsed
    point (`_minority_norm`); the minority collapses iff kappa >= 1 (docs/theory.md §16).

    Bisection in log R (`ufm.theory._roots`), bracketed upwards from R = 1 (balanced: kappa < 1).
    """
    K = check_int("K_A", K_A, 1) + check_int("K_B", K_B, 2)
    curve = lambda R: certified_lpm_curve(K_A, K_B, [R], E_W, E_H, h_budget)  # noqa: E731

    def log_kappa(R):
        pi_B = 1.0 / (K_A * R + K_B)
        return math.log(curve(R).dual_norm[0] / _minority_norm(K, pi_B, h_budget))

    lo, hi = bracket(log_kappa, 1.0, 2.0, limit=2.0**40)
    return bisect(log_kappa, lo, hi, log=True, rtol=rtol)
