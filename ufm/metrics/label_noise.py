"""Memorisation of noisy labels (docs/theory.md §6.4; the memorization-dilation picture of Nguyen
et al.): where the features of relabelled samples sit relative to the class means, as pure
functions of arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.metrics.nc import nc1_trace

__all__ = ["memorization_metrics"]


def memorization_metrics(H: Array, W: Array, b: Array | None, labels, noisy) -> dict[str, Array]:
    """Where the noisy samples' features sit relative to the class means.

    With mu_k the mean of the CLEAN samples of true class k (labels == noisy), for a noisy sample
    i of true class t and training label y, D_i = ||mu_y - mu_t||:
      memorization: (M,) <h_i - mu_t, mu_y - mu_t>/D_i^2 per noisy sample, in order: 0 at its
        true class's mean, 1 at its label's class mean.
      dist_true, dist_label: (M,) ||h_i - mu_t||/D_i and ||h_i - mu_y||/D_i.
      fitted: (M,) whether the logits W h_i + b pick its noisy label.
      mean_memorization, mean_dist_true, mean_dist_label, fraction_fitted: the averages.
      dilation: `ufm.metrics.nc.nc1_trace` (tr(Sigma_W)/tr(Sigma_B)) with respect to the TRUE
        classes over all samples: 0 at collapse; memorisation spreads the true classes.
      clean_spread: the same ratio over the clean samples only.
    NaN entries where a class has no clean sample.

    Args:
      H: (d, N) features; W: (K, d) classifier; b: (K,) bias or None.
      labels: (N,) true class of each column; noisy: (N,) its training label. Both concrete
        (NumPy or Python ints): they select columns.

    Returns:
      dict of arrays (jit-able in H, W, b).
    """
    K = W.shape[0]
    true, noisy = np.asarray(labels), np.asarray(noisy)
    clean = noisy == true
    Yc = jax.nn.one_hot(jnp.asarray(true), K, dtype=H.dtype) * jnp.asarray(clean, H.dtype)[:, None]
    mu = (H @ Yc) / jnp.sum(Yc, axis=0)[None, :]  # clean class means
    idx = np.flatnonzero(~clean)
    Hn = H[:, idx]
    mt, my = mu[:, true[idx]], mu[:, noisy[idx]]
    D2 = jnp.sum((my - mt) ** 2, axis=0)
    D = jnp.sqrt(D2)
    mem = jnp.sum((Hn - mt) * (my - mt), axis=0) / D2
    logits = Hn.T @ W.T if b is None else Hn.T @ W.T + b[None, :]
    fitted = jnp.argmax(logits, axis=1) == jnp.asarray(noisy[idx])
    dist_true = jnp.linalg.norm(Hn - mt, axis=0) / D
    dist_label = jnp.linalg.norm(Hn - my, axis=0) / D
    kept = np.flatnonzero(clean)
    return {
        "memorization": mem,
        "dist_true": dist_true,
        "dist_label": dist_label,
        "fitted": fitted,
        "mean_memorization": jnp.mean(mem),
        "mean_dist_true": jnp.mean(dist_true),
        "mean_dist_label": jnp.mean(dist_label),
        "fraction_fitted": jnp.mean(fitted.astype(H.dtype)),
        "dilation": nc1_trace(H, jnp.asarray(true), K),
        "clean_spread": nc1_trace(H[:, kept], jnp.asarray(true[kept]), K),
    }
