"""Closed-form optima of the regularised UFM (THEORY.md sections 1, 2 and 4), c = sqrt(n lam_W lam_H).

CE, balanced, d >= K-1 (Zhu et al. 2021; value derived in THEORY 1): with q = (K-1)c,
    Kc >= 1: W = H = 0, f* = log K;
    else:    f* = -q log q - (1-q) log(1-q) + q log(K-1), margin s* = log((1-q)/c),
             W rows a simplex ETF with ||w_k||^2 = rho* sqrt(n lam_H/lam_W), rho* = (K-1)s*/K,
             h_{k,i} = sqrt(lam_W/(n lam_H)) w_k, b = 0.
MSE without bias (Tirer & Bruna 2022; any counts n_k, any d): soft-thresholding of the singular
values sqrt(n_k) of Y at N mu, mu = sqrt(lam_W lam_H), keeping the min(d, K) largest:
    f* = sum_k [n_k/(2N) if class k is dropped, else mu sqrt(n_k) - N mu^2/2];
    surviving classes form an orthogonal frame with ||w_k||^2 = (lam_H/lam_W)^{1/2}(sqrt(n_k) - N mu).
MSE with free bias (Zhou et al. 2022), balanced, d >= K-1: b = 1/K, W W^T = sqrt(n lam_H/lam_W)
    (1-Kc)_+ P (an ETF), f* = (K-1)(c - Kc^2/2) if Kc < 1 else (K-1)/(2K).
MSE with regularised bias lam_b > 0, balanced: the three regimes of THEORY 2(c).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.geometry import orthonormal_basis
from ufm.models.ufm import UFM, Params
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum


def ce_value(K: int, c: float) -> float:
    """f* of the balanced CE-UFM as a function of c = sqrt(n lam_W lam_H) (any bias mode)."""
    if K * c >= 1:
        return math.log(K)
    q = (K - 1) * c
    return -q * math.log(q) - (1 - q) * math.log1p(-q) + q * math.log(K - 1)


def ce_margin(K: int, c: float) -> float:
    """Optimal margin s* = log((1 - (K-1)c)/c) (0 in the zero regime Kc >= 1)."""
    return 0.0 if K * c >= 1 else math.log((1 - (K - 1) * c) / c)


def _frame(d: int, r: int) -> np.ndarray:
    """R in R^{d x r} with orthonormal columns: the first r coordinate axes."""
    return np.eye(d, r)


def _features(model: UFM, W: np.ndarray, lam_W: float, lam_H: float) -> np.ndarray:
    """H with h_{k,i} = sqrt(lam_W / (n_k lam_H)) w_k, the balanced factor of Tool A."""
    counts = np.asarray(model.counts, dtype=float)
    scale = np.sqrt(lam_W / (counts * lam_H))
    return np.repeat((W * scale[:, None]).T, model.counts, axis=1)


def _as_params(model: UFM, W: np.ndarray, H: np.ndarray, b) -> Params:
    bias = None if not model.bias else jnp.asarray(np.broadcast_to(b, (model.K,)).copy())
    return Params(jnp.asarray(W), jnp.asarray(H), bias)


def _ce(model: UFM, lam_W: float, lam_H: float) -> Optimum:
    K, d, n = model.K, model.d, model.n
    if not model.balanced:
        raise NoClosedForm(
            "CE with imbalanced counts has no closed-form optimum (minority collapse, THEORY 4: "
            "only the threshold n_B <= N^2 lam_W lam_H is exact)"
        )
    if d < K - 1:
        raise NoClosedForm(f"CE needs d >= K-1 for the ETF optimum, got d={d}, K={K} (see THEORY 7)")
    c = math.sqrt(n * lam_W * lam_H)
    s = ce_margin(K, c)
    rho = (K - 1) * s / K
    M = _frame(d, K - 1) @ np.asarray(orthonormal_basis(K)).T * math.sqrt(K / (K - 1))  # (d, K)
    W = math.sqrt(rho * math.sqrt(n * lam_H / lam_W)) * M.T
    return Optimum(ce_value(K, c), _as_params(model, W, _features(model, W, lam_W, lam_H), 0.0))


def _mse_no_bias(model: UFM, lam_W: float, lam_H: float) -> Optimum:
    K, d, counts, N = model.K, model.d, np.asarray(model.counts), model.N
    mu = math.sqrt(lam_W * lam_H)
    keep = np.zeros(K, bool)
    keep[np.argsort(-counts, kind="stable")[: min(d, K)]] = True
    t = np.where(keep, np.maximum(np.sqrt(counts) - N * mu, 0.0), 0.0)  # surviving singular values
    value = float(np.sum(np.where(t > 0, mu * np.sqrt(counts) - N * mu**2 / 2, counts / (2 * N))))
    R = np.zeros((d, K))
    R[:, keep] = _frame(d, int(keep.sum()))
    W = (lam_H / lam_W) ** 0.25 * (np.sqrt(t)[:, None] * R.T)
    return Optimum(value, _as_params(model, W, _features(model, W, lam_W, lam_H), 0.0))


def _mse_bias(model: UFM, lam_W: float, lam_H: float, lam_b: float) -> Optimum:
    K, d, n = model.K, model.d, model.n
    if not model.balanced:
        raise NoClosedForm("MSE with a bias has a closed form only for balanced counts")
    c = math.sqrt(n * lam_W * lam_H)
    Kc = K * c
    scale = math.sqrt(n * lam_H / lam_W)
    Q = np.asarray(orthonormal_basis(K))  # (K, K-1), Q Q^T = P
    t = lam_b / (1 + lam_b)
    if lam_b > 0 and Kc < t:  # ETF plus a common mean component (rank K)
        if d < K:
            raise NoClosedForm(f"this regime needs d >= K, got d={d}, K={K}")
        gamma = 1 - Kc - Kc / lam_b
        B = np.concatenate([math.sqrt(1 - Kc) * Q, math.sqrt(gamma / K) * np.ones((K, 1))], 1)
        W = math.sqrt(scale) * B @ _frame(d, K).T
        value = Kc - Kc**2 / 2 - K * c**2 / (2 * lam_b)
        return Optimum(value, _as_params(model, W, _features(model, W, lam_W, lam_H), c / lam_b))
    if d < K - 1:
        raise NoClosedForm(f"MSE with a bias needs d >= K-1, got d={d}, K={K}")
    shift = lam_b / (2 * K * (1 + lam_b))  # 0 for a free bias
    b = 1 / (K * (1 + lam_b))
    if Kc >= 1:
        value = (K - 1) / (2 * K) + shift
        W = np.zeros((K, d))
    else:
        value = (K - 1) * (c - K * c**2 / 2) + shift
        W = math.sqrt(scale * (1 - Kc)) * Q @ _frame(d, K - 1).T
    return Optimum(value, _as_params(model, W, _features(model, W, lam_W, lam_H), b))


@optimum.register
def _(model: UFM) -> Optimum:
    lam_W, lam_H = as_float(model.lam_W), as_float(model.lam_H)
    if lam_W <= 0 or lam_H <= 0:
        raise NoClosedForm(
            f"the closed forms need lam_W > 0 and lam_H > 0 (got lam_W={lam_W}, lam_H={lam_H}): "
            "without weight decay the CE infimum is not attained and MSE minimisers are not unique"
        )
    if model.loss == "ce":
        return _ce(model, lam_W, lam_H)
    if not model.bias:
        return _mse_no_bias(model, lam_W, lam_H)
    return _mse_bias(model, lam_W, lam_H, as_float(model.lam_b))
