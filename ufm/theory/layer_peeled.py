"""Closed-form optima of the layer-peeled model (docs/theory.md §4).

CE, balanced, d >= K-1 (Fang et al. 2021, Thm 1; value derived in §4): both budgets bind,
W rows form a simplex ETF with ||w_k||^2 = E_W and h_{k,i} = sqrt(E_H/E_W) w_k, and
    f* = log(1 + (K-1) exp(-K sqrt(E_W E_H)/(K-1))),
the sphere value (§3) at 1/tau = sqrt(E_W E_H).

MSE (derived): {W H : ||W||^2 <= K E_W, ||H||^2 <= N E_H, rank <= d} is the nuclear-norm ball of
radius R = sqrt(K E_W N E_H) (rank <= d), so the optimum is the Euclidean projection of Y onto it:
its singular values sqrt(n_k), the min(d, K) largest kept, soft-thresholded to sum to at most R.
Exact for balanced counts (either feature budget) and for the sample-averaged budget with any
counts; the surviving classes form an orthogonal frame.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.models.layer_peeled import LayerPeeled
from ufm.models.ufm import Params
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum
from ufm.theory.normalized import etf_params, sphere_ce_value

__all__ = ["l1_ball_shrink"]


def l1_ball_shrink(sigma: np.ndarray, R: float) -> np.ndarray:
    """Euclidean projection of sigma >= 0 onto {s >= 0 : sum s <= R}: (sigma - theta)_+ with the
    smallest theta >= 0 that meets the budget (found exactly by sorting)."""
    if sigma.sum() <= R:
        return sigma.copy()
    s = np.sort(sigma)[::-1]
    cums = np.cumsum(s)
    j = np.arange(1, len(s) + 1)
    rho = np.flatnonzero(s - (cums - R) / j > 0)[-1]
    theta = (cums[rho] - R) / (rho + 1)
    return np.maximum(sigma - theta, 0.0)


def _mse(model: LayerPeeled, E_W: float, E_H: float) -> Optimum:
    K, d, N = model.K, model.d, model.N
    counts = np.asarray(model.counts, dtype=float)
    if not model.balanced and model.h_budget == "class":
        raise NoClosedForm(
            "MSE with imbalanced counts has a closed form only for h_budget='sample' (the "
            "per-class budget weights the nuclear-norm ball unevenly), got h_budget='class'"
        )
    R = math.sqrt(K * E_W * N * E_H)
    keep = np.zeros(K, bool)
    keep[np.argsort(-counts, kind="stable")[: min(d, K)]] = True
    sig = np.where(keep, np.sqrt(counts), 0.0)
    s = l1_ball_shrink(sig, R)  # singular values of W H, on the class directions
    value = float(np.sum((np.sqrt(counts) - s) ** 2) / (2 * N))
    # balanced factors: W = alpha diag(sqrt s) R^T, H = R diag(sqrt s)/alpha V^T, budgets met
    # exactly when the ball binds, else the geometric mean of the two budgets' scales
    total = s.sum()
    alpha2 = K * E_W / total if total >= R * (1 - 1e-15) else math.sqrt(K * E_W / (N * E_H))
    slot = np.cumsum(keep) - 1
    W = np.zeros((K, d))
    W[keep, slot[keep]] = math.sqrt(alpha2) * np.sqrt(s[keep])
    hbar = np.zeros((d, K))  # class means: h_k = sqrt(s_k)/(alpha sqrt(n_k)) e_slot
    hbar[slot[keep], keep] = np.sqrt(s[keep]) / (math.sqrt(alpha2) * np.sqrt(counts[keep]))
    H = np.repeat(hbar, model.counts, axis=1)
    return Optimum(value, Params(jnp.asarray(W), jnp.asarray(H), None), "Fang et al. 2021")


@optimum.register
def _(model: LayerPeeled) -> Optimum:
    K, d = model.K, model.d
    E_W, E_H = as_float(model.E_W), as_float(model.E_H)
    if model.loss == "mse":
        return _mse(model, E_W, E_H)
    if not model.balanced:
        raise NoClosedForm(
            "the CE layer-peeled model with imbalanced counts has no closed-form optimum "
            "(docs/theory.md §4.3): Fang et al. prove minority collapse only as n_A/n_B -> "
            "infinity; the exact threshold R_0 is a 1-D root-find through the KKT multipliers, "
            "not a closed form"
        )
    if d < K - 1:
        raise NoClosedForm(
            f"the CE layer-peeled optimum is known for d >= K-1 only, got d={d}, K={K}: for "
            "K > d+1 the ETF value is a strict lower bound (docs/theory.md §7)"
        )
    value = sphere_ce_value(K, math.sqrt(E_W * E_H))
    params = etf_params(K, d, model.counts, math.sqrt(E_W), math.sqrt(E_H))
    return Optimum(value, params, "Fang et al. 2021")
