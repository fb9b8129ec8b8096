"""Minority collapse (Fang et al. 2021; docs/theory.md §4.3): how close the classifiers of the
smallest classes come to each other, as pure functions of W (leading batch axes kept)."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import Array

__all__ = ["minority_classes", "minority_cosine", "minority_spread"]


def minority_classes(counts: Sequence[int]) -> tuple[int, ...]:
    """Indices of the classes with the smallest count (the minority), in increasing order."""
    counts = tuple(int(c) for c in counts)
    if len(counts) < 2:
        raise ValueError(f"counts must hold at least 2 classes, got counts={counts!r}")
    return tuple(k for k, c in enumerate(counts) if c == min(counts))


def _minority_rows(W: Array, minority: Sequence[int]) -> Array:
    minority = tuple(int(k) for k in minority)
    if len(minority) < 2:
        raise ValueError(f"minority must name at least 2 classes, got minority={minority!r}")
    return jnp.take(W, jnp.asarray(minority), axis=-2)


def minority_cosine(W: Array, minority: Sequence[int]) -> Array:
    """Mean cosine between the classifier rows w_k, w_k' of distinct minority classes k, k'.

    mean_{k != k' in B} <w_k, w_k'>/(||w_k|| ||w_k'||): -1/(K-1) for a simplex ETF, 1 at minority
    collapse.

    Args:
      W: (..., K, d) classifiers; leading axes (seeds, grid points) are kept.
      minority: at least 2 class indices (e.g. `minority_classes(counts)`).

    Returns:
      (...) array; NaN where a minority row is 0.
    """
    V = _minority_rows(W, minority)
    V = V / jnp.linalg.norm(V, axis=-1, keepdims=True)
    C = jnp.einsum("...kd,...ld->...kl", V, V)
    m = V.shape[-2]
    off = ~np.eye(m, dtype=bool)
    return jnp.sum(jnp.where(off, C, 0.0), axis=(-2, -1)) / (m * (m - 1))


def minority_spread(W: Array, minority: Sequence[int]) -> Array:
    """max_{k, k' in B} ||w_k - w_k'|| / max_k ||w_k||: 0 exactly at minority collapse.

    Scale-free. Args as in `minority_cosine`; returns (...), NaN when W = 0.
    """
    V = _minority_rows(W, minority)
    D = jnp.linalg.norm(V[..., :, None, :] - V[..., None, :, :], axis=-1)
    scale = jnp.max(jnp.linalg.norm(W, axis=-1), axis=-1)
    return jnp.max(D, axis=(-2, -1)) / scale
