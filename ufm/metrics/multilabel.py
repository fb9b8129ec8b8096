"""Multi-label neural collapse (Li, Li, Wang & Qu, ICML 2024; docs/theory.md §6.3): how far the
classifier and the label-set means are from "multi-label NC", as pure functions of arrays.

At the optimum of the pick-all-label CE the classifier is a simplex ETF, so are the means mu_k of
the single-label sets {k}, and the mean mu_S of a set S of size m is a scaled sum t_m sum_{k in S}
mu_k of its members' means (a scaled "tag-wise average")."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.geometry import etf_gram
from ufm.metrics.nc import gram_gap

__all__ = ["multi_hot", "tagwise_metrics"]


def multi_hot(label_sets: Sequence[Sequence[int]], K: int) -> np.ndarray:
    """(len(label_sets), K) array: row i is 1 on the classes of label_sets[i], 0 elsewhere."""
    T = np.zeros((len(label_sets), K))
    for i, S in enumerate(label_sets):
        T[i, list(S)] = 1.0
    return T


def tagwise_metrics(
    H: Array, W: Array, labels: Array, label_sets: Sequence[Sequence[int]]
) -> dict[str, Array]:
    """How far (W, H) are from multi-label NC, as scalars.

    Notation: mu_S the mean of the columns of H whose label set is S, mu_k = mu_{{k}},
    E_K = etf_gram(K) and `gram_gap` the distance between normalised Grams.

    Keys:
      etf_W: gram_gap(W W^T, E_K), the classifier's distance from a simplex ETF.
      etf_singles: gram_gap(M1^T M1, E_K), M1 = [mu_k]_k the single-label means, uncentred (at
        the optimum they sum to 0); NaN when some class has no single-label set.
      for each set size m >= 2 present (only when every single-label set is present):
        tagwise_residual_m: max over sets S of size m of ||mu_S - t_S u_S||/||mu_S||, where
          u_S = sum_{k in S} mu_k and t_S = <mu_S, u_S>/||u_S||^2: 0 iff every set mean is a
          scaled sum of its members' single-label means;
        tagwise_scale_m: mean of t_S over those sets (theory: s_m/s_1,
          `ufm.theory.multilabel.multilabel_margins`).

    Args:
      H: (d, N) features.
      W: (K, d) classifier.
      labels: (N,) index into `label_sets` of each column.
      label_sets: the distinct label sets, tuples of classes in [0, K) (static).

    Returns:
      dict of scalar arrays (jit-able with `label_sets` static).
    """
    sets = tuple(tuple(int(k) for k in S) for S in label_sets)
    K = W.shape[0]
    Y = jax.nn.one_hot(labels, len(sets), dtype=H.dtype)  # (N, sets)
    Mset = (H @ Y) / Y.sum(0)[None, :]  # (d, sets)
    E = etf_gram(K, H.dtype)
    out = {"etf_W": gram_gap(W @ W.T, E)}
    single = {S[0]: i for i, S in enumerate(sets) if len(S) == 1}
    if len(single) < K:
        out["etf_singles"] = jnp.asarray(jnp.nan, H.dtype)
        return out
    mu1 = Mset[:, jnp.asarray([single[k] for k in range(K)])]  # (d, K)
    out["etf_singles"] = gram_gap(mu1.T @ mu1, E)
    for m in sorted({len(S) for S in sets} - {1}):
        rows = [i for i, S in enumerate(sets) if len(S) == m]
        T = multi_hot([sets[i] for i in rows], K)
        U = mu1 @ jnp.asarray(T, H.dtype).T  # (d, r): sums of member means
        MS = Mset[:, jnp.asarray(rows)]
        t = jnp.sum(MS * U, axis=0) / jnp.sum(U * U, axis=0)
        res = jnp.linalg.norm(MS - t[None, :] * U, axis=0) / jnp.linalg.norm(MS, axis=0)
        out[f"tagwise_residual_{m}"] = jnp.max(res)
        out[f"tagwise_scale_{m}"] = jnp.mean(t)
    return out
