"""Closed-form optimum of the max-margin UFM: the SELI geometry (Thrampoulidis, Kini, Vakilian &
Behnia, NeurIPS 2022; docs/theory.md §17), for any class counts and d >= K-1.

With D = diag(n_1, ..., n_K), P = I - 11^T/K and Y the (K, N) one-hot targets, the UF-SVM equals
the convex problem min ||Z||_* s.t. z_{y_i,i} - z_{c,i} >= 1, whose unique solution is
Z* = P Y (every margin exactly 1). Its value (the 1/2 in the objective makes it exactly ||Z*||_*)
and geometry are

    f* = sum_j sqrt(lam_j(P D P))        (K-1 nonzero eigenvalues; (K-1) sqrt(n) if balanced)
    W W^T = (P D P)^{1/2},   H^T H = (Z*^T Z*)^{1/2},   W H = P Y,   ||W||^2 = ||H||^2 = f*.

Dual certificate: with M = (P D P)^{+1/2}, the multiplier of the constraint (i, c) is
nu_{c,i} = -M_{c,y_i} >= 0 (M has nonpositive off-diagonal entries), G = M Y has
||G||_op = 1, and sum nu = f*: the dual value equals the primal one.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ufm.geometry import orthonormal_basis
from ufm.models.max_margin import MaxMarginParams, MaxMarginUFM
from ufm.theory._base import Optimum, optimum

__all__ = ["seli_value", "seli_multipliers"]


def _spectrum(counts) -> tuple[np.ndarray, np.ndarray]:
    """(lam, V): the K-1 nonzero eigenvalues of P D P and their (K, K-1) eigenvectors, from the
    (K-1) x (K-1) matrix Q^T D Q (Q the Helmert basis, Q Q^T = P), so the exact zero eigenvalue
    along 1 is never formed (a rounded sqrt(1e-16) would pollute the value at 1e-8)."""
    K = len(counts)
    Q = np.asarray(orthonormal_basis(K, dtype=jnp.float64))
    lam, U = np.linalg.eigh(Q.T @ (np.asarray(counts, float)[:, None] * Q))
    return lam, Q @ U


def seli_value(counts) -> float:
    """sum_j sqrt(lam_j(P D P)): the optimal value of the max-margin UFM with these counts."""
    lam, _ = _spectrum(counts)
    return float(np.sum(np.sqrt(lam)))


def seli_multipliers(counts) -> np.ndarray:
    """(K, N) Lagrange multipliers nu_{c,i} = -M_{c,y_i} of the margin constraints (0 at
    c = y_i), M = (P D P)^{+1/2}: the dual certificate of the SELI optimum."""
    lam, V = _spectrum(counts)
    M = (V / np.sqrt(lam)) @ V.T
    K = len(counts)
    nu = -M[:, np.repeat(np.arange(K), counts)]
    nu[np.repeat(np.arange(K), counts), np.arange(sum(counts))] = 0.0
    return nu


@optimum.register
def _(model: MaxMarginUFM) -> Optimum:
    K, d, counts = model.K, model.d, model.counts
    lam, V = _spectrum(counts)
    R = np.eye(d, K - 1)
    W = (V * lam**0.25) @ R.T  # W W^T = V lam^{1/2} V^T = (P D P)^{1/2}
    Y = np.eye(K)[:, np.repeat(np.arange(K), counts)]
    H = R @ ((V * lam**-0.25).T @ Y)  # W H = V V^T Y = P Y
    params = MaxMarginParams(jnp.asarray(W), jnp.asarray(H), jnp.asarray(seli_multipliers(counts)))
    return Optimum(float(np.sum(np.sqrt(lam))), params, "Thrampoulidis et al. 2022")
