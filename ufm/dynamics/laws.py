"""Closed forms of neural-collapse dynamics, and the starts on which they hold exactly.

LE-ODE (the LE-SDE without noise; docs/theory.md §13.4): impact integrals, mode rates, Euler
factors, the CE margin law on the simplex-ETF manifold, and the authors' impact estimators.
Gradient flow on the UFM (§14): Mixon, Parshall & Pi's logistic eigenvalues on their invariant
subspace (MSE with free bias, §14.1) and Ji et al.'s margin law on the ETF manifold (CE without
bias, §14.3), and the law of the signal-to-noise singular values on Han, Papyan & Donoho's central
path (MSE, §14.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import expi

from ufm import geometry
from ufm.dynamics.le_sde import LESDE
from ufm.models._base import check_real
from ufm.models.ufm import Params
from ufm.theory._roots import bisect, bracket

__all__ = [
    "central_path_law",
    "central_path_loss",
    "central_path_omega",
    "estimate_impacts",
    "euler_factor",
    "impact_integrals",
    "le_ce_margin",
    "le_etf_init",
    "mixon_eigenvalues",
    "mixon_init",
    "mode_rates",
    "ulpm_etf_init",
    "ulpm_margin",
    "ulpm_margin_law",
    "ulpm_max_normalized_margin",
]


# --- the LE-ODE ---------------------------------------------------------------------------------


def _expm1_over_x(x):
    """expm1(x)/x, continuous (= 1) at x = 0."""
    small = jnp.abs(x) < 1e-8
    xs = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 + 0.5 * x, jnp.expm1(xs) / xs)


def impact_integrals(cfg: LESDE, t) -> tuple[Array, Array]:
    """(A(t), B(t)) = integrals over [0, t] of alpha(s) and beta(s).

    int_0^t (s + t0)^(-r) ds = t0^(1-r) L expm1((1-r) L)/((1-r) L) with L = log(1 + t/t0): this is
    t for r = 0 and log(1 + t/t0) for r = 1, with no branch (vmappable over r).
    """
    L = jnp.log1p(t / cfg.t0)
    c = 1.0 - cfg.r
    integral = jnp.exp(c * jnp.log(cfg.t0)) * L * _expm1_over_x(c * L)
    return cfg.alpha * integral, cfg.beta * integral


def mode_rates(cfg: LESDE) -> dict[str, Array]:
    """Growth rates of the linear LE-ODE modes for constant impacts (docs/theory.md §13.4).

    Returns dict: "centered" (alpha - beta)/K, the I-model centred class means and the L-model ETF
    mode; "global" (alpha + (K-1) beta)/K, the I-model global mean; "antisymmetric"
    (alpha + beta/(K-1))/K, the L-model modes with sum_k s_k = 0.
    """
    K = cfg.K
    return {
        "centered": (cfg.alpha - cfg.beta) / K,
        "global": (cfg.alpha + (K - 1) * cfg.beta) / K,
        "antisymmetric": (cfg.alpha + cfg.beta / (K - 1)) / K,
    }


def euler_factor(rate, h, m) -> Array:
    """(1 + h rate)^m: what Euler makes of exp(rate t) after m steps of size h (t = m h)."""
    return (1.0 + h * rate) ** m


def le_etf_init(cfg: LESDE, s0) -> Array:
    """A state on the simplex-ETF manifold of logit space: X_k^i = s0 u_k, shape (K, n, K)."""
    if cfg.p != cfg.K:
        raise ValueError(f"cfg.p must equal K={cfg.K} on the logit ETF manifold, got p={cfg.p}")
    u = geometry.centering(cfg.K, jnp.result_type(float))
    return jnp.broadcast_to((s0 * u)[:, None, :], (cfg.K, cfg.n, cfg.K))


def _solve(f: Callable[[float], float], lo: float, hi: float, log: bool) -> float:
    """The root of an increasing f (`ufm.theory._roots`), from a start [lo, hi] (0 < lo < hi
    when log): lo moves down until f(lo) < 0 (halved when log, else by 2 (hi - lo)), then
    `bracket` grows hi and `bisect` halves to adjacent floats (geometric midpoints when log)."""
    while f(lo) >= 0:
        lo = lo / 2 if log else lo - 2 * (hi - lo)
    if not log:
        while f(hi) < 0:
            lo, hi = hi, hi + 2 * (hi - lo)
        return bisect(f, lo, hi)
    return bisect(f, *bracket(f, lo, hi), log=True)


def _elementwise(solve: Callable[..., float], *args) -> Array:
    """solve(*floats) over the broadcast of args, as an array of the default float dtype."""
    args = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in args))
    out = [solve(*(float(a) for a in xs)) for xs in zip(*(a.ravel() for a in args), strict=True)]
    return jnp.asarray(np.reshape(out, args[0].shape), jnp.result_type(float))


def le_ce_margin(cfg: LESDE, s0, t) -> Array:
    """Margin s(t) of the CE surrogate on the ETF manifold, sigma = 0 (docs/theory.md §13.4):

        e^s + (K-1) s = (A(t) - B(t)) + e^{s0} + (K-1) s0.

    The left side increases in s; its root is found by `ufm.theory._roots` in Python floats
    (not traceable), to adjacent floats. Works for time-varying impacts; s0 and t broadcast.
    """
    K = cfg.K
    A, B = impact_integrals(cfg, jnp.asarray(t, jnp.result_type(float)))

    def margin(s0: float, gap: float) -> float:
        y = gap + math.exp(s0) + (K - 1) * s0
        return _solve(lambda s: math.exp(s) + (K - 1) * s - y, s0 - 1.0, s0 + 1.0, log=False)

    return _elementwise(margin, s0, A - B)


@jax.jit
def estimate_impacts(means: Array, means0: Array) -> tuple[Array, Array]:
    """The authors' I-model estimators (Â(t), B̂(t)) of A = int alpha, B = int beta (§13.4).

    With g = X̄(t)/X̄(0) (global mean) and h_k = (X̄_k - X̄)(t)/(X̄_k - X̄)(0), coordinate by
    coordinate, log g = (A + (K-1)B)/K and log h = (A - B)/K under the closed form, so

        Â = log g + (K-1) log h,   B̂ = log g - log h,

    with the logs of |g| and |h_k| averaged over coordinates (and classes). Needs uncentred means
    (simulate with center=False).

    Args:
      means: class means (..., K, p), e.g. history["means"].
      means0: initial class means (K, p).
    Returns:
      (Â, B̂), each of shape means.shape[:-2].
    """
    K = means0.shape[0]
    lead = tuple(range(means.ndim - 2))
    c0 = jnp.expand_dims(means0.mean(0), lead)
    ck = jnp.expand_dims(means0 - means0.mean(0, keepdims=True), lead)
    g = means.mean(-2) / c0
    hk = (means - means.mean(-2, keepdims=True)) / ck
    log_g = jnp.log(jnp.abs(g)).mean(-1)
    log_h = jnp.log(jnp.abs(hk)).mean((-2, -1))
    return log_g + (K - 1) * log_h, log_g - log_h


# --- gradient flow on the UFM -------------------------------------------------------------------


def check_ufm(model, what: str, **want) -> None:
    """ValueError unless `model` is a balanced ufm.UFM with d >= K-1 and the given attribute
    values (e.g. loss="mse", bias=True)."""
    d_min = getattr(model, "K", np.inf) - 1
    ok = getattr(model, "balanced", False) and getattr(model, "d", 0) >= d_min
    ok = ok and all(getattr(model, k, None) == v for k, v in want.items())
    if not ok:
        spec = ", ".join(f"{k}={v!r}" for k, v in want.items())
        raise ValueError(
            f"model must be a balanced ufm.UFM with {spec} and d >= K-1 for {what}, "
            f"got model={model!r}"
        )


def mixon_init(model, key: Array, scale: float = 1.0):
    """A random start in Mixon, Parshall & Pi's invariant subspace S (docs/theory.md §14.1):

        1ᵀW = 0,  h_{k,i} = w_k / sqrt(n),  b = 1/K.

    W = scale * (G - mean of the rows of G) with G i.i.d. N(0, 1) of shape (K, d). For the MSE UFM
    with free bias and no regularisation, gradient flow keeps S invariant and the eigenvalues of WWᵀ
    follow `mixon_eigenvalues`.
    """
    check_ufm(model, "the invariant subspace", loss="mse", bias=True)
    check_real("scale", scale, strict=True)
    G = scale * jax.random.normal(key, (model.K, model.d))
    W = G - G.mean(0, keepdims=True)
    H = jnp.repeat(W.T, model.n, axis=1) / np.sqrt(model.n)
    b = jnp.full((model.K,), 1.0 / model.K, W.dtype)
    return Params(W, H, b)


@partial(jax.jit, static_argnames=("n", "K"))
def mixon_eigenvalues(lam0, t, n: int, K: int) -> Array:
    """Eigenvalues of WWᵀ on S at time t for ufm's mean MSE (1/(2Kn))||WH + b1ᵀ - Y||²:

        lam(t) = sqrt(n) lam0 / (lam0 + (sqrt(n) - lam0) exp(-2 sqrt(n) t / (K n))),

    the logistic law dQ/dt = 2 sqrt(n) Q - 2 Q² of docs/theory.md §14.1 (Mixon, Parshall & Pi
    2020) with its time divided by N = Kn. A zero eigenvalue (the 1-direction) stays 0; the others
    tend to sqrt(n).
    """
    rn = np.sqrt(n)
    e = jnp.exp(-2.0 * rn * jnp.asarray(t) / (K * n))
    return rn * lam0 / (lam0 + (rn - lam0) * e)


def ulpm_etf_init(model, q0, key: Array | None = None):
    """A start on the balanced simplex-ETF manifold of the unregularised, bias-free CE UFM (§14.3):

        W = a Mᵀ,  h_{k,i} = b m_k,  a² = n b²,  min margin q0 = a b K/(K-1),

    with M (d, K) a simplex ETF (`geometry.simplex_etf`, random from key if given). Gradient flow
    stays on the manifold and q follows `ulpm_margin`.
    """
    check_ufm(model, "the ETF manifold", loss="ce", bias=False)
    K, n = model.K, model.n
    check_real("q0", q0, strict=True)
    M = geometry.simplex_etf(K, model.d, key=key, dtype=jnp.result_type(float))
    b = jnp.sqrt(q0 * (K - 1) / (K * np.sqrt(n)))
    a = np.sqrt(n) * b
    return Params(a * M.T, b * jnp.repeat(M, n, axis=1), None)


@partial(jax.jit, static_argnames=("n", "K"))
def ulpm_margin_law(q, n: int, K: int) -> Array:
    """Ei(q) + (K-1) log q, which gradient flow on the ETF manifold advances at rate 2/sqrt(n).

    Along the flow, Ei(q(t)) + (K-1) log q(t) = 2t/sqrt(n) + const (ufm's mean CE; Ji et al.
    2022, docs/theory.md §14.3).
    """
    return expi(q) + (K - 1) * jnp.log(q)


def ulpm_margin(t, q0, n: int, K: int) -> Array:
    """Margin q(t) on the ETF manifold from q(0) = q0 > 0: inverts `ulpm_margin_law`.

    q(t) = log t + log log t + O(1) for large t; the loss is about (K-1) e^{-q}. The root is found
    by `ufm.theory._roots` (bisection in log q, Ei increases for q > 0) in Python floats (not
    traceable); t and q0 broadcast.
    """

    def margin(t: float, q0: float) -> float:
        y = float(ulpm_margin_law(q0, n, K)) + 2.0 * t / math.sqrt(n)
        return _solve(lambda q: float(ulpm_margin_law(q, n, K)) - y, q0 / 2, q0, log=True)

    return _elementwise(margin, t, q0)


def ulpm_max_normalized_margin(n: int, K: int) -> float:
    """gamma* = 1/((K-1) sqrt(n)): the largest min-margin / (½(||W||² + ||H||²)) of the balanced,
    bias-free UFM, reached exactly by neural collapse (Ji et al. 2022; docs/theory.md §14.3)."""
    return 1.0 / ((K - 1) * np.sqrt(n))


# --- the central path (MSE, Han, Papyan & Donoho) -----------------------------------------------


def central_path_loss(omega, K: int) -> Array:
    """The MSE-UFM objective on the central path, (1/(2K)) sum_j 1/(1 + omega_j^2), from the
    signal-to-noise singular values omega (..., K-1) (docs/theory.md §14.2)."""
    return jnp.sum(1.0 / (1.0 + omega**2), -1) / (2 * K)


@jax.jit
def central_path_law(omega) -> Array:
    """F(omega) = log omega + omega^2 + omega^4/4, which the renormalised central-path flow
    advances at the constant rate 1/(K^2 n (1 + lam_W)) (`ufm.dynamics.central_path`, §14.2).

    From omega' = omega/(K^2 n (1 + lam_W) (1 + omega^2)^2): F'(omega) = (1 + omega^2)^2/omega.
    """
    return jnp.log(omega) + omega**2 + omega**4 / 4


def central_path_omega(t, omega0, K: int, n: int, lam_W=0.0) -> Array:
    """omega_j(t) on the central path from omega_j(0) = omega0 > 0: inverts `central_path_law`,

        F(omega(t)) = F(omega0) + t/(K^2 n (1 + lam_W)),

    so omega ~ (4t/(K^2 n (1 + lam_W)))^{1/4} and NC1 = sum_j 1/((1 + lam_W) omega_j^2)/K tends
    to (K-1) sqrt(n)/(2 sqrt((1 + lam_W) t)). The root is found by `ufm.theory._roots`
    (bisection in log omega) in Python floats (not traceable); t, omega0 and lam_W broadcast.
    """

    def omega(t: float, w0: float, lam: float) -> float:
        y = float(central_path_law(w0)) + t / (K**2 * n * (1.0 + lam))
        return _solve(lambda w: float(central_path_law(w)) - y, w0 / 2, w0, log=True)

    return _elementwise(omega, t, omega0, lam_W)
