"""Reference frames of neural collapse: the simplex ETF, orthogonal frames and their Gram targets.

A simplex equiangular tight frame (ETF) of K unit vectors is M = sqrt(K/(K-1)) U (I_K - 11^T/K) with
U^T U = I; its Gram is K/(K-1) P, P = I - 11^T/K, so <m_j, m_k> = -1/(K-1) for j != k and M 1 = 0.
Only d >= K-1 is needed: the columns of P span a (K-1)-dimensional space.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

__all__ = [
    "centering",
    "etf_gram",
    "of_gram",
    "orthonormal_basis",
    "partial_orthogonal",
    "simplex_etf",
    "orthogonal_frame",
]


def _check_K_d(K: int, d: int, d_min: int) -> None:
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2:
        raise ValueError(f"K must be an integer >= 2, got K={K!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < d_min:
        raise ValueError(f"d must be an integer >= {d_min} here (K={K}), got d={d!r}")


def _unit(X: Array, axis: int) -> Array:
    """X with its slices along `axis` scaled to unit norm (a zero slice stays 0, never NaN)."""
    sq = jnp.sum(X * X, axis=axis, keepdims=True)
    pos = sq > 0
    return X * jnp.where(pos, jax.lax.rsqrt(jnp.where(pos, sq, 1.0)), 0.0)


def centering(K: int, dtype=None) -> Array:
    """P = I_K - 11^T/K, the projector onto the complement of the all-ones vector."""
    return jnp.eye(K, dtype=dtype) - jnp.full((K, K), 1.0 / K, dtype=dtype)


def etf_gram(K: int, dtype=None) -> Array:
    """Unit-Frobenius Gram of a simplex ETF, E_K = P/sqrt(K-1) (docs/theory.md §9)."""
    return centering(K, dtype) / jnp.sqrt(jnp.asarray(K - 1, dtype=dtype))


def of_gram(K: int, dtype=None) -> Array:
    """Unit-Frobenius Gram of an orthogonal frame, I_K/sqrt(K)."""
    return jnp.eye(K, dtype=dtype) / jnp.sqrt(jnp.asarray(K, dtype=dtype))


def orthonormal_basis(K: int, dtype=None) -> Array:
    """Q in R^{K x (K-1)}, orthonormal columns, Q Q^T = P (a Helmert basis: deterministic)."""
    _check_K_d(K, K - 1, 1)
    Q = np.zeros((K, K - 1))
    for j in range(1, K):  # column j-1: (1, ..., 1, -j, 0, ...)/sqrt(j(j+1))
        Q[:j, j - 1] = 1.0
        Q[j, j - 1] = -j
        Q[:, j - 1] /= np.sqrt(j * (j + 1))
    return jnp.asarray(Q, dtype=dtype)


def partial_orthogonal(key: Array, d: int, r: int, dtype=None) -> Array:
    """A random U in R^{d x r} with U^T U = I_r (Haar-distributed), d >= r."""
    if r > d:
        raise ValueError(f"d must be >= r={r} for a partial orthogonal matrix, got d={d}")
    A = jax.random.normal(key, (d, r), dtype=dtype)
    Q, R = jnp.linalg.qr(A)
    return Q * jnp.sign(jnp.diagonal(R))[None, :]


def simplex_etf(
    K: int, d: int, key: Array | None = None, U: Array | None = None, dtype=None
) -> Array:
    """Simplex ETF in R^d: a (d, K) matrix of unit columns with pairwise inner products -1/(K-1).

    M = sqrt(K/(K-1)) U Q^T, where Q is the (K, K-1) basis of `orthonormal_basis` and U in
    R^{d x (K-1)} has orthonormal columns: given, random (from `key`), or the first K-1 coordinate
    axes (neither given). Needs d >= K-1.
    """
    _check_K_d(K, d, K - 1)
    Q = orthonormal_basis(K, dtype)
    if U is None:
        U = (
            partial_orthogonal(key, d, K - 1, dtype)
            if key is not None
            else jnp.eye(d, K - 1, dtype=Q.dtype)
        )
    elif U.shape != (d, K - 1):
        raise ValueError(f"U must have shape (d, K-1)=({d}, {K - 1}), got U.shape={U.shape}")
    return jnp.sqrt(K / (K - 1)) * U @ Q.T


def orthogonal_frame(K: int, d: int, key: Array | None = None, dtype=None) -> Array:
    """Orthogonal frame in R^d: (d, K) orthonormal columns (random from `key`); needs d >= K."""
    _check_K_d(K, d, K)
    if key is None:
        return jnp.eye(d, K, dtype=dtype)
    return partial_orthogonal(key, d, K, dtype)
