"""Closed-form optima of the extended / deep UFM with MSE (docs/theory.md §5; Dang et al. 2023).

Deep linear, m = depth + 1 factors, Lam = (lam_H prod_l lam_l)^{1/m}. By the factor reduction
(§0.1) the penalty of the product Z = W_L ... W_1 H is (m/2) Lam sum_j sigma_j(Z)^{2/m}, and by
von Neumann's trace inequality Z shares its singular vectors with the target T: T = Y without
bias, T = Y(I - 11^T/N) with a free bias (then b = (n_k/N)_k and the features are centred).
Each kept singular value sigma of T (the min(d, rank T) largest) becomes s = sigma t with t the
global minimiser over [0, 1] of
    g(t) = (1 - t)^2 + m beta t^{2/m},   beta = N Lam sigma^{2/m - 2},
and contributes sigma^2 g(t)/(2N) to f*; a dropped one contributes sigma^2/(2N). Balanced:
sigma = sqrt(n), beta = K (n lam_H prod lam_l)^{1/m}, f* = K min g/(2K) (no bias: an orthogonal
frame at every layer) or (K-1) min g/(2K) (free bias: a simplex ETF at every layer). Imbalanced
without bias, sigma_k = sqrt(n_k): class k keeps t_k > 0 iff beta_k < beta_glob (the imbalanced
deep targets of Dang et al., an orthogonal frame with class-dependent norms).

m = 2: t = (1 - beta)_+. m >= 3: g' = 2 t^{2/m-1} (beta - h(t)), h(t) = (1-t) t^{1-2/m}, which
rises from 0 to its maximum at t = (m-2)/(2m-2) and falls to 0 at t = 1. The candidates are
t = 0 and the largest root t_+ of h = beta (found by bisection); t_+ wins iff g(t_+) < 1, i.e.
beta < beta_glob = ((m-2)/(m-1))^{(m-2)/m}/(m-1): a first-order jump from 0 to (m-2)/(m-1).

ReLU (activation="relu", no bias, balanced, d >= K): the linear optimum above is entrywise
nonnegative at every layer, so ReLU is inactive there; it is the global optimum for depth 2
(Tirer & Bruna 2022) and for K = 2 at any depth (Sukenik, Mondelli & Lampert 2023). Beyond two
layers and two classes deep NC is not optimal (Sukenik, Lampert & Mondelli 2024): no closed form.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.models.extended import DeepParams, ExtendedUFM
from ufm.models.ufm import UFM
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum
from ufm.theory._roots import bisect

__all__ = ["beta_glob", "deep_min"]


def beta_glob(m: int) -> float:
    """The beta below which the nonzero point is the global minimiser of g (m >= 2 factors)."""
    if m == 2:
        return 1.0
    return ((m - 2) / (m - 1)) ** ((m - 2) / m) / (m - 1)


def deep_min(beta: float, m: int) -> tuple[float, float]:
    """(t*, g(t*)): the global minimiser over [0, 1] of g(t) = (1-t)^2 + m beta t^{2/m}, beta >= 0.

    At beta = beta_glob (a tie) the nonzero point is returned.
    """
    if m == 2:
        t = max(0.0, 1.0 - beta)
        return t, (1 - t) ** 2 + 2 * beta * t
    if beta == 0:
        return 1.0, 0.0
    p = 1 - 2 / m

    def h(t):
        return (1 - t) * t**p

    lo, hi = (m - 2) / (2 * m - 2), 1.0  # h decreases on [lo, hi] from its maximum to 0
    if h(lo) < beta:
        return 0.0, 1.0
    t = bisect(lambda t: beta - h(t), lo, hi)  # to adjacent floats
    g = (1 - t) ** 2 + m * beta * t ** (2 / m)
    return (t, g) if g <= 1.0 else (0.0, 1.0)


def _target_svd(model: ExtendedUFM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U (K, r), sigma (r,), Vt (r, N)): the top r = min(d, rank) singular triplets of the target,
    Y (no bias) or Y (I - 11^T/N) (free bias), sigma in descending order."""
    K, d, N = model.K, model.d, model.N
    counts = np.asarray(model.counts, dtype=float)
    Y = np.repeat(np.eye(K), model.counts, axis=1)  # (K, N)
    if not model.bias:  # Y = sum_k sqrt(n_k) e_k (1_{n_k}/sqrt(n_k))^T: nonnegative factors
        order = np.argsort(-counts, kind="stable")[: min(d, K)]
        U = np.eye(K)[:, order]
        sigma = np.sqrt(counts[order])
        Vt = Y[order] / sigma[:, None]
        return U, sigma, Vt
    T = Y - (counts / N)[:, None]  # Y (I - 11^T/N), T 1 = 0
    lam, U = np.linalg.eigh(np.diag(counts) - np.outer(counts, counts) / N)  # = T T^T
    r = min(d, K - 1)  # the smallest eigenvalue is 0 (eigenvector 1)
    lam, U = lam[::-1][:r], U[:, ::-1][:, :r]
    sigma = np.sqrt(lam)
    Vt = (U.T @ T) / sigma[:, None]
    return U, sigma, Vt


def _deep_linear(model: ExtendedUFM, lam_H: float, lams: list[float], source: str) -> Optimum:
    d, N, L = model.d, model.N, model.depth
    m = L + 1
    Lam = math.exp((math.log(lam_H) + sum(math.log(x) for x in lams)) / m)
    U, sigma, Vt = _target_svd(model)
    t = np.zeros_like(sigma)
    g = np.ones_like(sigma)
    for j, sj in enumerate(sigma):
        t[j], g[j] = deep_min(N * Lam * sj ** (2 / m - 2), m)
    s = sigma * t  # singular values of W_L ... W_1 H
    counts = np.asarray(model.counts, dtype=float)
    T_sq = N - (float(np.sum(counts**2)) / N if model.bias else 0.0)  # ||T||_F^2
    # kept sigma_j contribute sigma_j^2 g_j/(2N); the rest of ||T||^2 is left unfitted
    value = float((np.sum(sigma**2 * g) + T_sq - np.sum(sigma**2)) / (2 * N))
    # balanced factors (docs/theory.md §0.1): factor i has singular values sqrt(Lam/lam_i) s^{1/m}
    r = len(sigma)
    E = np.eye(d, r)

    def a(lam):
        return np.sqrt(Lam / lam) * s ** (1 / m)

    H = E @ (a(lam_H)[:, None] * Vt)
    Ws = [E @ np.diag(a(lam)) @ E.T for lam in lams[:-1]]
    Ws.append(U @ np.diag(a(lams[-1])) @ E.T)
    b = jnp.asarray(counts / N) if model.bias else None
    params = DeepParams(jnp.asarray(H), tuple(jnp.asarray(W) for W in Ws), b)
    return Optimum(value, params, source)


def _delegate_to_ufm(model: ExtendedUFM) -> Optimum:
    """depth = 1 is the regularised UFM: its closed forms (`ufm.theory.regularized`)."""
    ufm_model = UFM(
        K=model.K,
        d=model.d,
        n=model.n,
        loss=model.loss,
        lam_W=model.lam_Ws[0],
        lam_H=model.lam_H,
        lam_b=model.lam_b,
        bias=model.bias,
    )
    opt = optimum(ufm_model)
    return Optimum(opt.value, DeepParams(opt.params.H, (opt.params.W,), opt.params.b), opt.source)


@optimum.register
def _(model: ExtendedUFM) -> Optimum:
    K, d, L = model.K, model.d, model.depth
    lam_H = as_float(model.lam_H)
    lams = [as_float(x) for x in model.lam_Ws]
    if lam_H <= 0 or min(lams) <= 0:
        raise NoClosedForm(
            f"the closed forms need lam_H > 0 and every lam_Ws > 0 (got lam_H={lam_H}, "
            f"lam_Ws={tuple(lams)}): without weight decay the minimisers are not attained or "
            "not unique"
        )
    linear = model.activation == "linear" or L == 1
    free_bias = not model.bias or as_float(model.lam_b) == 0
    if model.loss != "mse" or not free_bias:
        if L == 1:
            return _delegate_to_ufm(model)
        if model.loss != "mse":
            raise NoClosedForm(
                "no closed form is known for deep UFMs with CE (depth >= 2): the Schatten "
                "quasi-norm penalty is not convex, and deep NC is not optimal in general "
                "(Garrod & Keating 2025, docs/theory.md §5)"
            )
        raise NoClosedForm(
            "deep MSE closed forms cover no bias or a free bias (lam_b = 0) only, got "
            f"lam_b={as_float(model.lam_b)}"
        )
    if not linear:
        if model.bias or not model.balanced or d < K:
            raise NoClosedForm(
                "the ReLU deep UFM optimum is known only without bias, with balanced counts and "
                f"d >= K (got bias={model.bias}, n={model.n}, d={d}, K={K}; docs/theory.md §5)"
            )
        if L > 2 and K > 2:
            raise NoClosedForm(
                f"deep NC is not optimal in the ReLU deep UFM beyond two layers and two classes "
                f"(Sukenik, Lampert & Mondelli 2024; got depth={L}, K={K}): lower-rank solutions "
                "can win, so the deep-linear value is only an upper bound (docs/theory.md §5)"
            )
        relu = "Tirer & Bruna 2022" if L == 2 else "Sukenik et al. 2023"  # depth 2, or K = 2
        return _deep_linear(model, lam_H, lams, f"Dang et al. 2023; {relu}")
    return _deep_linear(model, lam_H, lams, "Dang et al. 2023")
