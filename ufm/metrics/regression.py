"""Neural regression collapse metrics NRC1-NRC3 (Andriopoulos, Dong, Guo, Zhao & Ross, "The
prevalence of neural collapse in neural multivariate regression", NeurIPS 2024; docs/theory.md
§18): how far the features and the read-out of a regression model are from their collapsed form.
Pure functions of arrays, jit- and vmap-able."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from ufm.geometry import _unit

__all__ = ["nrc_metrics"]

_mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def _normalised_features(H: Array) -> Array:
    """(d, N): the centred features h_i - h_G scaled to unit norm (a zero column stays 0)."""
    return _unit(H - jnp.mean(H, axis=1, keepdims=True), 0)


def _residual(X: Array, U: Array, keep: Array) -> Array:
    """(1/N) sum_i ||x_i - U_keep U_keep^T x_i||^2 for the columns x_i of X, U_keep the columns
    of U where `keep` is True (computed as the residual itself, so it is >= 0)."""
    R = X - _mm(U * keep[None, :], _mm((U * keep[None, :]).T, X))
    return jnp.sum(R * R) / X.shape[1]


def _nrc3(W: Array, Y: Array) -> tuple[Array, Array]:
    """(NRC3, gamma): min over gamma in [0, lam_min] of ||A - B(gamma)||_F^2 with
    A = W W^T/||W W^T||_F and B(gamma) = (Sigma^{1/2} - sqrt(gamma) I)/||...||_F.

    With g = sqrt(gamma), ||A - B||^2 = 2 - 2 phi(g), phi(g) = (a - g t)/sqrt(q(g)),
    a = <A, S>, t = tr A, S = Sigma^{1/2}, q(g) = sigma_2 - 2 g sigma_1 + K g^2 (sigma_1 = tr S,
    sigma_2 = tr Sigma). phi'(g) = 0 is linear in g: g* = (t sigma_2 - a sigma_1)/(t sigma_1 - a K),
    so the maximum of phi on [0, sqrt(lam_min)] is at g* (clipped) or an endpoint: the minimum
    over gamma is exact, no search.
    """
    K = Y.shape[0]
    Yc = Y - jnp.mean(Y, axis=1, keepdims=True)
    lam, V = jnp.linalg.eigh(_mm(Yc, Yc.T) / Y.shape[1])
    s = jnp.sqrt(jnp.maximum(lam, 0.0))
    G = _mm(W, W.T)
    A = G / jnp.sqrt(jnp.sum(G * G))
    A_diag = jnp.sum(V * _mm(A, V), axis=0)  # diagonal of A in the eigenbasis of Sigma
    a, t = jnp.sum(A_diag * s), jnp.trace(A)
    s1, s2 = jnp.sum(s), jnp.sum(s * s)
    den = t * s1 - a * K
    g_star = jnp.where(den != 0, (t * s2 - a * s1) / jnp.where(den != 0, den, 1.0), 0.0)
    g = jnp.stack([jnp.zeros_like(s1), jnp.clip(g_star, 0.0, s[0]), s[0]])
    q = s2 - 2 * g * s1 + K * g * g
    phi = jnp.where(q > 0, (a - g * t) * jax.lax.rsqrt(jnp.where(q > 0, q, 1.0)), -jnp.inf)
    best = g[jnp.argmax(phi)]
    B = _mm(V * (s - best)[None, :], V.T)
    B = B / jnp.sqrt(jnp.sum(B * B))
    return jnp.sum((A - B) ** 2), best * best


def nrc_metrics(H: Array, W: Array, Y: Array, *, rcond: float = 1e-10) -> dict[str, Array]:
    """The regression-collapse metrics of features H (d, N), read-out W (K, d), targets Y (K, N).

    Notation: h_G = (1/N) sum_i h_i, h~_i = (h_i - h_G)/||h_i - h_G|| (the centred features on
    the unit sphere), Sigma = (1/N)(Y - ybar 1^T)(Y - ybar 1^T)^T with smallest eigenvalue
    lam_min. Every metric is 0 at collapse.

    Keys:
      nrc1: (1/N) sum_i ||h~_i - P_PCA h~_i||^2, P_PCA the projector onto the K leading principal
        directions of the centred features (eigenvectors of (1/N) sum_i (h_i - h_G)(h_i - h_G)^T):
        the features collapse onto a K-dimensional subspace.
      nrc2: (1/N) sum_i ||h~_i - P_W h~_i||^2, P_W the projector onto the span of the rows of W
        (singular directions with singular value > rcond times the largest): the features lie in
        the read-out's row space.
      nrc3: min over gamma in [0, lam_min] of ||W W^T/||W W^T||_F - (Sigma^{1/2} - gamma^{1/2} I)/
        ||Sigma^{1/2} - gamma^{1/2} I||_F||_F^2: the read-out Gram has the shape the UFM predicts
        (at the optimum of `ufm.RegressionUFM` with c = N lam_W lam_H < lam_min it is 0 with
        gamma = c). Solved exactly (see `_nrc3`).
      nrc3_gamma: the minimising gamma.
    """
    d = H.shape[0]
    K = Y.shape[0]
    Hn = _normalised_features(H)
    C = H - jnp.mean(H, axis=1, keepdims=True)
    _, U = jnp.linalg.eigh(_mm(C, C.T))  # ascending: the last K columns lead
    nrc1 = _residual(Hn, U, jnp.arange(d) >= d - K)
    Uw, sw, _ = jnp.linalg.svd(W.T, full_matrices=False)
    nrc2 = _residual(Hn, Uw, sw > rcond * sw[0])
    nrc3, gamma = _nrc3(W, Y)
    return {"nrc1": nrc1, "nrc2": nrc2, "nrc3": nrc3, "nrc3_gamma": gamma}
