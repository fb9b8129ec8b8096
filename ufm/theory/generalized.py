"""More classes than dimensions, K > d+1 (Jiang et al. 2024, "generalized neural collapse";
docs/theory.md §7): the few exactly checkable configurations, and plain statements of the rest.

Known (numerically verified in §7; not proven in general, to our knowledge):
* regularised CE-UFM without bias, d = 2: the regular K-gon, h_k = sqrt(lam_W/(n lam_H)) w_k, with
  the scale from the 1-D convex problem min_rho log sum_j exp(rho(cos(2 pi j/K) - 1)) + K c rho
  (with a bias it is NOT optimal: the bias is an extra feature coordinate);
* CE on the sphere (`ufm.NormalizedUFM`), d = 2: the regular K-gon, value
  log sum_j exp((cos(2 pi j/K) - 1)/tau_eff);
* CE on the sphere, K = 2d: the cross-polytope {+-e_i}, value
  log(1 + (2d-2) e^{-1/tau_eff} + e^{-2/tau_eff}) (the orthoplex regime d+2 <= K <= 2d is treated
  by Alcala et al. 2026).
Everything else with K > d+1 raises `NoClosedForm` saying what is known. The sphere cases wrap
the `ufm.NormalizedUFM` optimum of `ufm.theory.normalized` (imported first).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.models.normalized import NormalizedUFM
from ufm.models.ufm import UFM, Params
from ufm.theory import normalized as _normalized  # noqa: F401  (registered first; wrapped below)
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum
from ufm.theory._roots import bisect, bracket

__all__ = [
    "cross_polytope",
    "cross_polytope_value",
    "polygon",
    "polygon_ufm_scale",
    "sphere_polygon_value",
]


def polygon(K: int, d: int = 2) -> np.ndarray:
    """(K, d) rows: the regular K-gon on the unit circle of the first two axes, w_k at angle
    2 pi k/K."""
    t = 2 * np.pi * np.arange(K) / K
    W = np.zeros((K, d))
    W[:, 0], W[:, 1] = np.cos(t), np.sin(t)
    return W


def cross_polytope(d: int) -> np.ndarray:
    """(2d, d) rows: the cross-polytope (orthoplex) e_1, -e_1, e_2, -e_2, ..."""
    W = np.zeros((2 * d, d))
    for i in range(d):
        W[2 * i, i], W[2 * i + 1, i] = 1.0, -1.0
    return W


def _self_dual_ce(W: np.ndarray, inv_tau: float) -> float:
    """(1/K) sum_k log sum_j exp((<w_j, w_k> - 1) inv_tau) for unit rows w_k (h_k = w_k)."""
    G = W @ W.T
    A = (G - 1.0) * inv_tau
    m = A.max(axis=1, keepdims=True)
    return float(np.mean(m[:, 0] + np.log(np.exp(A - m).sum(axis=1))))


def sphere_polygon_value(K: int, inv_tau: float) -> float:
    """CE of the regular K-gon on the sphere at logit scale inv_tau = r_W r_H/tau:
    log sum_j exp((cos(2 pi j/K) - 1) inv_tau)."""
    return _self_dual_ce(polygon(K), inv_tau)


def cross_polytope_value(d: int, inv_tau: float) -> float:
    """CE of the cross-polytope (K = 2d) on the sphere: log(1 + (2d-2)e^{-t} + e^{-2t}),
    t = inv_tau."""
    return math.log1p((2 * d - 2) * math.exp(-inv_tau) + math.exp(-2 * inv_tau))


def polygon_ufm_scale(K: int, c: float) -> tuple[float, float]:
    """(rho*, f*) of the regular K-gon in the regularised CE-UFM, c = sqrt(n lam_W lam_H).

    With w_k = r u_k (u_k the unit K-gon) and h_k = t u_k, the logits of class k are
    rho cos(2 pi (j-k)/K), rho = r t, and the penalty lam_W K r^2/2 + lam_H N t^2/2 is at least
    K c rho (AM-GM, equality at h_k = sqrt(lam_W/(n lam_H)) w_k). So the value is the minimum of
    the convex phi(rho) = log sum_j exp(rho(cos(2 pi j/K) - 1)) + K c rho over rho >= 0, found by
    bisection on phi'. phi'(0) = Kc - 1, so the zero solution is optimal iff Kc >= 1.
    """
    cos1 = np.cos(2 * np.pi * np.arange(K) / K) - 1.0

    def dphi(rho):
        a = rho * cos1
        p = np.exp(a - a.max())
        return float(np.dot(p / p.sum(), cos1)) + K * c

    def phi(rho):
        a = rho * cos1
        return float(a.max() + np.log(np.exp(a - a.max()).sum())) + K * c * rho

    if K * c >= 1:  # phi'(0) = Kc - 1 (sum_j cos(2 pi j/K) = 0)
        return 0.0, math.log(K)
    rho = bisect(dphi, *bracket(dphi, 0.0, 1.0))
    return rho, phi(rho)


def ufm_low_dim(model: UFM, lam_W: float, lam_H: float) -> Optimum:
    """The CE-UFM optimum for d < K-1 where one is known: no bias and d = 2, the regular K-gon (see
    the module docstring); else NoClosedForm. Called by the UFM optimum for balanced CE with
    d < K-1."""
    K, d, n = model.K, model.d, model.n
    if model.bias:
        raise NoClosedForm(
            f"no closed form is known for the regularised CE-UFM with a bias and d < K-1 (K={K}, "
            f"d={d}): the bias acts as an extra feature coordinate (logits [W, b][h; 1]), and free "
            "optimisation beats the regular K-gon (e.g. by 5-19% for K = 6..8, d = 2, measured in "
            "tests/test_generalized.py); without a bias the K-gon is optimal for d = 2 "
            "(numerically)."
        )
    if d != 2:
        raise NoClosedForm(
            f"no closed form is known for the regularised CE-UFM with d < K-1 and d != 2 (K={K}, "
            f"d={d}; docs/theory.md §7). Known: for d = 2 the regular K-gon (numerically, not "
            "proven); in general the optimum is no simplex ETF, the ETF value is only a lower "
            "bound, and several starts are needed (spurious local minima exist when d < K-1)."
        )
    c = math.sqrt(n * lam_W * lam_H)
    rho, value = polygon_ufm_scale(K, c)
    W = math.sqrt(rho * math.sqrt(n * lam_H / lam_W)) * polygon(K, d)
    H = np.repeat((math.sqrt(lam_W / (n * lam_H)) * W).T, n, axis=1)
    return Optimum(value, Params(jnp.asarray(W), jnp.asarray(H), None), "Jiang et al. 2024")


# --- the sphere (ufm.NormalizedUFM) -----------------------------------------------------------
_sphere_optimum = optimum.dispatch(NormalizedUFM)  # the ETF optimum (d >= K-1) and its messages


@optimum.register
def _(model: NormalizedUFM) -> Optimum:
    """NormalizedUFM with K > d+1: the regular K-gon (d = 2) or the cross-polytope (K = 2d), both
    with h_{k,i} = (r_H/r_W) w_k; every other case is left to the ETF optimum of
    `ufm.theory.normalized` (which raises NoClosedForm for K > d+1)."""
    K, d = model.K, model.d
    if d >= K - 1 or model.loss != "ce" or not model.balanced or (d != 2 and K != 2 * d):
        return _sphere_optimum(model)
    r_W, r_H, tau = as_float(model.r_W), as_float(model.r_H), as_float(model.tau)
    inv_tau = r_W * r_H / tau
    if d == 2:
        U, value = polygon(K, d), sphere_polygon_value(K, inv_tau)
    else:
        U, value = cross_polytope(d), cross_polytope_value(d, inv_tau)
    H = np.repeat(r_H * U.T, model.counts, axis=1)
    return Optimum(value, Params(jnp.asarray(r_W * U), jnp.asarray(H), None), "Jiang et al. 2024")
