"""Statistics of training dynamics as pure functions of arrays: separability, margins, the
between/within spread of a state tensor X (K, n, p) and of UFM parameters (W, H).

Class structure is balanced and implicit in X: X[k, i] is sample i of class k. Where a quantity is
an NC metric (nc1, nc2, nc2_W, nc3) it is `ufm.nc_metrics`'s, with its meaning (docs/theory.md §8).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from ufm.geometry import centering
from ufm.losses import cross_entropy
from ufm.metrics.nc import class_stats, nc_metrics

__all__ = [
    "ncc_accuracy",
    "argmax_accuracy",
    "separable",
    "min_margin",
    "simplex_coefficients",
    "spread",
    "le_metrics",
    "flow_metrics",
    "snr_singular_values",
]


def _balanced_labels(K: int, n: int) -> Array:
    """Labels of X.reshape(K n, p): n zeros, n ones, ..."""
    return jnp.repeat(jnp.arange(K), n)


def ncc_accuracy(X: Array) -> Array:
    """Fraction of samples whose nearest class mean is their own class's.

    Args:
      X: (K, n, p) features, X[k, i] sample i of class k.
    Returns:
      scalar in [0, 1].
    """
    K = X.shape[0]
    means = X.mean(1)
    d2 = ((X[:, :, None, :] - means[None, None, :, :]) ** 2).sum(-1)  # (K, n, K)
    return jnp.mean(jnp.argmin(d2, -1) == jnp.arange(K)[:, None])


def argmax_accuracy(X: Array) -> Array:
    """Fraction of samples whose largest logit is their class: X (K, n, K) logits -> scalar."""
    K = X.shape[0]
    if X.shape[-1] != K:
        raise ValueError(f"X must hold logits, shape (K, n, K); got X.shape={X.shape}")
    return jnp.mean(jnp.argmax(X, -1) == jnp.arange(K)[:, None])


def separable(X: Array) -> Array:
    """Whether every sample of X (K, n, p) is nearest its own class mean (NCC accuracy 1): a
    sufficient condition for linear separability, the test of docs/theory.md §13.5."""
    return ncc_accuracy(X) == 1.0


def min_margin(Z: Array, labels: Array) -> Array:
    """min_i (z_{i, y_i} - max_{j != y_i} z_{i, j}) for logits Z (N, K) and labels (N,)."""
    onehot = jax.nn.one_hot(labels, Z.shape[1], dtype=bool)
    correct = jnp.sum(jnp.where(onehot, Z, 0.0), -1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, Z), -1)
    return jnp.min(correct - other)


def simplex_coefficients(means: Array) -> Array:
    """s_k = u_k . m_k / ||u_k||^2 with u_k = e_k - 1/K: the coefficient of class mean m_k (K, K)
    on its simplex direction in logit space (docs/theory.md §13.4). Returns (K,)."""
    K = means.shape[0]
    return (centering(K, means.dtype) * means).sum(1) * (K / (K - 1))


def spread(X: Array) -> dict[str, Array]:
    """Within- and between-class spread of X (K, n, p), per coordinate.

    within = tr(Sigma_W)/p, the mean squared deviation of a sample from its class mean;
    between = tr(Sigma_B)/p, the mean squared deviation of a class mean from the mean of means.
    Their ratio within/between is `nc_metrics`'s nc1_trace.
    """
    means = X.mean(1)
    dev = X - means[:, None, :]
    D = means - means.mean(0, keepdims=True)
    return {"within": jnp.mean(dev * dev), "between": jnp.mean(D * D)}


def le_metrics(X: Array) -> dict[str, Array]:
    """The statistics `ufm.dynamics.simulate` records for a state X (K, n, p).

    Returns dict: "means" (K, p) class means; "within", "between" (`spread`); "ncc_acc"
    (`ncc_accuracy`); "nc1" = tr(Sigma_W Sigma_B^+)/K (`nc_metrics`); and when p = K (logits)
    "argmax_acc", "margin" (`min_margin`), "etf_mode" (mean_k s_k of `simplex_coefficients`) and
    "loss" (mean cross-entropy of the logits), NaN otherwise.
    """
    K, n, p = X.shape
    labels = _balanced_labels(K, n)
    H = X.reshape(K * n, p)
    out = {
        "means": X.mean(1),
        **spread(X),
        "ncc_acc": ncc_accuracy(X),
        "nc1": nc_metrics(H.T, labels, K=K)["nc1"],
    }
    if p != K:
        nan = jnp.full((), jnp.nan, X.dtype)
        return {**out, "argmax_acc": nan, "margin": nan, "etf_mode": nan, "loss": nan}
    out["argmax_acc"] = argmax_accuracy(X)
    out["margin"] = min_margin(H, labels)
    out["etf_mode"] = jnp.mean(simplex_coefficients(out["means"]))
    out["loss"] = cross_entropy(H, jax.nn.one_hot(labels, K, dtype=X.dtype))
    return out


def flow_metrics(
    W: Array,
    H: Array,
    labels: Array,
    logits: Array | None = None,
    W0: Array | None = None,
    H0: Array | None = None,
) -> dict[str, Array]:
    """Margins, NC metrics and the balance drift of UFM parameters along a gradient flow.

    Returns dict:
      margin: `min_margin` of the logits (H^T W^T when not given);
      normalized_margin: margin / (½ (||W||² + ||H||²)) (bias not counted), at most
        1/((K-1) sqrt(n)) for balanced bias-free models (Ji et al. 2022; docs/theory.md §14.3);
      nc1, nc2, nc2_W, nc3: as in `nc_metrics` (weighted global mean);
      balance_drift (when W0 and H0 are given): ||(WᵀW - HHᵀ) - (W0ᵀW0 - H0H0ᵀ)||_F, which the
        gradient flow of a bias-free, unregularised model conserves (= 0).

    Args:
      W: (K, d) classifier. H: (d, N) features. labels: (N,) classes.
      logits: (N, K) logits if not H^T W^T (e.g. with a bias).
      W0, H0: the start of the flow.
    """
    Z = H.T @ W.T if logits is None else logits
    out = {"margin": min_margin(Z, labels)}
    out["normalized_margin"] = out["margin"] / (0.5 * (jnp.sum(W * W) + jnp.sum(H * H)))
    nc = nc_metrics(H, labels, W=W)
    out.update({k: nc[k] for k in ("nc1", "nc2", "nc2_W", "nc3")})
    if W0 is not None and H0 is not None:
        C0 = W0.T @ W0 - H0 @ H0.T
        out["balance_drift"] = jnp.linalg.norm(W.T @ W - H @ H.T - C0)
    return out


def snr_singular_values(H: Array, labels: Array, K: int, lam: float | Array = 0.0) -> Array:
    """Singular values of the signal-to-noise matrix (Sigma_W + lam I)^{-1/2} Mbar/sqrt(K).

    Mbar (d, K) holds the class means minus the global mean (weighted, as in `nc_metrics`),
    Sigma_W the within-class covariance. On the MSE central path (Han, Papyan & Donoho 2022) the
    loss with the optimal (ridge lam) classifier and free bias is (1/(2K)) sum_j 1/(1 + omega_j^2)
    over these values (docs/theory.md §14.2). Sigma_W + lam I must be invertible.

    Args:
      H: (d, N) features. labels: (N,) classes in [0, K). K: number of classes.
      lam: ridge (>= 0) added to Sigma_W.
    Returns:
      (min(d, K-1),) singular values, largest first (balanced classes: Mbar 1 = 0, so at most K-1
      are nonzero).
    """
    d, N = H.shape
    _, _, M, mu_G, R = class_stats(H, labels, K, "weighted")
    Mbar = M - mu_G[:, None]
    L = jnp.linalg.cholesky(R @ R.T / N + lam * jnp.eye(d, dtype=H.dtype))
    # L^{-1} = Q (Sigma_W + lam I)^{-1/2} with Q orthogonal: the same singular values
    A = jax.scipy.linalg.solve_triangular(L, Mbar, lower=True)
    return jnp.linalg.svd(A, compute_uv=False)[: min(d, K - 1)] / jnp.sqrt(K)
