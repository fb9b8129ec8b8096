"""Closed-form optima of the regularised UFM (docs/theory.md §1, §2, §4); c = sqrt(n lam_W lam_H).

CE, balanced, d >= K-1 (Zhu et al. 2021; value derived in §1): with q = (K-1)c,
    Kc >= 1: W = H = 0, f* = log K;
    else:    f* = -q log q - (1-q) log(1-q) + q log(K-1), margin s* = log((1-q)/c),
             W rows a simplex ETF with ||w_k||^2 = rho* sqrt(n lam_H/lam_W), rho* = (K-1)s*/K,
             h_{k,i} = sqrt(lam_W/(n lam_H)) w_k, b = 0.
MSE without bias (Tirer & Bruna 2022; any counts n_k, any d): soft-thresholding of the singular
values sqrt(n_k) of Y at N mu, mu = sqrt(lam_W lam_H), keeping the min(d, K) largest:
    f* = sum_k [n_k/(2N) if class k is dropped, else mu sqrt(n_k) - N mu^2/2];
    survivors form an orthogonal frame with ||w_k||^2 = (lam_H/lam_W)^{1/2}(sqrt(n_k) - N mu).
MSE with free bias (Zhou et al. 2022), balanced, d >= K-1: b = 1/K, W W^T = sqrt(n lam_H/lam_W)
    (1-Kc)_+ P (an ETF), f* = (K-1)(c - Kc^2/2) if Kc < 1 else (K-1)/(2K).
MSE with regularised bias lam_b > 0, balanced: the three regimes of docs/theory.md §2.3.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.geometry import orthonormal_basis
from ufm.models.ufm import UFM, Params
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum, weight_decays
from ufm.theory._roots import bisect


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
    """H with h_{k,i} = sqrt(lam_W / (n_k lam_H)) w_k, the balanced factor of §0.1."""
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
            "CE with imbalanced counts has no closed-form optimum (minority collapse, "
            "docs/theory.md §4.4: only the threshold n_B <= N^2 lam_W lam_H is exact)"
        )
    if d < K - 1:  # K > d+1: the regular K-gon for d = 2, else NoClosedForm (§7)
        from ufm.theory.generalized import ufm_low_dim

        return ufm_low_dim(model, lam_W, lam_H)
    c = math.sqrt(n * lam_W * lam_H)
    return _etf_optimum(model, lam_W, lam_H, ce_margin(K, c), ce_value(K, c), "Zhu et al. 2021")


def _etf_optimum(
    model: UFM, lam_W: float, lam_H: float, s: float, value: float, source: str
) -> Optimum:
    """The NC optimum with margin s: W rows a simplex ETF with ||w_k||^2 = rho sqrt(n lam_H/lam_W),
    rho = (K-1)s/K, h_{k,i} = sqrt(lam_W/(n lam_H)) w_k, b = 0 (§1; shared by CE, LS, FL), from
    the paper `source`."""
    K, d, n = model.K, model.d, model.n
    rho = (K - 1) * s / K
    M = _frame(d, K - 1) @ np.asarray(orthonormal_basis(K)).T * math.sqrt(K / (K - 1))  # (d, K)
    W = math.sqrt(rho * math.sqrt(n * lam_H / lam_W)) * M.T
    return Optimum(value, _as_params(model, W, _features(model, W, lam_W, lam_H), 0.0), source)


# --- label smoothing and focal loss (Zhou et al., NeurIPS 2022; docs/theory.md §6) -------------
def ls_margin(K: int, c: float, alpha: float) -> float:
    """Optimal margin of label-smoothed CE on the ETF: s* = log((K-1)(1-p)/p) with
    p = (K-1)(Kc+alpha)/K; 0 (the zero solution) when Kc + alpha >= 1.

    On the ETF with margin s the objective is phi(s) = log(1 + (K-1)e^{-s}) + (alpha + Kc)(K-1)s/K
    (convex): label smoothing acts as CE with Kc replaced by Kc + alpha, and phi'(s) = 0 reads
    1 - P(s) = p with P(s) = 1/(1 + (K-1)e^{-s}) the probability of the correct class.
    """
    if K * c + alpha >= 1:
        return 0.0
    p = (K - 1) * (K * c + alpha) / K
    return math.log((K - 1) * (1 - p) / p)


def ls_value(K: int, c: float, alpha: float) -> float:
    """f* of the balanced label-smoothed CE-UFM (d >= K-1): -log(1-p) + (alpha + Kc) rho*, with
    p = (K-1)(Kc+alpha)/K and rho* = (K-1)s*/K; log K when Kc + alpha >= 1."""
    if K * c + alpha >= 1:
        return math.log(K)
    p = (K - 1) * (K * c + alpha) / K
    return -math.log1p(-p) + (alpha + K * c) * (K - 1) * ls_margin(K, c, alpha) / K


def _focal_terms(K: int, s: float, gamma: float) -> tuple[float, float]:
    """(FL(s), dFL/ds) for the logits s(e_k - 1/K): FL = -(1-P)^gamma log P, P = 1/(1+(K-1)e^{-s}),
    dFL/ds = (1-P)^gamma (gamma P log P - (1-P)) (from dP/ds = P(1-P))."""
    t = (K - 1) * math.exp(-s)
    logP = -math.log1p(t)
    P, Q = 1.0 / (1.0 + t), t / (1.0 + t)
    w = Q**gamma
    return -w * logP, w * (gamma * P * logP - Q)


def focal_margin(K: int, c: float, gamma: float, grid: int = 4096) -> tuple[float, float]:
    """(s*, f*) of the balanced focal-loss UFM (d >= K-1) by its exact 1-D reduction.

    On the ETF with margin s the objective is phi(s) = FL(s) + (K-1)c s (§6), which may be
    non-convex. Every minimiser lies in [0, s_max] with s_max = log(K-1) +
    log((1+gamma)/((K-1)c))/(1+gamma): there (1+gamma)(1-P)^{1+gamma} < (K-1)c, and
    |dFL/ds| <= (1+gamma)(1-P)^{1+gamma} because P|log P| <= 1-P, so phi' > 0 beyond it.
    Every sign change - to + of phi' on a grid of that interval is refined by bisection to float64
    resolution, and the best of these local minima and of the endpoint s = 0 is returned.
    """
    q = (K - 1) * c

    def dphi(s):
        return _focal_terms(K, s, gamma)[1] + q

    def phi(s):
        return _focal_terms(K, s, gamma)[0] + q * s

    s_max = max(math.log(K - 1) + math.log((1 + gamma) / q) / (1 + gamma), 0.0) + 1.0
    xs = np.linspace(0.0, s_max, grid)
    ds = [dphi(x) for x in xs]
    candidates = [0.0]
    for i in range(grid - 1):
        if ds[i] < 0 <= ds[i + 1]:
            candidates.append(bisect(dphi, xs[i], xs[i + 1]))
    s_star = min(candidates, key=phi)
    return s_star, phi(s_star)


def focal_value(K: int, c: float, gamma: float) -> float:
    """f* of the balanced focal-loss UFM (d >= K-1); see `focal_margin`."""
    return focal_margin(K, c, gamma)[1]


# --- imbalance (Hong & Ling 2023; docs/theory.md §4) ------------------------------------------
def hong_ling_threshold(N: int, lam_W: float, lam_H: float) -> float:
    """The minority-collapse threshold of the regularised CE-UFM: minority classes of n_B samples
    collapse (all their classifiers equal, all their class means equal) iff n_B <= N^2 lam_W lam_H,
    N the total number of samples (Hong & Ling 2023, two-group case; §4).

    The same number is the class-vanishing threshold of the MSE-UFM without bias: class k gets
    w_k = 0 and mean feature 0 iff n_k <= N^2 lam_W lam_H (soft-thresholding of sqrt(n_k) at
    N sqrt(lam_W lam_H)). Derivation of the CE statement: at a collapsed point the block of the
    CE gradient (1/N)(softmax - Y) that separates minority classes is -(1/N) times the minority
    rows of Y, of operator norm sqrt(n_B)/N; the nuclear-norm certificate (§0.1) holds iff it
    is <= sqrt(lam_W lam_H).
    """
    return N * N * lam_W * lam_H


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
    H = _features(model, W, lam_W, lam_H)
    return Optimum(value, _as_params(model, W, H, 0.0), "Tirer & Bruna 2022")


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
        H = _features(model, W, lam_W, lam_H)
        return Optimum(value, _as_params(model, W, H, c / lam_b), "Zhou et al. 2022")
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
    H = _features(model, W, lam_W, lam_H)
    return Optimum(value, _as_params(model, W, H, b), "Zhou et al. 2022")


def _ls_focal(model: UFM, lam_W: float, lam_H: float) -> Optimum:
    K, d, n = model.K, model.d, model.n
    name = "label smoothing" if model.loss == "ls" else "focal loss"
    if not model.balanced:
        raise NoClosedForm(f"{name} has a closed-form optimum only for balanced counts")
    if d < K - 1:
        raise NoClosedForm(f"{name} needs d >= K-1 for the ETF optimum, got d={d}, K={K}")
    c = math.sqrt(n * lam_W * lam_H)
    if model.loss == "ls":
        alpha = as_float(model.alpha)
        s, value = ls_margin(K, c, alpha), ls_value(K, c, alpha)
    else:
        s, value = focal_margin(K, c, as_float(model.gamma))
    return _etf_optimum(model, lam_W, lam_H, s, value, "Zhou et al. 2022")


@optimum.register
def _(model: UFM) -> Optimum:
    lam_W, lam_H = weight_decays(
        model,
        "without weight decay the CE infimum is not attained and MSE minimisers are not unique",
    )
    if model.loss == "ce":
        return _ce(model, lam_W, lam_H)
    if model.loss in ("ls", "focal"):
        return _ls_focal(model, lam_W, lam_H)
    if not model.bias:
        return _mse_no_bias(model, lam_W, lam_H)
    return _mse_bias(model, lam_W, lam_H, as_float(model.lam_b))
