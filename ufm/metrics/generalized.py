"""Metrics for more classes than dimensions (K > d+1), where the simplex ETF does not exist and
generalized neural collapse (Jiang et al., ICML 2024; docs/theory.md §7) replaces it: how well
the classifiers are spread on the sphere (one-vs-rest distance, hyperspherical energy) and how
well features align.

All functions are pure, jit- and vmap-able; classifier rows are normalised to the unit sphere
first (the geometry of a softmax code is scale-free). Exact values for the regular K-gon and the
cross-polytope are in `ufm.theory.generalized`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.geometry import _unit
from ufm.metrics.nc import class_stats, trace_ratio

__all__ = [
    "gnc_metrics",
    "hyperspherical_energy",
    "min_pairwise_distance",
    "one_vs_rest_distances",
]


def _unit_rows(W: Array) -> Array:
    return W / jnp.linalg.norm(W, axis=-1, keepdims=True)


def _project_simplex(v: Array) -> Array:
    """Euclidean projection of v (m,) onto the probability simplex (sort-based; Duchi et al.
    2008)."""
    m = v.shape[0]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    idx = jnp.arange(1, m + 1, dtype=v.dtype)
    cond = u - css / idx > 0
    r = jnp.max(jnp.where(cond, jnp.arange(m), -1))
    theta = css[r] / (r + 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def _dist_to_hull(x: Array, X: Array, steps: int) -> Array:
    """dist(x, conv(rows of X)): min over the simplex of ||X^T lam - x||, by accelerated projected
    gradient (FISTA with gradient restart) on the (m x m) Gram problem."""
    G = X @ X.T
    c = X @ x
    L = jnp.maximum(jnp.linalg.eigvalsh(G)[-1], 1e-300)
    m = X.shape[0]
    lam0 = jnp.full((m,), 1.0 / m, x.dtype)

    def body(_, s):
        lam, y, t = s
        new = _project_simplex(y - (G @ y - c) / L)
        restart = jnp.dot(G @ y - c, new - lam) > 0  # objective went up along the momentum
        t_new = jnp.where(restart, 1.0, 0.5 * (1 + jnp.sqrt(1 + 4 * t * t)))
        y_new = jnp.where(restart, new, new + ((t - 1) / t_new) * (new - lam))
        return new, y_new, t_new

    lam, _, _ = jax.lax.fori_loop(0, steps, body, (lam0, lam0, jnp.ones((), x.dtype)))
    r = X.T @ lam - x
    return jnp.sqrt(jnp.sum(r * r))


@functools.partial(jax.jit, static_argnames="steps")
def one_vs_rest_distances(W: Array, steps: int = 2000) -> Array:
    """(..., K) distances dist(w_k, conv{w_j : j != k}) of the unit-normalised rows of W
    (shape (..., K, d)).

    The minimum over k is the one-vs-rest distance that a softmax code maximises (Jiang et al.
    2024): K/(K-1) for a simplex ETF, 1 - cos(2 pi/K) for the regular K-gon, 1 for the
    cross-polytope. Computed by FISTA on the simplex of convex weights (`steps` iterations;
    about 1e-8 accurate on such configurations in float64).
    """
    U = _unit_rows(W)
    K = U.shape[-2]
    others = jnp.asarray([[j for j in range(K) if j != k] for k in range(K)])

    def per_frame(V):
        return jax.vmap(lambda x, idx: _dist_to_hull(x, V[idx], steps))(V, others)

    flat = U.reshape((-1,) + U.shape[-2:])
    return jax.vmap(per_frame)(flat).reshape(U.shape[:-1])


def min_pairwise_distance(W: Array) -> Array:
    """min_{j != k} ||w_j - w_k|| of the unit-normalised rows (the Tammes / one-vs-one distance)."""
    U = _unit_rows(W)
    G = jnp.einsum("...kd,...ld->...kl", U, U)
    K = U.shape[-2]
    D2 = jnp.where(np.eye(K, dtype=bool), jnp.inf, 2.0 - 2.0 * G)
    return jnp.sqrt(jnp.clip(jnp.min(D2, axis=(-2, -1)), 0.0))


def hyperspherical_energy(W: Array, s: float = 1.0) -> Array:
    """Mean Riesz s-energy of the unit-normalised rows (Liu et al. 2018, minimum hyperspherical
    energy): mean over j != k of ||w_j - w_k||^{-s} for s > 0, and of log(1/||w_j - w_k||) for
    s = 0. Lower is more uniform; for the regular K-gon (s = 1) it is
    (1/(K-1)) sum_{m=1}^{K-1} 1/(2 sin(pi m/K)). Coincident rows give inf."""
    if s < 0:
        raise ValueError(f"s must be >= 0, got s={s!r}")
    U = _unit_rows(W)
    G = jnp.einsum("...kd,...ld->...kl", U, U)
    K = U.shape[-2]
    off = ~np.eye(K, dtype=bool)
    D = jnp.sqrt(jnp.clip(2.0 - 2.0 * jnp.where(off, G, 0.0), 0.0))
    E = -jnp.log(D) if s == 0 else D ** (-s)
    return jnp.sum(jnp.where(off, E, 0.0), axis=(-2, -1)) / (K * (K - 1))


@functools.partial(jax.jit, static_argnames="steps")
def gnc_metrics(H: Array, labels: Array, W: Array, steps: int = 2000) -> dict[str, Array]:
    """Generalized-NC metrics (Jiang et al. 2024) of features H (d, N) with integer labels and
    classifier W (K, d), as a dict of scalars:

      one_vs_rest: min_k dist(w_k, conv{w_j}_{j != k}) of the normalised rows
        (`one_vs_rest_distances`).
      min_pairwise: `min_pairwise_distance` of W.
      energy: `hyperspherical_energy` of W (s = 1).
      nc1_normalized: `ufm.metrics.nc.nc1_trace` (tr(Sigma_W)/tr(Sigma_B)) of the normalised
        features h_i/||h_i|| (GNC1).
      self_duality: mean_k (1 - cos(w_k, mu_k - mu_G)), mu the class means of the normalised
        features and mu_G their mean (GNC3).
    """
    K = W.shape[0]
    _, _, M, mu_G, R = class_stats(_unit(H, 0), labels, K, "weighted")
    Mc = M - mu_G[:, None]  # centred class means of the normalised features
    cos = jnp.sum(W * Mc.T, axis=1) / (jnp.linalg.norm(W, axis=1) * jnp.linalg.norm(Mc, axis=0))
    return {
        "one_vs_rest": jnp.min(one_vs_rest_distances(W, steps)),
        "min_pairwise": min_pairwise_distance(W),
        "energy": hyperspherical_energy(W),
        "nc1_normalized": trace_ratio(R, Mc),
        "self_duality": jnp.mean(1.0 - cos),
    }
