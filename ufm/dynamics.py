"""Training dynamics of neural collapse: the locally elastic SDE (Zhang, Wang & Su 2021) and
gradient flow on unconstrained-features models, with the closed forms they are checked against.

Part A, the LE-SDE. Every sample has a feature X_k^i in R^p (the logits, p = K, in the paper);
with impacts alpha(t) (same class) and beta(t) (other classes),

    dX_k^i = (1/K) [(alpha - beta) G_k + beta sum_k' G_k'] dt + sigma dW_k^i,

where G_k is a class-mean surrogate of the negative loss gradient: "I" (X̄_k), "L" (P_k X̄_k, the
projection on u_k = e_k - 1/K) or "CE" (mean of e_k - softmax(X_k^i)). The critical point is
alpha = beta: above it the class means separate exponentially, at or below it they never do.

Part B, gradient flow dθ/dt = -∇f(θ) on any model with ``objective(params)`` (Euler or RK4), with
the closed forms of Mixon, Parshall & Pi (MSE with free bias, invariant subspace, logistic
eigenvalues) and of Ji et al. (unregularised CE without bias: margin law on the ETF manifold).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.scipy.special import expi

from ufm import geometry
from ufm.models._base import (
    Model,
    check_choice,
    check_int,
    check_real,
    choice_check,
    frobenius_sq,
    int_check,
    leaf,
    static,
)
from ufm.models.ufm import Params

__all__ = [
    "LESDE",
    "SDEResult",
    "FlowResult",
    "impacts",
    "impact_integrals",
    "mode_rates",
    "euler_factor",
    "simulate",
    "le_sweep",
    "le_etf_init",
    "le_ce_margin",
    "estimate_impacts",
    "ncc_accuracy",
    "argmax_accuracy",
    "separable",
    "gradient_flow",
    "flow_stats",
    "mixon_init",
    "mixon_eigenvalues",
    "ulpm_etf_init",
    "ulpm_margin_law",
    "ulpm_margin",
    "ulpm_max_normalized_margin",
]

SURROGATES = ("I", "L", "CE")
METHODS = ("euler", "rk4")


# ================================================================================================
# Part A: the locally elastic SDE
# ================================================================================================


class LESDE(Model):
    """The locally elastic SDE of Zhang, Wang & Su (2021), DYNAMICS.md A.3.

    Impacts are power laws alpha(t) = alpha (t + t0)^(-r), beta(t) = beta (t + t0)^(-r) (constant
    for r = 0, the default); the noise is additive and isotropic with constant sigma.

    Args:
      K: number of classes (>= 2).
      n: samples per class (>= 1).
      p: feature dimension; defaults to K. The "L" and "CE" surrogates act on logits: p = K.
      surrogate: "I" (G_k = X̄_k), "L" (G_k = P_k X̄_k) or "CE" (G_k = mean_i e_k - softmax(X_k^i)).
      alpha, beta: intra- and inter-class impact (any real). Pytree leaves, like sigma, r, t0.
      sigma: noise level (>= 0).
      r: power-law exponent of the impacts (>= 0).
      t0: time offset of the power law (> 0).
      center: remove the global mean after every step (exact for the "I" surrogate, whose
        between/within dynamics never see the global mean, and needed there in float64 once the
        global mode outgrows the noise by 1e16). Default: True for "I"; must be False otherwise.
    """

    K: int = static(default=3, check=int_check(2))
    n: int = static(default=50, check=int_check(1))
    p: int | None = None
    surrogate: str = static(default="I", check=choice_check(SURROGATES))
    alpha: float = leaf(default=0.5)
    beta: float = leaf(default=0.2)
    sigma: float = leaf(default=1.0, lower=0.0)
    r: float = leaf(default=0.0, lower=0.0)
    t0: float = leaf(default=1.0, lower=0.0, strict=True)
    center: bool | None = None

    def __check__(self):
        p = self.K if self.p is None else check_int("p", self.p, 1)
        if self.surrogate != "I" and p != self.K:
            raise ValueError(
                f"p must equal K={self.K} for surrogate={self.surrogate!r} (features are logits), "
                f"got p={p}"
            )
        center = self.surrogate == "I" if self.center is None else self.center
        if not isinstance(center, bool):
            raise ValueError(f"center must be True, False or None, got center={self.center!r}")
        if center and self.surrogate != "I":
            raise ValueError(
                f"center must be False for surrogate={self.surrogate!r}: centring is exact only "
                f"for the 'I' surrogate, got center={self.center!r}"
            )
        return {"p": p, "center": center}


class SDEResult(NamedTuple):
    """Output of `simulate`.

    x: final state (K, n, p). history: dict name -> (T, ...) statistics recorded every
    `record_every` steps (t, means, within, between, ncc_acc, argmax_acc, margin, etf_mode, loss,
    nc1; see `simulate`). diverged: True when the final state is not finite.
    """

    x: Array
    history: dict[str, Array]
    diverged: Array


def impacts(cfg: LESDE, t) -> tuple[Array, Array]:
    """(alpha(t), beta(t)) = (alpha, beta) * (t + t0)^(-r)."""
    decay = (t + cfg.t0) ** (-cfg.r)
    return cfg.alpha * decay, cfg.beta * decay


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
    """Growth rates of the linear LE-ODE modes for constant impacts (DYNAMICS.md A.4).

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


def _directions(K: int, dtype) -> Array:
    """Rows u_k = e_k - 1/K (K, K), the simplex directions in logit space."""
    return geometry.centering(K, dtype)


def _surrogate(cfg: LESDE, X: Array) -> Array:
    """G_k(X), (K, p): the class-mean surrogate of the negative loss gradient (A.3 table)."""
    K = cfg.K
    if cfg.surrogate == "I":
        return X.mean(1)
    if cfg.surrogate == "L":
        u = _directions(K, X.dtype)
        s = (u * X.mean(1)).sum(1) * (K / (K - 1))  # s_k = u_k . X̄_k / ||u_k||^2
        return s[:, None] * u
    return jnp.eye(K, dtype=X.dtype) - jax.nn.softmax(X, axis=-1).mean(1)  # "CE"


def ncc_accuracy(X: Array) -> Array:
    """Fraction of samples whose nearest class mean is their own class's: X (K, n, p) -> scalar."""
    K = X.shape[0]
    means = X.mean(1)
    d2 = ((X[:, :, None, :] - means[None, None, :, :]) ** 2).sum(-1)  # (K, n, K)
    return jnp.mean(jnp.argmin(d2, -1) == jnp.arange(K)[:, None])


def argmax_accuracy(X: Array) -> Array:
    """Fraction of samples whose largest logit is their class: X (K, n, K) -> scalar."""
    K = X.shape[0]
    if X.shape[-1] != K:
        raise ValueError(f"X must hold logits, shape (K, n, K); got X.shape={X.shape}")
    return jnp.mean(jnp.argmax(X, -1) == jnp.arange(K)[:, None])


def separable(X: Array) -> Array:
    """The separability test of DYNAMICS.md A.5: every sample is classified by its nearest class
    mean (NCC accuracy == 1), a sufficient condition for linear separability."""
    return ncc_accuracy(X) == 1.0


def _min_margin(Z: Array, labels: Array, K: int) -> Array:
    """min_i z_{i, y_i} - max_{j != y_i} z_{i, j} for logits Z (N, K)."""
    onehot = jax.nn.one_hot(labels, K, dtype=bool)
    correct = jnp.sum(jnp.where(onehot, Z, 0.0), -1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, Z), -1)
    return jnp.min(correct - other)


def _nc1(dev: Array, D: Array) -> Array:
    """tr(Sigma_W Sigma_B^+)/K from within-class deviations dev (N, p), centred means D (K, p).

    Sigma_B has rank <= K-1, so the pseudo-inverse keeps only its top min(K-1, p) eigenpairs (and
    of those, the ones above a float-precision floor): a relative rcond alone lets a rounding-level
    null eigenvalue through once the means are large (float32). NaN when Sigma_B = 0.
    """
    K, p = D.shape
    Sw = dev.T @ dev / dev.shape[0]
    lam, V = jnp.linalg.eigh(D.T @ D / K)  # ascending
    r = min(K - 1, p)
    lam, V = lam[p - r :], V[:, p - r :]
    keep = lam > 10 * p * jnp.finfo(lam.dtype).eps * lam[-1]
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    nc1 = jnp.sum(inv * jnp.sum(V * (Sw @ V), 0)) / K
    return jnp.where(lam[-1] > 0, nc1, jnp.nan)


def _le_stats(cfg: LESDE, X: Array, t: Array) -> dict[str, Array]:
    K, n, p = X.shape
    means = X.mean(1)
    dev = X - means[:, None, :]
    D = means - means.mean(0, keepdims=True)
    out = {
        "t": t,
        "means": means,
        "within": jnp.mean(dev * dev),
        "between": jnp.mean(D * D),
        "ncc_acc": ncc_accuracy(X),
        "nc1": _nc1(dev.reshape(K * n, p), D),
    }
    nan = jnp.full((), jnp.nan, X.dtype)
    if p == K:
        Z = X.reshape(K * n, K)
        labels = jnp.repeat(jnp.arange(K), n)
        u = _directions(K, X.dtype)
        logp = jax.nn.log_softmax(Z, -1)
        out["argmax_acc"] = argmax_accuracy(X)
        out["margin"] = _min_margin(Z, labels, K)
        out["etf_mode"] = jnp.mean((u * means).sum(1)) * (K / (K - 1))
        out["loss"] = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))
    else:
        out.update(argmax_acc=nan, margin=nan, etf_mode=nan, loss=nan)
    return out


@partial(jax.jit, static_argnames=("n_records",))
def _simulate(cfg, key, x0, h, n_records, record_every):
    # record_every is traced (a while loop inside each record block), so changing the step count
    # at a fixed number of records (e.g. halving h) reuses the compiled loop.
    K = cfg.K

    def step(_, carry):
        X, m, key = carry
        key, sub = jax.random.split(key)
        a, b = impacts(cfg, h * m)
        G = _surrogate(cfg, X)
        drift = ((a - b) * G + b * G.sum(0, keepdims=True)) / K
        noise = jax.random.normal(sub, X.shape, X.dtype)
        X = X + h * drift[:, None, :] + (cfg.sigma * jnp.sqrt(h)) * noise
        if cfg.center:
            X = X - X.mean((0, 1), keepdims=True)
        return X, m + 1, key

    def block(carry, _):
        carry = lax.fori_loop(0, record_every, step, carry)
        X, m, _ = carry
        return carry, _le_stats(cfg, X, h * m)

    init = (x0, jnp.zeros((), int), key)
    (X, _, _), history = lax.scan(block, init, None, length=n_records)
    return SDEResult(X, history, ~jnp.all(jnp.isfinite(X)))


def _strong(x) -> Array:
    """x as a strongly typed array (Python scalars are weakly typed under jit: mixing the two
    would compile the same loop twice)."""
    return jnp.asarray(x, dtype=jnp.result_type(x))


def _check_steps(steps, record_every) -> None:
    check_int("steps", steps, 1)
    check_int("record_every", record_every, 1)
    if steps % record_every:
        raise ValueError(
            f"steps must be a multiple of record_every={record_every}, got steps={steps}"
        )


def simulate(
    cfg: LESDE, key: Array, steps: int, h: float, record_every: int = 1, x0: Array | None = None
) -> SDEResult:
    """Euler–Maruyama for the LE-SDE, compiled (DYNAMICS.md A.8).

        X <- X + h b(X, t) + sigma sqrt(h) xi,   b_k = ((alpha-beta) G_k + beta sum_k' G_k')/K,

    then X <- X - mean(X) when cfg.center. Impacts are evaluated at the left end t = m h. One fresh
    normal draw per step from `key`, split every step. The loop is a `lax.scan` over record blocks,
    each a `fori_loop` of record_every steps: only the number of records is compiled in, so new
    values of h, record_every or the config's leaves reuse the compiled loop. `vmap` it over keys,
    over x0, or over configs (`le_sweep` does both for a grid of (alpha, beta)).

    Args:
      cfg: an `LESDE`.
      key: PRNG key of the noise.
      steps: number of Euler steps (a multiple of record_every); the horizon is T = steps * h.
      h: step size (> 0).
      record_every: statistics are recorded after every `record_every` steps (t = 0 is not).
      x0: initial features (K, n, p); zeros by default.

    Returns:
      SDEResult(x, history, diverged). history holds (T,) arrays: "t"; "within", the mean squared
      deviation from the class mean per coordinate (expected sigma^2 t (1 - 1/n)); "between", the
      mean squared deviation of class means from their mean per coordinate; "ncc_acc"; "nc1"
      (tr(Sigma_W Sigma_B^+)/K); and, when p = K, "argmax_acc", "margin" (min over samples of the
      correct logit minus the largest other), "etf_mode" (mean_k s_k, the coefficient of X̄_k on
      u_k) and "loss" (mean CE of the logits), NaN otherwise; "means" is (T, K, p).
    """
    if not isinstance(cfg, LESDE):
        raise ValueError(f"cfg must be an LESDE, got cfg={cfg!r}")
    _check_steps(steps, record_every)
    check_real("h", h, strict=True)
    shape = (cfg.K, cfg.n, cfg.p)
    if x0 is None:
        x0 = jnp.zeros(shape)
    elif jnp.shape(x0) != shape:
        raise ValueError(f"x0 must have shape (K, n, p)={shape}, got x0.shape={jnp.shape(x0)}")
    cfg, x0, h, every = jax.tree.map(_strong, (cfg, x0, h, record_every))
    return _simulate(cfg, key, x0, h, steps // record_every, every)


def le_sweep(
    cfg: LESDE,
    key: Array,
    alpha,
    beta,
    trials: int,
    steps: int,
    h: float,
    record_every: int = 1,
    x0: Array | None = None,
) -> SDEResult:
    """`simulate` vmapped over grid points (alpha[g], beta[g]) and over `trials` noise keys.

    The same keys serve every grid point (common random numbers), so differences between grid
    points are not noise. One compilation serves every grid of the same size and every h and
    record_every giving the same number of records.

    Returns:
      SDEResult whose arrays have leading axes (G, trials): x is (G, trials, K, n, p) and each
      history entry (G, trials, T, ...).
    """
    check_int("trials", trials, 1)
    alpha, beta = jnp.broadcast_arrays(jnp.atleast_1d(alpha), jnp.atleast_1d(beta))
    if alpha.ndim != 1:
        raise ValueError(
            f"alpha and beta must be scalars or 1-D grids, got alpha.shape={alpha.shape}"
        )
    _check_steps(steps, record_every)
    check_real("h", h, strict=True)
    shape = (cfg.K, cfg.n, cfg.p)
    x0 = jnp.zeros(shape) if x0 is None else jnp.asarray(x0)
    if x0.shape != shape:
        raise ValueError(f"x0 must have shape (K, n, p)={shape}, got x0.shape={x0.shape}")
    keys = jax.random.split(key, trials)
    cfg, alpha, beta, x0, h, every = jax.tree.map(_strong, (cfg, alpha, beta, x0, h, record_every))
    return _le_sweep(cfg, keys, alpha, beta, x0, h, steps // record_every, every)


@partial(jax.jit, static_argnames=("n_records",))
def _le_sweep(cfg, keys, alpha, beta, x0, h, n_records, record_every):
    def one(a, b, k):
        c = dataclasses.replace(cfg, alpha=a, beta=b)
        return _simulate(c, k, x0, h, n_records, record_every)

    return jax.vmap(jax.vmap(one, (None, None, 0)), (0, 0, None))(alpha, beta, keys)


def le_etf_init(cfg: LESDE, s0) -> Array:
    """A state on the simplex-ETF manifold of logit space: X_k^i = s0 u_k, shape (K, n, K)."""
    if cfg.p != cfg.K:
        raise ValueError(f"cfg.p must equal K={cfg.K} on the logit ETF manifold, got p={cfg.p}")
    u = _directions(cfg.K, jnp.result_type(float))
    return jnp.broadcast_to((s0 * u)[:, None, :], (cfg.K, cfg.n, cfg.K))


def _invert_increasing(F: Callable, y, lo, hi, max_iter: int = 500) -> Array:
    """x with F(x) = y for increasing F, elementwise: widen [lo, hi] geometrically until it
    brackets y, then bisect to machine precision. One loop with one call of F (on lo, hi and the
    midpoint stacked), which keeps the compiled code small when F is expensive (Ei)."""
    y, lo, hi = jnp.broadcast_arrays(y, lo, hi)
    tol = 4 * jnp.finfo(y.dtype).eps

    def cond(c):
        lo, hi, i = c
        return (i < max_iter) & jnp.any(hi - lo > tol * (1.0 + jnp.abs(lo)))

    def body(c):
        lo, hi, i = c
        mid = 0.5 * (lo + hi)
        f = F(jnp.stack([lo, hi, mid]))
        w = hi - lo
        left, right, up = f[0] > y, f[1] < y, f[2] < y  # root < lo, root > hi, root > mid
        new_lo = jnp.where(left, lo - 2 * w, jnp.where(right, hi, jnp.where(up, mid, lo)))
        new_hi = jnp.where(left, lo, jnp.where(right, hi + 2 * w, jnp.where(up, hi, mid)))
        return new_lo, new_hi, i + 1

    lo, hi, _ = lax.while_loop(cond, body, (lo, hi, 0))
    return 0.5 * (lo + hi)


def le_ce_margin(cfg: LESDE, s0, t) -> Array:
    """Margin s(t) of the CE surrogate on the ETF manifold, sigma = 0 (DYNAMICS.md A.4, eq. A3):

        e^s + (K-1) s = (A(t) - B(t)) + e^{s0} + (K-1) s0.

    Solved by bisection (the left side increases in s); works for time-varying impacts. Jitted;
    s0 and t broadcast.
    """
    return _le_ce_margin(*jax.tree.map(_strong, (cfg, s0, t)))


@jax.jit
def _le_ce_margin(cfg: LESDE, s0, t) -> Array:
    K = cfg.K
    A, B = impact_integrals(cfg, t)
    s0 = jnp.asarray(s0, jnp.result_type(float))
    y = A - B + jnp.exp(s0) + (K - 1) * s0
    return _invert_increasing(lambda s: jnp.exp(s) + (K - 1) * s, y, s0 - 1.0, s0 + 1.0)


@jax.jit
def estimate_impacts(means: Array, means0: Array) -> tuple[Array, Array]:
    """The authors' I-model estimators (Â(t), B̂(t)) of A = int alpha, B = int beta (A.4).

    With g = X̄(t)/X̄(0) (global mean) and h_k = (X̄_k - X̄)(t)/(X̄_k - X̄)(0), coordinate by
    coordinate, log g = (A + (K-1)B)/K and log h = (A - B)/K under (A2), so

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


# ================================================================================================
# Part B: gradient flow on unconstrained-features models
# ================================================================================================


class FlowResult(NamedTuple):
    """Output of `gradient_flow`: final params, history dict name -> (T, ...) arrays (with "t" and
    "objective" always), and diverged (True when the final objective is not finite)."""

    params: Any
    history: dict[str, Array]
    diverged: Array


def flow_stats(model, params, params0=None) -> dict[str, Array]:
    """Default statistics of `gradient_flow` for models with W (K, d), H (d, N) and labels.

    Returns dict (empty for models without W, H, labels) with
      loss: model.data_loss(params) when the model has it;
      margin: min over samples of the correct logit minus the largest other;
      normalized_margin: margin / (½ (||W||² + ||H||²)), the ULPM's normalised margin (bias not
        counted), at most 1/((K-1) sqrt(n)) for balanced bias-free models (Ji et al.);
      nc1 = tr(Sigma_W Sigma_B^+)/K; nc2 = ||M̄ᵀM̄/||·|| - E_K|| (centred class means M̄);
      nc2_W = ||WWᵀ/||·|| - E_K||, E_K = P/sqrt(K-1); nc3 = ||Wᵀ/||W|| - M̄/||M̄|| ||² (Papyan et
      al.), the names and conventions of `ufm.metrics` (THEORY.md §8);
      balance_drift: ||(WᵀW - HHᵀ) - (W0ᵀW0 - H0H0ᵀ)||_F, conserved (0) by the gradient flow of
        bias-free, unregularised models (when params0 is given).
    """
    out = {}
    if hasattr(model, "data_loss"):
        out["loss"] = model.data_loss(params)
    W, H = getattr(params, "W", None), getattr(params, "H", None)
    if W is None or H is None or not hasattr(model, "labels"):
        return out
    K, labels = W.shape[0], model.labels
    Z = model.logits(params) if hasattr(model, "logits") else H.T @ W.T
    out["margin"] = _min_margin(Z, labels, K)
    out["normalized_margin"] = out["margin"] / (0.5 * (frobenius_sq(W) + frobenius_sq(H)))
    Y = jax.nn.one_hot(labels, K, dtype=H.dtype)  # (N, K)
    mu = (H @ Y) / Y.sum(0)[None, :]  # (d, K)
    Mbar = mu - H.mean(1, keepdims=True)
    dev = H - mu @ Y.T
    E = geometry.etf_gram(K, H.dtype)

    def gap(G):
        return jnp.linalg.norm(G / jnp.linalg.norm(G) - E)

    out["nc1"] = _nc1(dev.T, Mbar.T)
    out["nc2"] = gap(Mbar.T @ Mbar)
    out["nc2_W"] = gap(W @ W.T)
    out["nc3"] = frobenius_sq(W.T / jnp.linalg.norm(W) - Mbar / jnp.linalg.norm(Mbar))
    if params0 is not None:
        C0 = params0.W.T @ params0.W - params0.H @ params0.H.T
        out["balance_drift"] = jnp.linalg.norm(W.T @ W - H @ H.T - C0)
    return out


@partial(jax.jit, static_argnames=("n_records", "method", "stats"))
def _flow(model, params0, dt, n_records, record_every, method, stats):
    grad = jax.grad(model.objective)

    def axpy(p, a, k):
        return jax.tree.map(lambda x, y: x + a * y, p, k)

    def step(_, p):
        k1 = grad(p)
        if method == "euler":
            return axpy(p, -dt, k1)
        k2 = grad(axpy(p, -dt / 2, k1))
        k3 = grad(axpy(p, -dt / 2, k2))
        k4 = grad(axpy(p, -dt, k3))
        return jax.tree.map(
            lambda x, a, b, c, d: x - (dt / 6) * (a + 2 * b + 2 * c + d), p, k1, k2, k3, k4
        )

    def block(carry, _):
        p, m = carry
        p = lax.fori_loop(0, record_every, step, p)
        m = m + record_every
        record = {"t": dt * m, "objective": model.objective(p), **stats(model, p, params0)}
        return (p, m), record

    (p, _), history = lax.scan(block, (params0, jnp.zeros((), int)), None, n_records)
    return FlowResult(p, history, ~jnp.isfinite(model.objective(p)))


def gradient_flow(
    model,
    params0,
    t: float,
    dt: float,
    record_every: int = 1,
    method: str = "euler",
    stats: Callable | None = None,
) -> FlowResult:
    """Integrate the gradient flow dθ/dt = -∇ model.objective(θ) from params0 up to time t.

    Euler (θ <- θ - dt ∇f, i.e. full-batch gradient descent with learning rate dt; error O(dt))
    or classical RK4 (error O(dt^4)): a `lax.scan` over record blocks, each a `fori_loop` of
    record_every steps, so only the number of records is compiled in. Works for any model with
    `objective(params)` on a params pytree; jitted, and vmappable over params0 and model leaves.
    Time is that of the model's objective: ufm's losses are means over N = sum_k n_k samples, so a
    flow stated for a summed loss runs N times slower here.

    Args:
      model: e.g. `ufm.UFM(K, d, n, loss="mse", lam_W=0., lam_H=0., lam_b=0.)`.
      params0: initial parameters (a pytree; `ufm.Params` for the UFM).
      t: final time (> 0), a multiple of dt.
      dt: step (> 0).
      record_every: statistics are recorded every `record_every` steps (not at t = 0).
      method: "euler" or "rk4".
      stats: `stats(model, params, params0) -> dict` of arrays to record; `flow_stats` by default.
        Must be hashable (a module-level function): it is a static argument of the compiled loop.
    Returns:
      FlowResult(params, history, diverged); history holds "t", "objective" and the stats.
    """
    if not hasattr(model, "objective"):
        raise ValueError(f"model must have an objective(params) method, got model={model!r}")
    check_choice("method", method, METHODS)
    dt = float(check_real("dt", dt, strict=True))
    t = float(check_real("t", t, strict=True))
    steps = int(round(t / dt))
    if steps < 1 or abs(steps * dt - t) > 1e-9 * t:
        raise ValueError(f"t must be a positive multiple of dt={dt}, got t={t}")
    _check_steps(steps, record_every)
    n_records = steps // record_every
    dt, every = _strong(dt), _strong(record_every)
    return _flow(model, params0, dt, n_records, every, method, stats or flow_stats)


def _check_ufm(model, loss: str, bias: bool, d_min: int, what: str) -> None:
    ok = (
        getattr(model, "loss", None) == loss
        and getattr(model, "bias", None) is bias
        and getattr(model, "balanced", False)
        and getattr(model, "d", 0) >= d_min
    )
    if not ok:
        raise ValueError(
            f"model must be a balanced ufm.UFM with loss={loss!r}, bias={bias} and d >= {d_min} "
            f"for {what}, got model={model!r}"
        )


def mixon_init(model, key: Array, scale: float = 1.0):
    """A random start in Mixon, Parshall & Pi's invariant subspace S (DYNAMICS.md B.1):

        1ᵀW = 0,  h_{k,i} = w_k / sqrt(n),  b = 1/K.

    W = scale * (G - mean of the rows of G) with G i.i.d. N(0, 1) of shape (K, d). For the MSE UFM
    with free bias and no regularisation, gradient flow keeps S invariant and the eigenvalues of WWᵀ
    follow `mixon_eigenvalues`.
    """
    _check_ufm(model, "mse", True, model.K - 1, "the invariant subspace")
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

    the logistic law dQ/dt = 2 sqrt(n) Q - 2 Q² of DYNAMICS.md B.1 with its time divided by N = Kn.
    A zero eigenvalue (the 1-direction) stays 0; the others tend to sqrt(n).
    """
    rn = np.sqrt(n)
    e = jnp.exp(-2.0 * rn * jnp.asarray(t) / (K * n))
    return rn * lam0 / (lam0 + (rn - lam0) * e)


def ulpm_etf_init(model, q0, key: Array | None = None):
    """A start on the balanced simplex-ETF manifold of the unregularised, bias-free CE UFM (B.3):

        W = a Mᵀ,  h_{k,i} = b m_k,  a² = n b²,  min margin q0 = a b K/(K-1),

    with M (d, K) a simplex ETF (`geometry.simplex_etf`, random from key if given). Gradient flow
    stays on the manifold and q follows `ulpm_margin`.
    """
    _check_ufm(model, "ce", False, model.K - 1, "the ETF manifold")
    K, n = model.K, model.n
    check_real("q0", q0, strict=True)
    M = geometry.simplex_etf(K, model.d, key=key, dtype=jnp.result_type(float))
    b = jnp.sqrt(q0 * (K - 1) / (K * np.sqrt(n)))
    a = np.sqrt(n) * b
    return Params(a * M.T, b * jnp.repeat(M, n, axis=1), None)


@partial(jax.jit, static_argnames=("n", "K"))
def ulpm_margin_law(q, n: int, K: int) -> Array:
    """Ei(q) + (K-1) log q, which gradient flow on the ETF manifold advances at rate 2/sqrt(n).

    Along the flow, Ei(q(t)) + (K-1) log q(t) = 2t/sqrt(n) + const (ufm's mean CE; Ji et al., B.3).
    """
    return expi(q) + (K - 1) * jnp.log(q)


def ulpm_margin(t, q0, n: int, K: int) -> Array:
    """Margin q(t) on the ETF manifold from q(0) = q0 > 0: inverts `ulpm_margin_law`.

    q(t) = log t + log log t + O(1) for large t; the loss is about (K-1) e^{-q}. Jitted (Ei is
    costly to compile); t and q0 broadcast.
    """
    return _ulpm_margin(_strong(t), _strong(q0), n, K)


@partial(jax.jit, static_argnames=("n", "K"))
def _ulpm_margin(t, q0, n: int, K: int) -> Array:
    q0 = jnp.asarray(q0, jnp.result_type(float))
    y = ulpm_margin_law(q0, n, K) + 2.0 * jnp.asarray(t) / np.sqrt(n)
    u0 = jnp.log(q0)  # solve in log q: Ei(e^u) + (K-1) u increases on all of R
    u = _invert_increasing(lambda u: expi(jnp.exp(u)) + (K - 1) * u, y, u0 - 1.0, u0 + 1.0)
    return jnp.exp(u)


def ulpm_max_normalized_margin(n: int, K: int) -> float:
    """gamma* = 1/((K-1) sqrt(n)): the largest min-margin / (½(||W||² + ||H||²)) of the balanced,
    bias-free UFM, reached exactly by neural collapse (Ji et al.; DYNAMICS.md B.3)."""
    return 1.0 / ((K - 1) * np.sqrt(n))
