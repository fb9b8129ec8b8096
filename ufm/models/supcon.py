"""The supervised contrastive loss on the sphere as a UFM (Khosla et al. 2020, L^sup_out; Graf,
Hofer, Niethammer & Kwitt, ICML 2021): free unit-norm features, every sample an anchor whose
positives are the other samples of its class, in one full batch.

    L(H) = (1/N) sum_i [ log sum_{a != i} exp(<h_i, h_a>/tau)
                         - (1/(n_{y_i} - 1)) sum_{p != i, y_p = y_i} <h_i, h_p>/tau ],
    ||h_i|| = 1

(the denominator of anchor i runs over every other sample, positives included). There is no
classifier: the parameters are the features H in R^{d x N}, columns class by class. The optimum,
a collapsed simplex ETF for every tau, is in docs/theory.md §20.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.geometry import _unit
from ufm.metrics import nc_metrics
from ufm.models._base import ClassLayout, leaf

__all__ = ["SupConUFM"]


class SupConUFM(ClassLayout):
    """Supervised contrastive UFM: the full-batch SupCon loss of unit-norm features.

    The objective is evaluated at the retraction H -> H/||h_i|| column by column, so on the
    sphere it is the constrained loss and its Euclidean gradient there is the Riemannian one;
    ``project`` is that retraction, which `ufm.solve` applies after every update (as for
    `ufm.NormalizedUFM`).

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= 1).
      n: samples per class (>= 2 each, so that every anchor has a positive): an int (balanced)
        or a length-K sequence of counts.
      tau: temperature (> 0). A pytree leaf (vmappable, never recompiles).
    """

    tau: float = leaf(default=1.0, lower=0.0, strict=True)

    def __check__(self):
        if min(self.counts) < 2:
            raise ValueError(
                f"n must be >= 2 in every class for the contrastive loss (an anchor needs a "
                f"positive), got n={self.n!r}"
            )
        return super().__check__()

    def project(self, H: Array) -> Array:
        """The retraction onto the sphere: every column of H to unit norm."""
        return _unit(H, 0)

    def init(self, key: Array, dtype=None) -> Array:
        """Uniform start on the sphere: Gaussian columns, normalised."""
        return self.project(jax.random.normal(key, (self.d, self.N), dtype))

    def objective(self, H: Array) -> Array:
        """L(H) of the module docstring, H taken at its retraction."""
        Z = self.project(H)
        S = (Z.T @ Z) / self.tau
        labels = np.repeat(np.arange(self.K), self.counts)
        same = labels[:, None] == labels[None, :]
        eye = np.eye(self.N, dtype=bool)
        lse = jax.nn.logsumexp(jnp.where(eye, -jnp.inf, S), axis=1)
        positives = jnp.asarray((same & ~eye) / (np.asarray(self.counts)[labels] - 1)[:, None])
        return jnp.mean(lse - jnp.sum(positives * S, axis=1))

    def metrics(self, H: Array) -> dict[str, Array]:
        """NC metrics of the retracted features (`ufm.nc_metrics`, no classifier)."""
        return nc_metrics(self.project(H), self.labels, K=self.K)
