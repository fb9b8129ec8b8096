"""Multi-label classification under the UFM with the pick-all-label cross-entropy (Li, Li, Wang &
Qu, ICML 2024, "Neural collapse in multi-label learning with pick-all-label loss";
docs/theory.md §6.3): samples carry label sets, and the loss sums the CE of every label in the set,

    f(W, H, b) = (1/N) sum_i sum_{k in S_i} -log softmax(W h_i + b)_k
                 + lam_W/2 ||W||^2 + lam_H/2 ||H||^2 + lam_b/2 ||b||^2.

Its exact optimum is in `ufm.theory.multilabel`, the multi-label NC measures in
`ufm.metrics.multilabel`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.losses import cross_entropy
from ufm.metrics.multilabel import multi_hot, tagwise_metrics
from ufm.metrics.nc import nc_metrics
from ufm.models._base import (
    Model,
    bool_check,
    check_int,
    counts_check,
    int_check,
    leaf,
    static,
)
from ufm.models.ufm import UFM, Params

__all__ = ["MultiLabelUFM", "all_label_sets"]


def all_label_sets(K: int, multiplicities: Sequence[int] = (1, 2)) -> tuple[tuple[int, ...], ...]:
    """Every label set of the given sizes: all subsets of {0..K-1} of each size, by size then
    lexicographically (the within-multiplicity balanced layout of Li et al.)."""
    K = check_int("K", K, 2)
    out = []
    for m in multiplicities:
        m = check_int("multiplicities", m, 1)
        if m > K:
            raise ValueError(f"multiplicities must be <= K={K}, got {m}")
        out.extend(itertools.combinations(range(K), m))
    return tuple(out)


class MultiLabelUFM(Model):
    """Regularised UFM with label sets and the pick-all-label CE (see the module docstring).

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= 1).
      label_sets: the distinct label sets, each a non-empty tuple of distinct classes in [0, K)
        (e.g. `all_label_sets(K, (1, 2))`). Static.
      n: samples per label set: an int, or one count per label set.
      lam_W, lam_H, lam_b: weight decays (>= 0), pytree leaves.
      bias: whether the model has a bias b (free when lam_b = 0).
    The columns of H are ordered set by set: n_1 samples of label_sets[0], then label_sets[1], ...
    """

    K: int = static(check=int_check(2))
    d: int = static(check=int_check(1))
    label_sets: tuple[tuple[int, ...], ...] = ()
    n: int | tuple[int, ...] = static(default=1, check=counts_check)
    lam_W: float = leaf(default=5e-4, lower=0.0)  # noqa: N815 (the paper's name, as in ufm.UFM)
    lam_H: float = leaf(default=5e-4, lower=0.0)  # noqa: N815
    lam_b: float = leaf(default=5e-4, lower=0.0)
    bias: bool = static(default=True, check=bool_check)

    def __check__(self):
        sets = []
        for S in self.label_sets:
            S = tuple(sorted(int(k) for k in S))
            if not S or len(set(S)) != len(S) or S[0] < 0 or S[-1] >= self.K:
                raise ValueError(
                    "label_sets must hold non-empty sets of distinct classes in [0, K), "
                    f"got {tuple(self.label_sets)!r}"
                )
            sets.append(S)
        if not sets or len(set(sets)) != len(sets):
            raise ValueError(f"label_sets must be non-empty and distinct, got {self.label_sets!r}")
        n = self.n
        if isinstance(n, tuple):
            if len(n) != len(sets):
                raise ValueError(
                    f"n must have one count per label set ({len(sets)}), got len(n)={len(n)}"
                )
            n = n[0] if len(set(n)) == 1 else n
        return {"label_sets": tuple(sets), "n": n}

    # --- structure (static) -------------------------------------------------------------------
    @property
    def counts(self) -> tuple[int, ...]:
        """Samples per label set."""
        return (self.n,) * len(self.label_sets) if isinstance(self.n, int) else self.n

    @property
    def N(self) -> int:
        return sum(self.counts)

    @property
    def set_index(self) -> np.ndarray:
        """(N,) index into label_sets of each column of H."""
        return np.repeat(np.arange(len(self.label_sets)), self.counts)

    @property
    def set_targets(self) -> np.ndarray:
        """(number of sets, K) multi-hot rows, one per label set."""
        return multi_hot(self.label_sets, self.K)

    @property
    def targets(self) -> Array:
        """(N, K) multi-hot target of each sample."""
        return jnp.asarray(self.set_targets[self.set_index])

    # --- parameters and objective ---------------------------------------------------------------
    init = UFM.init  # the same Gaussian start and logits W h_i + b as the UFM
    logits = UFM.logits

    def data_loss(self, params: Params) -> Array:
        """Pick-all-label CE: (1/N) sum_i sum_{k in S_i} -log softmax(z_i)_k."""
        return cross_entropy(self.logits(params), self.targets.astype(params.W.dtype))

    penalty = UFM.penalty  # lam_W/2 ||W||^2 + lam_H/2 ||H||^2 + lam_b/2 ||b||^2

    def objective(self, params: Params) -> Array:
        return self.data_loss(params) + self.penalty(params)

    def metrics(self, params: Params) -> dict[str, Array]:
        """Within-set collapse and multi-label NC (jit-able):

        nc1, nc1_trace, cdnv: `ufm.nc_metrics` of H with the label sets as the classes
          (labels = `set_index`, one class per label set, weighted global mean; with a single
          label set there are none);
        etf_W, etf_singles, tagwise_residual_m, tagwise_scale_m: `ufm.metrics.multilabel
          .tagwise_metrics` of (H, W).
        """
        H = params.H
        out = {}
        if len(self.label_sets) >= 2:
            nc = nc_metrics(H, jnp.asarray(self.set_index), K=len(self.label_sets))
            out = {k: nc[k] for k in ("nc1", "nc1_trace", "cdnv")}
        return out | tagwise_metrics(H, params.W, jnp.asarray(self.set_index), self.label_sets)
