"""The layer-peeled model (Fang, He, Long, Su, PNAS 2021): the mean loss of W H under norm budgets
on the classifier and the features, kept feasible by an exact Euclidean projection.

    min_{W, H}  (1/N) sum_i loss(W h_i, y_i)
    s.t.        (1/K) sum_k ||w_k||^2 <= E_W,
                h_budget="class":  (1/K) sum_k (1/n_k) sum_{i in k} ||h_i||^2 <= E_H   (Fang et al.)
                h_budget="sample": (1/N) sum_i ||h_i||^2 <= E_H

The two feature budgets coincide for balanced counts; they differ under imbalance (minority
collapse, docs/theory.md §4).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from ufm.losses import LOSSES
from ufm.metrics import nc_metrics
from ufm.models._base import ClassLayout, choice_check, leaf, static
from ufm.models.ufm import Params

__all__ = ["LayerPeeled", "H_BUDGETS"]

H_BUDGETS = ("class", "sample")
_NEWTON_STEPS = 40  # the projection's 1-D root: monotone, quadratic convergence from below


def _ball(X: Array, a: Array, E: Array) -> Array:
    """Euclidean projection of the rows x_i of X onto {sum_i a_i ||x_i||^2 <= E}, a_i > 0.

    The KKT conditions give x_i/(1 + mu a_i) with mu >= 0 the root of
    q(mu) = sum_i a_i ||x_i||^2/(1 + mu a_i)^2 = E (mu = 0 when X is feasible). psi = q^{-1/2}
    is the (-2)-power mean of the affine maps (1 + mu a_i)/sqrt(a_i ||x_i||^2), hence concave and
    increasing, so Newton on psi(mu) = E^{-1/2} from mu = 0 rises monotonically to the root (one
    step when all a_i are equal: then the projection is a scaling). A last scaling by
    min(1, sqrt(E/q)) removes rounding, so that the result is feasible.
    """
    A = jnp.sum(X * X, axis=1)
    q0 = jnp.sum(a * A)
    target = jax.lax.rsqrt(E)
    tiny = jnp.finfo(X.dtype).tiny

    def newton(_, mu):
        den = 1.0 + mu * a
        q = jnp.maximum(jnp.sum(a * A / den**2), tiny)
        slope = jnp.sum(a * a * A / den**3) * q**-1.5  # d psi/d mu >= 0
        step = (target - jax.lax.rsqrt(q)) / jnp.where(slope > 0, slope, 1.0)
        return mu + jnp.where(slope > 0, jnp.maximum(step, 0.0), 0.0)

    mu = jax.lax.fori_loop(0, _NEWTON_STEPS, newton, jnp.zeros((), X.dtype))
    mu = jnp.where(q0 > E, mu, 0.0)
    Y = X / (1.0 + mu * a)[:, None]
    q = jnp.sum(a * jnp.sum(Y * Y, axis=1))
    outside = q > E
    return Y * jnp.where(outside, jnp.sqrt(E / jnp.where(outside, q, E)), 1.0)


@functools.cache
def _projected_gradient(K: int, N: int, c: float) -> optax.GradientTransformation:
    """The step of `LayerPeeled.default_optimizer` (cached: the same object for the same
    structure, so that jit reuses its compilation)."""

    def update(updates, state, params):
        W, H = params.W, params.H
        s = jnp.maximum(jnp.sum(W * W) / K, jnp.sum(H * H) / N)
        lr = c / jnp.maximum(s, jnp.finfo(W.dtype).tiny)
        return Params(-lr * updates.W, -(lr * N / K) * updates.H, None), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class LayerPeeled(ClassLayout):
    """Layer-peeled model: mean loss of the logits W H under norm budgets E_W, E_H.

    ``project`` is the exact Euclidean projection onto the feasible set, a product of two
    ellipsoids: W is scaled by min(1, sqrt(E_W / ((1/K) sum ||w_k||^2))); with
    h_budget="sample" H is scaled the same way; with h_budget="class" (Fang et al.'s per-class
    form, the default) it maps h_i -> h_i/(1 + mu/(K n_{y_i})), mu >= 0 a 1-D root (a scaling
    again when the counts are balanced). `ufm.solve` applies it after every update, so every
    iterate is feasible, and its stationarity measure ||project(x - g) - x|| vanishes exactly at
    the KKT points.

    Optimizer: a projection after a quasi-Newton step is not a convergent method (L-BFGS
    directions leave the active budgets and stall), so ``default_optimizer`` (what `ufm.solve`
    uses when given none) is projected gradient descent with step sizes from the curvature
    bounds at the current iterate; any first-order optax optimizer can be passed instead.

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= 1).
      n: samples per class: an int (balanced) or a length-K sequence of counts (imbalanced).
      loss: "ce" (cross-entropy) or "mse".
      E_W, E_H: norm budgets (> 0). Pytree leaves: vmappable, never recompile.
      h_budget: "class" (default; (1/K) sum_k (1/n_k) sum_{i in k} ||h_i||^2 <= E_H) or "sample"
        ((1/N) sum_i ||h_i||^2 <= E_H). The same constraint for balanced counts.
    """

    loss: str = static(default="ce", check=choice_check(LOSSES))
    E_W: float = leaf(default=1.0, lower=0.0, strict=True)
    E_H: float = leaf(default=1.0, lower=0.0, strict=True)
    h_budget: str = static(default="class", check=choice_check(H_BUDGETS))

    def h_weights(self, dtype=None) -> Array:
        """(N,) weight a_i of ||h_i||^2 in the feature budget sum_i a_i ||h_i||^2 <= E_H:
        1/(K n_{y_i}) ("class") or 1/N ("sample")."""
        counts = np.asarray(self.counts, dtype=float)
        if self.h_budget == "class":
            per_class = 1.0 / (self.K * counts)
        else:
            per_class = np.full(self.K, 1.0 / self.N)
        return jnp.asarray(np.repeat(per_class, self.counts), dtype)

    # --- constraints ----------------------------------------------------------------------------
    def budgets(self, params: Params) -> tuple[Array, Array]:
        """The constrained quantities ((1/K) sum_k ||w_k||^2, sum_i a_i ||h_i||^2)."""
        W, H = params.W, params.H
        return jnp.sum(W * W) / self.K, jnp.sum(self.h_weights(H.dtype) * jnp.sum(H * H, axis=0))

    def project(self, params: Params) -> Params:
        """Exact Euclidean projection onto the feasible set (see the class docstring)."""
        return _project(self, params)

    # --- parameters and objective ---------------------------------------------------------------
    def init(self, key: Array, scale: float | None = None, dtype=None) -> Params:
        """Gaussian start (entries N(0, scale^2), scale = 1/sqrt(d) by default), projected onto
        the feasible set."""
        scale = 1.0 / np.sqrt(self.d) if scale is None else scale
        kW, kH = jax.random.split(key)
        W = scale * jax.random.normal(kW, (self.K, self.d), dtype)
        H = scale * jax.random.normal(kH, (self.d, self.N), dtype)
        return self.project(Params(W, H, None))

    def logits(self, params: Params) -> Array:
        """(N, K) logits z_i = W h_i (of the parameters as given)."""
        return params.H.T @ params.W.T

    def objective(self, params: Params) -> Array:
        """(1/N) sum_i loss(W h_i, y_i) (no penalty: the budgets are constraints)."""
        return LOSSES[self.loss](self.logits(params), self.targets.astype(params.W.dtype))

    def default_optimizer(self) -> optax.GradientTransformation:
        """Projected gradient descent (with `project` applied by the solver) whose steps adapt to
        the iterate: lr_W = c/s and lr_H = (N/K) c/s, s = max((1/K)||W||^2, (1/N)||H||^2),
        c = 2 for CE and 1 for MSE.

        The loss's Hessian in the logits is <= 1/2 (CE) or 1 (MSE), so the Gauss-Newton part of
        the curvature is <= ||H||^2/(2N) in W and ||W||^2/(2N) in each h_i for CE: with the H
        block rescaled by N/K, both blocks' curvature is <= s/2 (CE) and lr * curvature <= 1.
        Uses no hyperparameter value, so one optimizer serves a whole sweep.
        """
        return _projected_gradient(self.K, self.N, 2.0 if self.loss == "ce" else 1.0)

    def metrics(self, params: Params) -> dict[str, Array]:
        """NC metrics (`ufm.nc_metrics`) plus the slacks excess_W = (1/K) sum ||w_k||^2 - E_W and
        excess_H = sum_i a_i ||h_i||^2 - E_H: the parameters are feasible iff both are <= 0."""
        bW, bH = self.budgets(params)
        out = nc_metrics(params.H, self.labels, W=params.W)
        out["excess_W"] = bW - self.E_W
        out["excess_H"] = bH - self.E_H
        return out


@jax.jit
def _project(model: LayerPeeled, params: Params) -> Params:
    W, H = params.W, params.H
    a_W = jnp.full((model.K,), 1.0 / model.K, W.dtype)
    W = _ball(W, a_W, jnp.asarray(model.E_W, W.dtype))
    H = _ball(H.T, model.h_weights(H.dtype), jnp.asarray(model.E_H, H.dtype)).T
    return Params(W, H, None)
