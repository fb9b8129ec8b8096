"""Normalized features and classifiers (Yaras et al., NeurIPS 2022): the loss of logits W H / tau
with every classifier row on the sphere of radius r_W and every feature on the sphere of radius
r_H (a product of spheres, the oblique manifold).

    min (1/N) sum_i loss(W h_i / tau, y_i)   s.t.   ||w_k|| = r_W,  ||h_i|| = r_H

Only 1/tau_eff = r_W r_H / tau matters for the value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from ufm.geometry import _unit
from ufm.losses import LOSSES
from ufm.metrics import nc_metrics
from ufm.models._base import ClassLayout, choice_check, leaf, static
from ufm.models.ufm import Params

__all__ = ["NormalizedUFM"]


class NormalizedUFM(ClassLayout):
    """Normalized-feature UFM: loss of W H / tau with rows w_k and columns h_i on spheres.

    The objective is evaluated at the retraction of the parameters, W -> r_W W/||w_k|| row by row
    and H -> r_H H/||h_i|| column by column. On the manifold it is the constrained objective; off
    it it is constant along rays, so its Euclidean gradient at a point of the manifold is the
    Riemannian gradient (tangent to the spheres). ``project`` is that retraction, which
    `ufm.solve` applies after every update: every iterate lies on the manifold, a gradient step
    followed by it is a Riemannian gradient step, and the stationarity measure
    ||project(x - g) - x|| vanishes exactly where the Riemannian gradient does.

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= 1).
      n: samples per class: an int (balanced) or a length-K sequence of counts (imbalanced).
      tau: temperature (> 0).
      r_W, r_H: radii of the classifier rows and of the features (> 0).
      loss: "ce" (cross-entropy, the studied case) or "mse".
    tau, r_W and r_H are pytree leaves (vmappable, never recompile).
    """

    tau: float = leaf(default=1.0, lower=0.0, strict=True)
    r_W: float = leaf(default=1.0, lower=0.0, strict=True)  # noqa: N815 (as lam_W in ufm.UFM)
    r_H: float = leaf(default=1.0, lower=0.0, strict=True)  # noqa: N815
    loss: str = static(default="ce", check=choice_check(LOSSES))

    # --- manifold -------------------------------------------------------------------------------
    def project(self, params: Params) -> Params:
        """The retraction onto the manifold: rows of W to radius r_W, columns of H to radius r_H."""
        W, H = params.W, params.H
        return Params(self.r_W * _unit(W, 1), self.r_H * _unit(H, 0), None)

    def sphere_error(self, params: Params) -> tuple[Array, Array]:
        """(max_k | ||w_k|| - r_W |, max_i | ||h_i|| - r_H |): distances from the manifold."""
        W, H = params.W, params.H
        eW = jnp.max(jnp.abs(jnp.sqrt(jnp.sum(W * W, axis=1)) - self.r_W))
        eH = jnp.max(jnp.abs(jnp.sqrt(jnp.sum(H * H, axis=0)) - self.r_H))
        return eW, eH

    # --- parameters and objective ---------------------------------------------------------------
    def init(self, key: Array, dtype=None) -> Params:
        """Uniform start on the manifold: Gaussian rows and columns, normalised."""
        kW, kH = jax.random.split(key)
        W = jax.random.normal(kW, (self.K, self.d), dtype)
        H = jax.random.normal(kH, (self.d, self.N), dtype)
        return self.project(Params(W, H, None))

    def logits(self, params: Params) -> Array:
        """(N, K) logits <w_k, h_i>/tau at the retraction of the parameters."""
        p = self.project(params)
        return (p.H.T @ p.W.T) / self.tau

    def objective(self, params: Params) -> Array:
        """(1/N) sum_i loss(W h_i / tau, y_i), W and H taken at their retraction."""
        return LOSSES[self.loss](self.logits(params), self.targets.astype(params.W.dtype))

    def metrics(self, params: Params) -> dict[str, Array]:
        """NC metrics (`ufm.nc_metrics`) plus sphere_W, sphere_H (`sphere_error`)."""
        out = nc_metrics(params.H, self.labels, W=params.W)
        out["sphere_W"], out["sphere_H"] = self.sphere_error(params)
        return out
