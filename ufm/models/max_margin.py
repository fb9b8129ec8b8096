"""The max-margin unconstrained features model, or UF-SVM (Thrampoulidis, Kini, Vakilian & Behnia,
NeurIPS 2022): the smallest weights and features that separate every sample by a unit margin.

    min_{W, H}  1/2 (||W||_F^2 + ||H||_F^2)
    s.t.        (w_{y_i} - w_c)^T h_i >= 1   for every sample i and every class c != y_i

No bias; any class counts; d >= K-1 (for d = 1 and K >= 3 no point is feasible). The problem is
the limit of the regularised CE-UFM as the weight decay goes to 0 (docs/theory.md §17).

It is solved as a saddle-point problem: the parameters carry one multiplier nu_{c,i} >= 0 per
margin constraint, and the objective is the augmented Lagrangian (penalty 1) of the slacks
s_{c,i} = 1 - (z_{y_i,i} - z_{c,i}), Z = W H,

    L(W, H, nu) = 1/2 (||W||^2 + ||H||^2) + 1/2 sum_{c != y_i} [ max(0, nu_{c,i} + s_{c,i})^2
                                                                - nu_{c,i}^2 ],

whose saddle points (min over W, H, max over nu) are the KKT points of the UF-SVM, where L equals
1/2 (||W||^2 + ||H||^2) and nu is the vector of Lagrange multipliers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from ufm.metrics import nc_metrics
from ufm.models._base import ClassLayout, frobenius_sq

__all__ = ["MaxMarginParams", "MaxMarginUFM"]


class MaxMarginParams(NamedTuple):
    """Parameters of the UF-SVM: classifier W (K, d), features H (d, N), and the multipliers nu
    (K, N) of the margin constraints (nu_{c,i} for class c and sample i; 0 at c = y_i)."""

    W: Array
    H: Array
    nu: Array


def _onehot(K: int, counts: tuple[int, ...], dtype) -> Array:
    """(K, N) one-hot targets Y, columns class by class."""
    return jnp.asarray(np.eye(K)[:, np.repeat(np.arange(K), counts)], dtype)


def _slack(W: Array, H: Array, Y: Array) -> Array:
    """(K, N) slacks s_{c,i} = 1 - (z_{y_i,i} - z_{c,i}) of Z = W H (<= 0 where the margin
    constraint (i, c) holds; entries at c = y_i are 1 and must be masked by the caller)."""
    Z = W @ H
    return 1.0 - (jnp.sum(Z * Y, axis=0)[None, :] - Z)


@functools.cache
def _primal_dual(K: int, counts: tuple[int, ...]) -> optax.GradientTransformation:
    """The step of `MaxMarginUFM.default_optimizer` (cached per structure, so that jit reuses the
    compiled loop)."""

    def update(grads, state, params):
        W, H, nu = params
        Y = _onehot(K, counts, W.dtype)
        lr_W = 1.0 / (1.0 + 2.0 * (K - 1) * frobenius_sq(H))
        lr_H = 1.0 / (1.0 + 2.0 * K * jnp.max(jnp.sum(W * W, axis=1)))
        W_new, H_new = W - lr_W * grads.W, H - lr_H * grads.H
        nu_new = jnp.maximum(nu + _slack(W_new, H_new, Y), 0.0) * (1.0 - Y)
        return MaxMarginParams(W_new - W, H_new - H, nu_new - nu), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class MaxMarginUFM(ClassLayout):
    """The UF-SVM: min 1/2 (||W||^2 + ||H||^2) subject to unit margins, as the saddle problem of
    its augmented Lagrangian (see the module docstring).

    ``objective`` is the augmented Lagrangian L(W, H, nu): a function to minimise over W, H and
    to maximise over nu, so a plain minimiser (L-BFGS, Adam) must not be passed to `ufm.solve`
    for it. ``default_optimizer`` (what `ufm.solve` uses when given none) is the first-order
    method of multipliers: a gradient step in W and H with step sizes from curvature bounds at
    the current iterate, then the exact multiplier update nu <- max(0, nu + s(W, H)) at the new
    point. The stationarity measure of `ufm.solve`, the norm of the full gradient, vanishes
    exactly at the KKT points: grad_nu L = max(0, nu + s) - nu is 0 iff s <= 0, nu >= 0 and
    nu s = 0.

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= K-1).
      n: samples per class: an int (balanced) or a length-K sequence of counts (imbalanced).
    The model has no hyperparameters (the problem is scale-free up to the unit margin).
    """

    def __check__(self):
        if self.d < self.K - 1:
            raise ValueError(
                f"d must be >= K-1 = {self.K - 1} for the max-margin UFM, got d={self.d}: "
                "with d = 1 and K >= 3 no point meets every margin constraint, and for "
                "2 <= d < K-1 the optimum is not the SELI geometry"
            )
        return super().__check__()

    def _mask(self, dtype) -> Array:
        """(K, N): 1 where a margin constraint exists (c != y_i), else 0."""
        return 1.0 - _onehot(self.K, self.counts, dtype)

    def slack(self, params: MaxMarginParams) -> Array:
        """(K, N) slacks 1 - (z_{y_i,i} - z_{c,i}), 0 at c = y_i: all margins hold iff all <= 0."""
        return _slack(params.W, params.H, _onehot(self.K, self.counts, params.W.dtype)) * (
            self._mask(params.W.dtype)
        )

    # --- parameters and objective ---------------------------------------------------------------
    def init(self, key: Array, scale: float | None = None, dtype=None) -> MaxMarginParams:
        """Gaussian start (entries of W, H i.i.d. N(0, scale^2), scale = 1/sqrt(d) by default),
        multipliers 0."""
        scale = 1.0 / np.sqrt(self.d) if scale is None else scale
        kW, kH = jax.random.split(key)
        W = scale * jax.random.normal(kW, (self.K, self.d), dtype)
        H = scale * jax.random.normal(kH, (self.d, self.N), dtype)
        return MaxMarginParams(W, H, jnp.zeros((self.K, self.N), W.dtype))

    def norm_cost(self, params: MaxMarginParams) -> Array:
        """1/2 (||W||^2 + ||H||^2): the UF-SVM objective (without the constraint terms)."""
        return 0.5 * (frobenius_sq(params.W) + frobenius_sq(params.H))

    def objective(self, params: MaxMarginParams) -> Array:
        """The augmented Lagrangian L(W, H, nu) of the module docstring; equal to ``norm_cost``
        at every KKT point."""
        W, H, nu = params
        mask = self._mask(W.dtype)
        Y = 1.0 - mask
        t = jnp.maximum(nu + _slack(W, H, Y), 0.0) * mask
        return self.norm_cost(params) + 0.5 * (frobenius_sq(t) - frobenius_sq(nu * mask))

    def default_optimizer(self) -> optax.GradientTransformation:
        """The first-order method of multipliers (see the class docstring): lr_W =
        1/(1 + 2(K-1)||H||^2) and lr_H = 1/(1 + 2K max_k ||w_k||^2), bounds on the curvature of
        L in W and in each h_i, then nu <- max(0, nu + s(W_new, H_new))."""
        return _primal_dual(self.K, self.counts)

    def metrics(self, params: MaxMarginParams) -> dict[str, Array]:
        """NC metrics (`ufm.nc_metrics`) plus min_margin, the smallest (w_{y_i} - w_c)^T h_i
        (>= 1 iff every constraint holds), and norm_cost, 1/2 (||W||^2 + ||H||^2)."""
        W, H, _ = params
        Y = _onehot(self.K, self.counts, W.dtype)
        out = nc_metrics(H, self.labels, W=W)
        out["min_margin"] = jnp.min(jnp.where(Y > 0, jnp.inf, 1.0 - _slack(W, H, Y)))
        out["norm_cost"] = self.norm_cost(params)
        return out
