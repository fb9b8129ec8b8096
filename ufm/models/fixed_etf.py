"""The UFM with a fixed simplex-ETF classifier (Yang, Chen, Li, Xie, Lin & Tao, NeurIPS 2022):
only the features are learned, under a norm budget, against K unit classifier rows fixed to a
simplex ETF.

    min_H  (1/N) sum_i CE(W h_i, y_i)     W fixed: ||w_k|| = 1, <w_j, w_k> = -1/(K-1)
    s.t.   h_budget="each":    ||h_i||^2 <= E_H for every i
           h_budget="sample":  (1/N) sum_i ||h_i||^2 <= E_H
           h_budget="class":   (1/K) sum_k (1/n_k) sum_{i in k} ||h_i||^2 <= E_H   (Fang et al.)

No bias; any counts; d >= K-1. The three budgets coincide for balanced counts; under imbalance
the per-class budget gives different class radii (docs/theory.md §19).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from ufm.geometry import simplex_etf
from ufm.losses import cross_entropy
from ufm.metrics import nc_metrics
from ufm.models._base import ClassLayout, choice_check, leaf, static
from ufm.models.layer_peeled import LayerPeeled, _ball

__all__ = ["FixedETFUFM", "FIXED_ETF_BUDGETS"]

FIXED_ETF_BUDGETS = ("class", "sample", "each")


@functools.cache
def _projected_gradient(lr: float) -> optax.GradientTransformation:
    """A gradient step of size lr (`ufm.solve` projects after it); cached per step size so that
    jit reuses the compiled loop."""
    return optax.sgd(lr)


class FixedETFUFM(ClassLayout):
    """Fixed-ETF-classifier UFM: mean CE of W h_i with W a unit simplex ETF (``W``, fixed, not a
    parameter) and the features H (d, N) under the budget E_H.

    ``project`` is the exact Euclidean projection onto the budget: h_i -> h_i min(1,
    sqrt(E_H)/||h_i||) for "each"; a scaling of H for "sample"; h_i -> h_i/(1 + mu/(K n_{y_i})),
    mu >= 0 a 1-D root, for "class" (as in `ufm.LayerPeeled`). The problem is convex;
    ``default_optimizer`` is projected gradient descent with the step 1/L, L = K/(2(K-1)N) a bound
    on the curvature of the loss in each h_i (the CE Hessian in the logits is <= 1/2 and
    ||W||_op^2 = K/(K-1)).

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= K-1).
      n: samples per class: an int (balanced) or a length-K sequence of counts (imbalanced).
      E_H: feature budget (> 0). A pytree leaf (vmappable, never recompiles).
      h_budget: "class" (default; Fang et al.'s per-class form), "sample" (the sample average)
        or "each" (every feature).
    """

    E_H: float = leaf(default=1.0, lower=0.0, strict=True)
    h_budget: str = static(default="class", check=choice_check(FIXED_ETF_BUDGETS))

    def __check__(self):
        if self.d < self.K - 1:
            raise ValueError(
                f"d must be >= K-1 = {self.K - 1} to hold a simplex ETF classifier, got d={self.d}"
            )
        return super().__check__()

    @property
    def W(self) -> Array:
        """(K, d) the fixed classifier: unit rows forming a simplex ETF (`ufm.geometry.simplex_etf`
        on the first K-1 coordinate axes)."""
        return simplex_etf(self.K, self.d).T

    # the weights a_i of the shared budgets, sum_i a_i ||h_i||^2 <= E_H ("each" does not use them)
    h_weights = LayerPeeled.h_weights

    def project(self, H: Array) -> Array:
        """Exact Euclidean projection onto the feature budget (see the class docstring)."""
        E = jnp.asarray(self.E_H, H.dtype)
        if self.h_budget == "each":
            sq = jnp.sum(H * H, axis=0, keepdims=True)
            out = sq > E
            return H * jnp.where(out, jnp.sqrt(E / jnp.where(out, sq, 1.0)), 1.0)
        return _ball(H.T, self.h_weights(H.dtype), E).T

    def init(self, key: Array, scale: float | None = None, dtype=None) -> Array:
        """Gaussian start (entries N(0, scale^2), scale 1/sqrt(d) by default), projected."""
        scale = 1.0 / np.sqrt(self.d) if scale is None else scale
        return self.project(scale * jax.random.normal(key, (self.d, self.N), dtype))

    def objective(self, H: Array) -> Array:
        """(1/N) sum_i CE(W h_i, y_i) (no penalty: the budget is a constraint)."""
        W = self.W.astype(H.dtype)
        return cross_entropy(H.T @ W.T, self.targets.astype(H.dtype))

    def default_optimizer(self) -> optax.GradientTransformation:
        """Projected gradient descent with lr = 2(K-1)N/K (see the class docstring)."""
        return _projected_gradient(2.0 * (self.K - 1) * self.N / self.K)

    def metrics(self, H: Array) -> dict[str, Array]:
        """NC metrics of H against the fixed classifier (`ufm.nc_metrics`)."""
        return nc_metrics(H, self.labels, W=self.W.astype(H.dtype))
