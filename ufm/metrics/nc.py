"""Neural-collapse metrics: how far features H and classifier (W, b) are from NC1-NC4.

Every metric of docs/theory.md §8, as scalars, from one-hot matmuls and K x K eigenproblems only,
and the two pieces the regime-specific metrics reuse: `nc1_trace` (the within/between trace
ratio) and `gram_gap` (the distance of a normalised Gram from a target shape).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.geometry import etf_gram, orthonormal_basis

__all__ = ["class_stats", "gram_gap", "nc1_trace", "nc_metrics", "trace_ratio"]

_MEANS = ("weighted", "unweighted", "zero")
_mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)  # no TF32/bf16 passes


def nc_metrics(
    H: Array,
    labels: Array,
    W: Array | None = None,
    b: Array | None = None,
    *,
    K: int | None = None,
    mean: str = "weighted",
    rcond: float = 1e-10,
) -> dict[str, Array]:
    """Neural-collapse metrics of features H (and classifier W, bias b): a dict of scalars.

    Notation: mu_k = (1/n_k) sum_{y_i = k} h_i, Mbar = [mu_k - mu_G]_k (d x K), G = Mbar^T Mbar,
    Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, Sigma_B = (1/K) Mbar Mbar^T,
    P = I - 11^T/K, E_K = P/sqrt(K-1) (unit-Frobenius ETF Gram), Q the (K, K-1) Helmert basis of
    `ufm.geometry.orthonormal_basis` (Q Q^T = P), cos(u, v) = <u, v>/(||u|| ||v||). Norms of
    matrices are Frobenius norms. Suffix _H: computed from the centred class means (columns of
    Mbar); suffix _W: from the classifier rows w_k, never centred. The global mean mu_G is set by
    `mean`: "weighted" mu_G = (1/N) sum_i h_i (Papyan et al.), "unweighted" mu_G = (1/K) sum_k mu_k,
    "zero" mu_G = 0 (uncentred means: the choice that tells an orthogonal frame (OF) from an ETF,
    since centred OF means form an ETF; docs/theory.md §8).

    Keys (W keys only when W is given, b keys only when b is given):
      nc1: tr(Sigma_W Sigma_B^+)/K (Papyan, Han & Donoho 2020). With G = V diag(lam) V^T and
        Mbar = sum_j sqrt(lam_j) u_j v_j^T, (Mbar Mbar^T)^+ = sum_j u_j u_j^T/lam_j with
        u_j = Mbar v_j/sqrt(lam_j), and Sigma_B^+ = K (Mbar Mbar^T)^+, so
        nc1 = sum_j u_j^T Sigma_W u_j/lam_j = sum_j v_j^T C v_j/lam_j^2, C = Mbar^T Sigma_W Mbar,
        where v_j^T C v_j = ||A^T v_j||^2/N, A = Mbar^T (H - [mu_{y_i}]_i) (K x N): no d x d
        matrix is formed and every term is >= 0. The sum runs over the r largest eigenvalues with
        lam_j > rcond * lam_max, r = rank bound of Mbar = min(d, K-1) (min(d, K) for mean="zero":
        uncentred means need not sum to 0), so the rounding-level null direction of centred means
        is dropped even in float32. Sigma_W = 0 (exact within-class collapse) gives exactly 0.
      nc1_trace: tr(Sigma_W)/tr(Sigma_B), the scale-free variant without pseudo-inverse.
      cdnv: mean over pairs k < k' of (V_k + V_k')/(2 ||mu_k - mu_k'||^2), V_k the mean of
        ||h_i - mu_k||^2 over class k (Galanti et al. 2022).
      nc2_equinorm_H/_W: std_k ||x_k||/mean_k ||x_k|| (population std) for x_k = mu_k - mu_G / w_k.
      nc2_equiangular_H/_W: std over k != k' of cos(x_k, x_k').
      nc2_maxangle_H/_W: mean over k != k' of |cos(x_k, x_k') + 1/(K-1)|.
      nc2_H/_W: ||G/||G|| - E_K|| with G = Mbar^T Mbar / W W^T (Zhu et al. 2021); nc2 = nc2_H.
      nc2_nearest_H/_W: distance to the nearest simplex ETF up to rotation and scale,
        min_{R^T R = I} ||X/||X|| - R B|| with X = Mbar / W^T and B = Q^T/sqrt(K-1) (||B|| = 1).
        By orthogonal Procrustes the minimum squared is 2 - 2 ||X Q||_*/(||X|| sqrt(K-1)); with
        ||X||^2 = ||X Q||^2 + ||X 1||^2/K this is the cancellation-free sum of squares
        ||X 1||^2/(K ||X||^2) + sum_j (s_j - 1/sqrt(K-1))^2, s_j^2 the eigenvalues (clipped at 0)
        of Q^T X^T X Q/||X||^2 ((K-1) x (K-1)). It depends on X only through X^T X, so for
        d < K-1 it is the distance of X zero-padded into R^{K-1}. Near an ETF it is accurate to
        rounding; where X Q is rank deficient, a zero s_j is the sqrt of a rounding-level
        eigenvalue, so the value is then accurate to ~sqrt(eps) only (~1e-8 in float64).
      nc3: ||W^T/||W|| - Mbar/||Mbar|| ||^2 (Papyan et al., squared as plotted in the paper).
      nc3_zhu: ||W Mbar/||W Mbar|| - E_K|| (Zhu et al. 2021).
      nc4: fraction of samples with argmax_k (w_k^T h_i + b_k) != argmin_k ||h_i - mu_k|| (the
        nearest-class-centre rule; b used when given). nc4_nobias: the same with b = 0.
      bias_mean: ||W mu_G + b|| (b = 0 when absent), what Zhu et al.'s code logs as "NC4".

    A ratio whose denominator is exactly 0 is NaN: Mbar = 0 (e.g. the zero solution H = 0, where
    the metrics are undefined), W = 0, two equal class means (cdnv), a centred mean equal to 0
    (cosines). Class means equal only up to rounding give finite but meaningless values. An empty
    class makes its mean NaN, and labels outside [0, K) are ignored (labels' values are never read,
    so that this runs under jit; they cannot be checked).

    Args:
      H: (d, N) features, one column per sample.
      labels: (N,) integer class of each column, in [0, K).
      W: optional (K, d) classifier.
      b: optional (K,) bias; needs W.
      K: number of classes (>= 2); taken from W.shape[0] when W is given.
      mean: global mean used to centre class means: "weighted", "unweighted" or "zero".
      rcond: relative eigenvalue cut-off of the pseudo-inverse in nc1.

    Returns:
      dict of scalar arrays keyed as above. Jit- and vmap-able (K and mean are static).
    """
    H, labels, W, b, K = _check(H, labels, W, b, K, mean, rcond)
    return _nc_metrics(H, labels, W, b, rcond, K=K, mean=mean)


def _check(H, labels, W, b, K, mean, rcond):
    """Validate shapes and options in Python, before anything is traced; returns (H, y, W, b, K)."""
    H, labels = jnp.asarray(H), jnp.asarray(labels)
    if H.ndim != 2 or not jnp.issubdtype(H.dtype, jnp.floating):
        raise ValueError(f"H must be a 2-D (d, N) float array, got H.shape={H.shape}, {H.dtype}")
    d, N = H.shape
    if labels.shape != (N,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be an integer array of shape (N,)=({N},) (N = H.shape[1]), "
            f"got labels.shape={labels.shape}, {labels.dtype}"
        )
    if W is not None:
        W = jnp.asarray(W)
        if W.ndim != 2 or W.shape[1] != d:
            raise ValueError(
                f"W must have shape (K, d) with d={d} (H.shape[0]), got W.shape={W.shape}"
            )
        if K is not None and K != W.shape[0]:
            raise ValueError(f"K must equal W.shape[0]={W.shape[0]} when W is given, got K={K!r}")
        K = W.shape[0]
    if K is None:
        raise ValueError("K must be given (an integer >= 2) when W is None, got K=None")
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 2:
        raise ValueError(f"K must be an integer >= 2, got K={K!r}")
    if b is not None:
        if W is None:
            raise ValueError("b needs W: got b but W=None")
        b = jnp.asarray(b)
        if b.shape != (K,):
            raise ValueError(f"b must have shape (K,)=({K},), got b.shape={b.shape}")
    if mean not in _MEANS:
        raise ValueError(f"mean must be one of {list(_MEANS)}, got mean={mean!r}")
    if not isinstance(rcond, jax.core.Tracer) and not (np.ndim(rcond) == 0 and 0 <= rcond < 1):
        raise ValueError(f"rcond must be a real number in [0, 1), got rcond={rcond!r}")
    return H, labels, W, b, int(K)


def _div(num: Array, den: Array) -> Array:
    """num/den, NaN where den == 0 (never a division by zero)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), jnp.nan)


def _offdiag(K: int) -> np.ndarray:
    return ~np.eye(K, dtype=bool)


def _frame_metrics(X: Array, G: Array, suffix: str) -> dict[str, Array]:
    """NC2 metrics of the K columns x_k of X (Mbar or W^T), given their Gram G = X^T X."""
    K = G.shape[0]
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(G), 0))
    cos = _div(G, norms[:, None] * norms[None, :])[_offdiag(K)]  # the K(K-1) pairs k != k'
    nrm2 = jnp.trace(G)  # ||X||^2
    Q = orthonormal_basis(K, G.dtype)
    s = jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(_div(_mm(_mm(Q.T, G), Q), nrm2)), 0))
    sum2 = jnp.sum(X.sum(1) ** 2)  # ||X 1||^2, accurate near 0 (unlike 1^T G 1)
    near2 = _div(sum2, K * nrm2) + jnp.sum((s - (K - 1) ** -0.5) ** 2)
    return {
        f"nc2_equinorm_{suffix}": _div(jnp.std(norms), jnp.mean(norms)),
        f"nc2_equiangular_{suffix}": jnp.std(cos),
        f"nc2_maxangle_{suffix}": jnp.mean(jnp.abs(cos + 1 / (K - 1))),
        f"nc2_{suffix}": gram_gap(G, etf_gram(K, G.dtype)),
        f"nc2_nearest_{suffix}": jnp.sqrt(near2),
    }


def gram_gap(G: Array, target: Array) -> Array:
    """|| G/||G|| - T/||T|| ||: the distance between the shapes of two Grams (Frobenius norms).

    Scale-free and, for Grams G = X X^T, rotation-invariant; with T = `ufm.geometry.etf_gram(K)`
    it is the distance from a simplex ETF (nc2, Zhu et al. 2021). NaN when G = 0 or T = 0.

    Args:
      G, target: (K, K) arrays (any same-shape arrays).

    Returns:
      A scalar array.
    """
    return jnp.linalg.norm(_div(G, jnp.linalg.norm(G)) - _div(target, jnp.linalg.norm(target)))


def nc1_trace(H: Array, labels: Array, K: int, mean: str = "weighted") -> Array:
    """tr(Sigma_W)/tr(Sigma_B) of features H with integer labels: the ``nc1_trace`` of
    `nc_metrics` alone (same notation and `mean` convention; docs/theory.md §8).

    = [(1/N) sum_i ||h_i - mu_{y_i}||^2] / [(1/K) sum_k ||mu_k - mu_G||^2]; 0 at exact
    within-class collapse, NaN when every class mean equals mu_G.

    Args:
      H: (d, N) features; labels: (N,) integer classes in [0, K); K: number of classes (>= 2);
      mean: "weighted", "unweighted" or "zero", as in `nc_metrics`.

    Returns:
      A scalar array (jit- and vmap-able; K and mean static).
    """
    H, labels, _, _, K = _check(H, labels, None, None, K, mean, 0.0)
    _, _, M, mu_G, R = class_stats(H, labels, K, mean)
    return trace_ratio(R, M - mu_G[:, None])


def class_stats(H: Array, labels: Array, K: int, mean: str):
    """The class statistics every NC metric starts from, for features H (d, N) with integer
    `labels` (N,) in [0, K):

        Y (N, K) one-hot,  counts n_k = sum_i Y_ik,  class means mu_k = (1/n_k) sum_{y_i = k} h_i
        (M = [mu_1 .. mu_K], d x K),  residuals R = H - M Y^T (h_i - mu_{y_i}, d x N),

    and the global mean mu_G: (1/N) sum_i h_i ("weighted"), (1/K) sum_k mu_k ("unweighted") or
    0 ("zero"). Returns (Y, counts, M, mu_G, R); traceable (`mean` and K static)."""
    Y = jax.nn.one_hot(labels, K, dtype=H.dtype)
    counts = Y.sum(0)
    M = _mm(H, Y) / counts[None, :]
    if mean == "weighted":
        mu_G = H.mean(1)
    elif mean == "unweighted":
        mu_G = M.mean(1)
    else:
        mu_G = jnp.zeros((H.shape[0],), H.dtype)
    return Y, counts, M, mu_G, H - _mm(M, Y.T)


def trace_ratio(R: Array, Mbar: Array) -> Array:
    """tr(Sigma_W)/tr(Sigma_B) = (||R||^2/N)/(||Mbar||^2/K) from the residuals R (d, N) and the
    centred class means Mbar (d, K) of `class_stats`; NaN when Mbar = 0."""
    return _div(jnp.sum(R**2) / R.shape[1], jnp.sum(Mbar**2) / Mbar.shape[1])


@functools.partial(jax.jit, static_argnames=("K", "mean"))
def _nc_metrics(H, labels, W, b, rcond, *, K: int, mean: str) -> dict[str, Array]:
    d, N = H.shape
    Y, counts, M, mu_G, R = class_stats(H, labels, K, mean)
    Mbar = M - mu_G[:, None]
    G = _mm(Mbar.T, Mbar)

    lam, V = jnp.linalg.eigh(G)  # ascending
    quad = jnp.sum(_mm(_mm(V.T, Mbar.T), R) ** 2, axis=1) / N  # v_j^T C v_j >= 0
    r = min(d, K if mean == "zero" else K - 1)
    keep = (jnp.arange(K) >= K - r) & (lam > rcond * lam[-1])
    nc1 = jnp.sum(jnp.where(keep, quad / jnp.where(keep, lam, 1) ** 2, 0))

    res2 = jnp.sum(R**2, axis=0)  # ||h_i - mu_{y_i}||^2
    Vk = _mm(res2, Y) / counts
    gd = jnp.diagonal(G)
    D = jnp.clip(gd[:, None] + gd[None, :] - 2 * G, 0)  # ||mu_k - mu_k'||^2
    off = _offdiag(K)
    out = {
        "nc1": jnp.where(lam[-1] > 0, nc1, jnp.nan),
        "nc1_trace": trace_ratio(R, Mbar),
        "cdnv": jnp.mean(_div(Vk[:, None] + Vk[None, :], 2 * D)[off]),
        **_frame_metrics(Mbar, G, "H"),
    }
    out["nc2"] = out["nc2_H"]
    if W is None:
        return out

    out.update(_frame_metrics(W.T, _mm(W, W.T), "W"))
    out["nc3"] = jnp.sum((_div(W.T, jnp.linalg.norm(W)) - _div(Mbar, jnp.linalg.norm(Mbar))) ** 2)
    out["nc3_zhu"] = gram_gap(_mm(W, Mbar), etf_gram(K, H.dtype))
    logits = _mm(H.T, W.T)  # (N, K)
    ncc = jnp.argmin(jnp.sum(M**2, axis=0)[None, :] - 2 * _mm(H.T, M), axis=1)

    def disagree(z):
        return jnp.sum(jnp.argmax(z, axis=1) != ncc, dtype=H.dtype) / N

    logit_G = _mm(W, mu_G)
    if b is None:
        out["nc4"] = disagree(logits)
    else:
        out["nc4"] = disagree(logits + b[None, :])
        out["nc4_nobias"] = disagree(logits)
        logit_G = logit_G + b
    out["bias_mean"] = jnp.linalg.norm(logit_G)
    return out
