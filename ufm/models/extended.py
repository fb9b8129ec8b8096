"""Extended and deep UFMs (Tirer & Bruna 2022; Dang et al. 2023; Sukenik, Mondelli & Lampert 2023):
free features H_1 pass through depth-1 further layers, linear or ReLU, before the classifier,
and every layer has its own weight decay.

    H_{l+1} = sigma(W_l H_l)  (l = 1, ..., L-1),   logits Z = W_L H_L + b 1^T,   L = depth
    f = (1/N) sum_i loss(z_i, y_i) + lam_H/2 ||H_1||^2 + sum_l lam_l/2 ||W_l||^2 + lam_b/2 ||b||^2

sigma is the identity ("linear") or ReLU. depth = 1 is the plain UFM (`ufm.UFM`). Every hidden
width is d: W_l in R^{d x d} for l < L and W_L in R^{K x d}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.geometry import etf_gram, of_gram
from ufm.losses import LOSSES
from ufm.metrics import nc_metrics
from ufm.models._base import (
    ClassLayout,
    bool_check,
    check_real,
    choice_check,
    frobenius_sq,
    int_check,
    is_concrete,
    leaf,
    static,
)

__all__ = ["DeepParams", "ExtendedUFM", "ACTIVATIONS"]

ACTIVATIONS = {"linear": lambda x: x, "relu": jax.nn.relu}


class DeepParams(NamedTuple):
    """Parameters of a deep UFM: features H (d, N) = H_1, layers Ws = (W_1, ..., W_L) with W_l
    (d, d) for l < L and the classifier W_L (K, d), and the bias b (K,) or None.

    ``W`` is the classifier W_L, so code written for `ufm.Params` (W, H, b) reads a deep model's
    classifier and input features.
    """

    H: Array
    Ws: tuple[Array, ...]
    b: Array | None

    @property
    def W(self) -> Array:
        """The classifier W_L = Ws[-1]."""
        return self.Ws[-1]


def _check_lams(value, depth: int) -> tuple:
    """lam_Ws as a length-depth tuple of weight decays >= 0 (a single number is repeated)."""
    if isinstance(value, (str, bytes)):
        raise ValueError(
            f"lam_Ws must be a number or {depth} numbers (one per layer), got {value!r}"
        )
    if isinstance(value, np.ndarray) or (is_concrete(value) and hasattr(value, "shape")):
        value = tuple(np.asarray(value, dtype=float).reshape(-1)) if np.ndim(value) else value
    if not isinstance(value, Sequence):
        return (check_real("lam_Ws", value),) * depth
    if len(value) != depth:
        raise ValueError(
            f"lam_Ws must have one weight decay per layer (length depth={depth}), "
            f"got len(lam_Ws)={len(value)}"
        )
    return tuple(check_real(f"lam_Ws[{i}]", v) for i, v in enumerate(value))


def _layer_gram_gaps(H: Array, Y: Array) -> tuple[Array, Array]:
    """Distances of the class-mean Gram of H from the ETF and the OF Gram (unit Frobenius).

    etf: || G/||G|| - P/sqrt(K-1) || with G the Gram of the means centred at the global mean
    (sample-weighted); of: || G0/||G0|| - I/sqrt(K) || with G0 the Gram of the uncentred means.
    """
    K = Y.shape[1]
    M = (H @ Y) / jnp.sum(Y, axis=0)[None, :]  # (d, K) class means
    Mbar = M - jnp.mean(H, axis=1, keepdims=True)

    def gap(X, E):
        G = X.T @ X
        nG = jnp.linalg.norm(G)
        return jnp.where(nG > 0, jnp.linalg.norm(G / jnp.where(nG > 0, nG, 1.0) - E), jnp.nan)

    return gap(Mbar, etf_gram(K, H.dtype)), gap(M, of_gram(K, H.dtype))


class ExtendedUFM(ClassLayout):
    """Extended / deep UFM: free features through depth-1 further layers, then the classifier.

    Args:
      K: number of classes (>= 2).
      d: feature dimension and width of every hidden layer (>= 1).
      n: samples per class: an int (balanced) or a length-K sequence of counts (imbalanced).
      depth: number of weight matrices L (>= 1), the classifier included; depth = 1 is the UFM,
        depth = 2 with ReLU is Tirer & Bruna's extended UFM.
      activation: "linear" or "relu", applied after every layer but the classifier.
      loss: "mse" (one-hot targets) or "ce".
      lam_H: weight decay of the features H_1 (>= 0).
      lam_Ws: weight decays of W_1, ..., W_L (>= 0): one number for all layers or a length-depth
        sequence (stored as a tuple).
      lam_b: weight decay of the bias (>= 0; 0 = free bias).
      bias: whether the classifier has a bias b.
    lam_H, lam_Ws (each entry) and lam_b are pytree leaves (vmappable, never recompile).
    """

    depth: int = static(default=2, check=int_check(1))
    activation: str = static(default="linear", check=choice_check(ACTIVATIONS))
    loss: str = static(default="mse", check=choice_check(LOSSES))
    lam_H: float = leaf(default=5e-4, lower=0.0)  # noqa: N815 (the papers' names, as in ufm.UFM)
    lam_Ws: float | tuple[float, ...] = leaf(default=5e-4, check=lambda name, v: v)  # noqa: N815
    lam_b: float = leaf(default=0.0, lower=0.0)
    bias: bool = static(default=False, check=bool_check)

    def __check__(self):
        return {**(super().__check__() or {}), "lam_Ws": _check_lams(self.lam_Ws, self.depth)}

    # --- parameters and objective ---------------------------------------------------------------
    def init(self, key: Array, scale: float | None = None, dtype=None) -> DeepParams:
        """Gaussian start: entries of H and every W_l i.i.d. N(0, scale^2), scale = 1/sqrt(d) by
        default (so that each hidden layer roughly preserves norms); b = 0."""
        scale = 1.0 / np.sqrt(self.d) if scale is None else scale
        keys = jax.random.split(key, self.depth + 1)
        H = scale * jax.random.normal(keys[0], (self.d, self.N), dtype)
        shapes = [(self.d, self.d)] * (self.depth - 1) + [(self.K, self.d)]
        Ws = tuple(
            scale * jax.random.normal(k, s, dtype) for k, s in zip(keys[1:], shapes, strict=True)
        )
        b = jnp.zeros((self.K,), H.dtype) if self.bias else None
        return DeepParams(H, Ws, b)

    def features(self, params: DeepParams) -> list[Array]:
        """[H_1, ..., H_L]: the input features and every hidden layer's output (d, N)."""
        act = ACTIVATIONS[self.activation]
        Hs = [params.H]
        for Wl in params.Ws[:-1]:
            Hs.append(act(Wl @ Hs[-1]))
        return Hs

    def logits(self, params: DeepParams) -> Array:
        """(N, K) logits z_i = W_L h_{L,i} + b."""
        Z = self.features(params)[-1].T @ params.Ws[-1].T
        return Z if params.b is None else Z + params.b[None, :]

    def data_loss(self, params: DeepParams) -> Array:
        """The mean loss (1/N) sum_i loss(z_i, y_i), without penalties."""
        return LOSSES[self.loss](self.logits(params), self.targets.astype(params.H.dtype))

    def penalty(self, params: DeepParams) -> Array:
        """lam_H/2 ||H_1||^2 + sum_l lam_l/2 ||W_l||^2 + lam_b/2 ||b||^2."""
        r = 0.5 * self.lam_H * frobenius_sq(params.H)
        for lam, Wl in zip(self.lam_Ws, params.Ws, strict=True):
            r = r + 0.5 * lam * frobenius_sq(Wl)
        return r if params.b is None else r + 0.5 * self.lam_b * frobenius_sq(params.b)

    def objective(self, params: DeepParams) -> Array:
        """f: mean loss plus every layer's penalty."""
        return self.data_loss(params) + self.penalty(params)

    def metrics(self, params: DeepParams) -> dict[str, Array]:
        """NC metrics of the last features H_L with the classifier (`ufm.nc_metrics`; uncentred
        means for MSE without bias, whose optimum is an orthogonal frame) and, at every layer
        l = 1..L ("progressive collapse"): nc1_layer{l} (NC1 of H_l), etf_layer{l} (Gram of the
        centred class means vs the simplex ETF) and of_layer{l} (Gram of the uncentred class
        means vs the orthogonal frame)."""
        mean = "zero" if (self.loss == "mse" and not self.bias) else "weighted"
        Hs = self.features(params)
        labels = self.labels
        Y = self.targets.astype(params.H.dtype)
        out = nc_metrics(Hs[-1], labels, W=params.Ws[-1], b=params.b, mean=mean)
        for l, Hl in enumerate(Hs, start=1):
            out[f"nc1_layer{l}"] = nc_metrics(Hl, labels, K=self.K, mean=mean)["nc1"]
            out[f"etf_layer{l}"], out[f"of_layer{l}"] = _layer_gram_gaps(Hl, Y)
        return out
