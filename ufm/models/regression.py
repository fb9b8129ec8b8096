"""The regression UFM (Andriopoulos, Dong, Guo, Zhao & Ross, NeurIPS 2024): free features and a
linear read-out fitted to real targets under weight decay, with a free bias.

    f(W, H, b) = (1/(2N)) ||W H + b 1^T - Y||_F^2 + lam_W/2 ||W||_F^2 + lam_H/2 ||H||_F^2

Y in R^{K x N} holds the targets (K outputs, N samples), W in R^{K x d}, H in R^{d x N},
b in R^K. The feature penalty is not divided by N (ufm's convention); the paper's lam_H is
N lam_H here (docs/theory.md §18).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.metrics.regression import nrc_metrics
from ufm.models._base import (
    Model,
    check_real,
    frobenius_sq,
    int_check,
    is_concrete,
    leaf,
    static,
)
from ufm.models.ufm import Params

__all__ = ["RegressionUFM"]


def _targets_check(name: str, value):
    """A field check for the targets: a finite real (K, N) array with K >= 1 and N >= 2 (tracers
    pass unchanged)."""
    value = check_real(name, value, -np.inf)
    shape = np.shape(value)
    if is_concrete(value) and (len(shape) != 2 or shape[0] < 1 or shape[1] < 2):
        raise ValueError(
            f"{name} must be a (K, N) array of targets (one column per sample, K >= 1, N >= 2), "
            f"got {name} with shape {shape}"
        )
    return value


class RegressionUFM(Model):
    """Regression UFM: mean squared error of W H + b 1^T against real targets Y, plus lam/2 times
    squared Frobenius norms of W and H (the bias is free).

    Args:
      d: feature dimension (>= 1).
      Y: (K, N) targets, one column per sample. A pytree leaf like lam_W and lam_H: data, not
        structure, so it is never hashed, and a sweep may vary it without recompiling as long
        as its shape stays.
      lam_W, lam_H: weight decays (>= 0). Pytree leaves.
    """

    d: int = static(check=int_check(1))
    Y: Array = leaf(check=_targets_check)
    lam_W: float = leaf(default=1e-3, lower=0.0)
    lam_H: float = leaf(default=1e-3, lower=0.0)

    @property
    def K(self) -> int:
        """Number of outputs (rows of Y)."""
        return self.Y.shape[-2]

    @property
    def N(self) -> int:
        """Number of samples (columns of Y)."""
        return self.Y.shape[-1]

    # --- parameters and objective ---------------------------------------------------------------
    def init(self, key: Array, scale: float | None = None, dtype=None) -> Params:
        """Gaussian start: W, H entries i.i.d. N(0, scale^2) (scale 1/sqrt(d) by default); b = 0."""
        scale = 1.0 / np.sqrt(self.d) if scale is None else scale
        kW, kH = jax.random.split(key)
        W = scale * jax.random.normal(kW, (self.K, self.d), dtype)
        H = scale * jax.random.normal(kH, (self.d, self.N), dtype)
        return Params(W, H, jnp.zeros((self.K,), W.dtype))

    def predictions(self, params: Params) -> Array:
        """(K, N) outputs W H + b 1^T."""
        return params.W @ params.H + params.b[:, None]

    def objective(self, params: Params) -> Array:
        """f(W, H, b) of the module docstring."""
        R = self.predictions(params) - jnp.asarray(self.Y, params.W.dtype)
        penalty = self.lam_W * frobenius_sq(params.W) + self.lam_H * frobenius_sq(params.H)
        return 0.5 * (frobenius_sq(R) / self.N + penalty)

    def metrics(self, params: Params) -> dict[str, Array]:
        """The regression-collapse metrics NRC1-NRC3 (`ufm.metrics.regression.nrc_metrics`)."""
        return nrc_metrics(params.H, params.W, jnp.asarray(self.Y, params.W.dtype))
