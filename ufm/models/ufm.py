"""The regularised unconstrained features model (Mixon et al.; Zhu et al. 2021; Zhou et al. 2022).

    f(W, H, b) = (1/N) sum_i loss(W h_i + b, y_i) + lam_W/2 ||W||_F^2 + lam_H/2 ||H||_F^2
                 + lam_b/2 ||b||^2

W in R^{K x d}, H in R^{d x N} (columns ordered class by class), b in R^K. The bias may be absent
(bias=False), free (lam_b = 0) or regularised (lam_b > 0).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.losses import LOSSES, PARAMETRIC_LOSSES
from ufm.metrics import nc_metrics
from ufm.models._base import (
    ClassLayout,
    bool_check,
    choice_check,
    frobenius_sq,
    is_concrete,
    leaf,
    static,
)
from ufm.models._fused import ufm_value_and_grad

__all__ = ["Params", "UFM"]


class Params(NamedTuple):
    """Parameters of a UFM: classifier W (K, d), features H (d, N), bias b (K,) or None."""

    W: Array
    H: Array
    b: Array | None


class UFM(ClassLayout):
    """Regularised UFM: mean loss of the logits W H + b plus lam/2 times squared Frobenius norms.

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= 1).
      n: samples per class: an int (balanced) or a length-K sequence of counts (imbalanced).
      loss: "ce" (cross-entropy), "mse" (one-hot targets, 1/(2N) sum of squares), "ls" (label
        smoothing with weight alpha, `ufm.losses.label_smoothing`) or "focal" (focal loss with
        exponent gamma, `ufm.losses.focal`).
      lam_W, lam_H, lam_b: weight decays (>= 0). Pytree leaves: vmappable, never recompile.
      bias: whether the model has a bias b (free when lam_b = 0).
      alpha: label-smoothing weight in [0, 1], used only by loss="ls" (0 there is plain CE).
      gamma: focal exponent (>= 0), used only by loss="focal" (0 there is plain CE).
      alpha and gamma are pytree leaves too; each must stay 0 for the other losses.
    """

    loss: str = static(default="ce", check=choice_check({**LOSSES, **PARAMETRIC_LOSSES}))
    lam_W: float = leaf(default=5e-4, lower=0.0)
    lam_H: float = leaf(default=5e-4, lower=0.0)
    lam_b: float = leaf(default=5e-4, lower=0.0)
    bias: bool = static(default=True, check=bool_check)
    alpha: float = leaf(default=0.0, lower=0.0, upper=1.0)
    gamma: float = leaf(default=0.0, lower=0.0)

    def __check__(self):
        for name, loss in (("alpha", "ls"), ("gamma", "focal")):
            value = getattr(self, name)
            if self.loss != loss and is_concrete(value) and np.any(np.asarray(value) != 0):
                raise ValueError(
                    f"{name} is used only with loss={loss!r}; with loss={self.loss!r} it must be "
                    f"0, got {name}={value!r}"
                )
        return super().__check__()

    # --- parameters and objective ---------------------------------------------------------------
    def init(self, key: Array, scale: float | None = None, dtype=None) -> Params:
        """Gaussian start: W, H entries i.i.d. N(0, scale^2) (scale 1/sqrt(d) by default); b = 0."""
        scale = 1.0 / np.sqrt(self.d) if scale is None else scale
        kW, kH = jax.random.split(key)
        W = scale * jax.random.normal(kW, (self.K, self.d), dtype)
        H = scale * jax.random.normal(kH, (self.d, self.N), dtype)
        b = jnp.zeros((self.K,), W.dtype) if self.bias else None
        return Params(W, H, b)

    def logits(self, params: Params) -> Array:
        """(N, K) logits z_i = W h_i + b."""
        Z = params.H.T @ params.W.T
        return Z if params.b is None else Z + params.b[None, :]

    def data_loss(self, params: Params) -> Array:
        """The mean loss (1/N) sum_i loss(z_i, y_i), without penalties."""
        logits, targets = self.logits(params), self.targets.astype(params.W.dtype)
        if self.loss in PARAMETRIC_LOSSES:
            fn, name = PARAMETRIC_LOSSES[self.loss]
            return fn(logits, targets, jnp.asarray(getattr(self, name), logits.dtype))
        return LOSSES[self.loss](logits, targets)

    def penalty(self, params: Params) -> Array:
        """lam_W/2 ||W||^2 + lam_H/2 ||H||^2 + lam_b/2 ||b||^2."""
        r = 0.5 * (self.lam_W * frobenius_sq(params.W) + self.lam_H * frobenius_sq(params.H))
        return r if params.b is None else r + 0.5 * self.lam_b * frobenius_sq(params.b)

    def objective(self, params: Params) -> Array:
        """f(W, H, b): mean loss plus penalties (docs/theory.md §0)."""
        return self.data_loss(params) + self.penalty(params)

    def value_and_grad(self, params: Params) -> tuple[Array, Params]:
        """(objective, gradient) by hand-derived, fused formulas (`ufm.models._fused`): what
        `ufm.solve` and `ufm.sweep` step with; equal to autodiff of `objective` up to rounding."""
        return ufm_value_and_grad(self, params)

    def metrics(self, params: Params) -> dict[str, Array]:
        """NC metrics of the parameters (`ufm.nc_metrics`); uncentred class means for the MSE
        model without bias, whose optimum is an orthogonal frame (the OF pitfall, docs/theory.md
        §8)."""
        mean = "zero" if (self.loss == "mse" and not self.bias) else "weighted"
        return nc_metrics(params.H, self.labels, W=params.W, b=params.b, mean=mean)
