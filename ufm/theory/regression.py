"""Closed-form optimum of the regression UFM (Andriopoulos et al., NeurIPS 2024; docs/theory.md
§18), any targets Y (K x N), any d, free bias.

Let Sigma = (1/N)(Y - ybar 1^T)(Y - ybar 1^T)^T = sum_j lam_j u_j u_j^T (lam_1 >= lam_2 >= ...)
and c = N lam_W lam_H (ufm's lam_H is the paper's lam_H/N). The penalties give
lam_W/2 ||W||^2 + lam_H/2 ||H||^2 >= sqrt(lam_W lam_H) ||W H||_*, with equality for balanced
factors, so the problem is a nuclear-norm-penalised least-squares fit of the centred targets:
their singular values sqrt(N lam_j) are soft-thresholded at sqrt(N c), the r = min(d, #{lam_j > c})
largest kept. Then

    b* = ybar,   H* 1 = 0,   W H = sum_{j <= r} (1 - sqrt(c/lam_j)) u_j u_j^T (Y - ybar 1^T),
    W W^T = sqrt(N lam_H/lam_W) sum_{j <= r} (sqrt(lam_j) - sqrt(c)) u_j u_j^T
          (= sqrt(paper's lam_H/lam_W) (Sigma^{1/2} - sqrt(c) I)_+ when d >= #{lam_j > c}),
    f* = sum_{j <= r} [sqrt(c lam_j) - c/2] + sum_{j > r} lam_j/2.

If c >= lam_1, W = H = 0 and f* = tr(Sigma)/2.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.models.regression import RegressionUFM
from ufm.models.ufm import Params
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum

__all__ = ["regression_value", "target_spectrum"]


def target_spectrum(Y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lam, U, Yc): eigenvalues of the target covariance Sigma in decreasing order, their
    eigenvectors (columns of U) and the centred targets Yc = Y - ybar 1^T."""
    Y = np.asarray(Y, dtype=float)
    Yc = Y - Y.mean(axis=1, keepdims=True)
    lam, U = np.linalg.eigh(Yc @ Yc.T / Y.shape[1])
    return np.maximum(lam[::-1], 0.0), U[:, ::-1], Yc


def regression_value(lam, c: float, d: int | None = None) -> float:
    """f* = sum_{j <= r} [sqrt(c lam_j) - c/2] + sum_{j > r} lam_j/2 for the eigenvalues lam of
    Sigma (any order), r = #{lam_j > c} capped at d (the d largest take the first branch)."""
    lam = np.sort(np.asarray(lam, dtype=float))[::-1]
    active = lam > c
    if d is not None:
        active &= np.arange(len(lam)) < d
    return float(np.sum(np.where(active, np.sqrt(c * lam) - c / 2, lam / 2)))


@optimum.register
def _(model: RegressionUFM) -> Optimum:
    lam_W, lam_H = as_float(model.lam_W), as_float(model.lam_H)
    if lam_W <= 0 or lam_H <= 0:
        raise NoClosedForm(
            f"the closed form needs lam_W > 0 and lam_H > 0 (got lam_W={lam_W}, lam_H={lam_H}): "
            "without weight decay every exact fit is a minimiser"
        )
    K, N, d = model.K, model.N, model.d
    c = N * lam_W * lam_H
    lam, U, Yc = target_spectrum(model.Y)
    r = int(min(d, np.sum(lam > c)))
    # balanced factors of W H = U_r diag(s) V_r^T: s_j = sqrt(N lam_j) - sqrt(N c), V_r the right
    # singular vectors Yc^T U_r/sqrt(N lam_j) of the centred targets
    s = np.sqrt(N * lam[:r]) - math.sqrt(N * c)
    Vr = (Yc.T @ U[:, :r]) / np.sqrt(N * lam[:r])
    alpha = (lam_H / lam_W) ** 0.25
    W = np.zeros((K, d))
    H = np.zeros((d, N))
    W[:, :r] = alpha * U[:, :r] * np.sqrt(s)
    H[:r, :] = (np.sqrt(s)[:, None] * Vr.T) / alpha
    b = np.asarray(model.Y, float).mean(axis=1)
    params = Params(jnp.asarray(W), jnp.asarray(H), jnp.asarray(b))
    return Optimum(regression_value(lam, c, d), params, "Andriopoulos et al. 2024")
