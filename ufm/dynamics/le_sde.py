"""The locally elastic SDE of Zhang, Wang & Su (NeurIPS 2021; docs/theory.md §13): the model, its
Euler–Maruyama simulation and a compiled sweep over the impacts.

Every sample has a feature X_k^i in R^p (the logits, p = K, in the paper). With impacts alpha(t)
(same class) and beta(t) (other classes),

    dX_k^i = (1/K) [(alpha - beta) G_k + beta sum_k' G_k'] dt + sigma dW_k^i,

where G_k is a class-mean surrogate of the negative loss gradient: "I" (X̄_k), "L" (P_k X̄_k, the
projection on u_k = e_k - 1/K) or "CE" (mean of e_k - softmax(X_k^i)). The critical point is
alpha = beta: above it the class means separate exponentially, at or below it they never do.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax

from ufm.metrics.dynamics import le_metrics, simplex_coefficients
from ufm.models._base import Model, check_int, check_real, choice_check, int_check, leaf, static

__all__ = ["LESDE", "SDEResult", "impacts", "simulate", "le_sweep"]

SURROGATES = ("I", "L", "CE")


class LESDE(Model):
    """The locally elastic SDE of Zhang, Wang & Su (2021), docs/theory.md §13.3.

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
    `record_every` steps ("t" and those of `ufm.metrics.dynamics.le_metrics`). diverged: True when
    the final state is not finite.
    """

    x: Array
    history: dict[str, Array]
    diverged: Array


def impacts(cfg: LESDE, t) -> tuple[Array, Array]:
    """(alpha(t), beta(t)) = (alpha, beta) * (t + t0)^(-r)."""
    decay = (t + cfg.t0) ** (-cfg.r)
    return cfg.alpha * decay, cfg.beta * decay


def _surrogate(cfg: LESDE, X: Array) -> Array:
    """G_k(X), (K, p): the class-mean surrogate of the negative loss gradient (§13.3)."""
    K = cfg.K
    if cfg.surrogate == "I":
        return X.mean(1)
    if cfg.surrogate == "L":
        u = jnp.eye(K, dtype=X.dtype) - 1.0 / K  # rows u_k = e_k - 1/K
        return simplex_coefficients(X.mean(1))[:, None] * u
    return jnp.eye(K, dtype=X.dtype) - jax.nn.softmax(X, axis=-1).mean(1)  # "CE"


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
        return carry, {"t": h * m, **le_metrics(X)}

    init = (x0, jnp.zeros((), int), key)
    (X, _, _), history = lax.scan(block, init, None, length=n_records)
    return SDEResult(X, history, ~jnp.all(jnp.isfinite(X)))


def strong(x) -> Array:
    """x as a strongly typed array (Python scalars are weakly typed under jit: mixing the two
    would compile the same loop twice)."""
    return jnp.asarray(x, dtype=jnp.result_type(x))


def check_blocks(steps, record_every) -> None:
    """steps and record_every positive integers, steps a multiple of record_every: a fixed-step
    integrator records in whole blocks of record_every steps (`ufm.solve.check_steps` is the
    rule of the optimisation loop, whose last record may come early)."""
    check_int("steps", steps, 1)
    check_int("record_every", record_every, 1)
    if steps % record_every:
        raise ValueError(
            f"steps must be a multiple of record_every={record_every}, got steps={steps}"
        )


def _check_x0(cfg: LESDE, x0) -> Array:
    shape = (cfg.K, cfg.n, cfg.p)
    x0 = jnp.zeros(shape) if x0 is None else jnp.asarray(x0)
    if x0.shape != shape:
        raise ValueError(f"x0 must have shape (K, n, p)={shape}, got x0.shape={x0.shape}")
    return x0


def simulate(
    cfg: LESDE, key: Array, steps: int, h: float, record_every: int = 1, x0: Array | None = None
) -> SDEResult:
    """Euler–Maruyama for the LE-SDE, compiled (docs/theory.md §13.8).

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
    check_blocks(steps, record_every)
    check_real("h", h, strict=True)
    x0 = _check_x0(cfg, x0)
    cfg, x0, h, every = jax.tree.map(strong, (cfg, x0, h, record_every))
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
    check_blocks(steps, record_every)
    check_real("h", h, strict=True)
    x0 = _check_x0(cfg, x0)
    keys = jax.random.split(key, trials)
    cfg, alpha, beta, x0, h, every = jax.tree.map(strong, (cfg, alpha, beta, x0, h, record_every))
    return _le_sweep(cfg, keys, alpha, beta, x0, h, steps // record_every, every)


@partial(jax.jit, static_argnames=("n_records",))
def _le_sweep(cfg, keys, alpha, beta, x0, h, n_records, record_every):
    def one(a, b, k):
        c = dataclasses.replace(cfg, alpha=a, beta=b)
        return _simulate(c, k, x0, h, n_records, record_every)

    return jax.vmap(jax.vmap(one, (None, None, 0)), (0, 0, None))(alpha, beta, keys)
