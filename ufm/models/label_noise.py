"""Label noise under the UFM: a fraction of training labels flipped, and a cost for memorising
them (docs/theory.md §6.4).

In the plain UFM every feature is free, so a noisy sample simply joins the class of its (wrong)
label: perfect memorisation, neural collapse with respect to the noisy labels. Nguyen et al.
(ICLR 2023, "Memorization-dilation: modeling neural collapse under label noise") argue that a
network of limited expressivity cannot place a sample far from the samples of its true class
for free: memorising noisy labels then costs, and it dilates the true classes. `NoisyUFM` models
this in the UFM (our construction in the spirit of their M-D model, not their exact model): the
feature penalty charges the class means with lam_H and every deviation from the true class mean
with lam_M,

    f = (1/N) sum_i CE(W h_i + b, noisy_i) + lam_W/2 ||W||^2 + lam_b/2 ||b||^2
        + lam_H/2 sum_k n_k ||hbar_k||^2 + lam_M/2 sum_i ||h_i - hbar_{true_i}||^2,

hbar_k the mean of the samples whose TRUE class is k. lam_M = lam_H is the plain UFM (the penalty
is then lam_H/2 ||H||^2); lam_M -> infinity forbids memorisation. The exact optimum of the
symmetric layout (`symmetric_noise`) is in `ufm.theory.label_noise`, the memorisation measures
in `ufm.metrics.label_noise`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.losses import cross_entropy
from ufm.metrics.label_noise import memorization_metrics
from ufm.metrics.nc import class_stats, nc_metrics
from ufm.models._base import (
    ClassLayout,
    bool_check,
    check_int,
    check_real,
    class_counts,
    frobenius_sq,
    leaf,
    static,
)
from ufm.models.ufm import UFM, Params

__all__ = ["NoisyUFM", "flip_labels", "symmetric_noise"]


def flip_labels(key: Array, labels: Sequence[int], K: int, rate: float) -> tuple[int, ...]:
    """Noisy labels: exactly round(rate N) samples, chosen uniformly at random, each moved to a
    uniformly random other class. Deterministic given `key`.

    Args:
      key: PRNG key.
      labels: (N,) true labels in [0, K).
      K: number of classes (>= 2).
      rate: fraction of flipped labels, in [0, 1].
    """
    K = check_int("K", K, 2)
    rate = check_real("rate", rate)
    if rate > 1:
        raise ValueError(f"rate must be in [0, 1], got rate={rate!r}")
    y = np.asarray(labels, dtype=int)
    if y.ndim != 1 or np.any(y < 0) or np.any(y >= K):
        raise ValueError(f"labels must be a 1-D sequence of classes in [0, {K}), got {labels!r}")
    k1, k2 = jax.random.split(key)
    m = int(round(rate * len(y)))
    idx = np.asarray(jax.random.permutation(k1, len(y)))[:m]
    shift = np.asarray(jax.random.randint(k2, (m,), 1, K))
    noisy = y.copy()
    noisy[idx] = (y[idx] + shift) % K
    return tuple(int(c) for c in noisy)


def symmetric_noise(K: int, n_clean: int, r: int) -> tuple[int, tuple[int, ...]]:
    """The symmetric layout: in every true class k, n_clean clean samples, then r samples labelled
    j for each j != k (in increasing j). Returns (n per class, noisy labels)."""
    K, n_clean, r = check_int("K", K, 2), check_int("n_clean", n_clean, 0), check_int("r", r, 0)
    if n_clean + r == 0:
        raise ValueError("n_clean + r must be >= 1")
    noisy = []
    for k in range(K):
        noisy += [k] * n_clean
        for j in range(K):
            if j != k:
                noisy += [j] * r
    return n_clean + (K - 1) * r, tuple(noisy)


class NoisyUFM(ClassLayout):
    """Regularised CE-UFM trained on noisy labels, with a memorisation cost lam_M (module
    docstring).

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= 1).
      n: samples per TRUE class: an int or a length-K sequence. Columns of H are in blocks of
        true classes, as in `ufm.UFM`.
      noisy: (N,) the training label of every column (e.g. from `flip_labels` or
        `symmetric_noise`). Static.
      lam_W, lam_H, lam_M, lam_b: weight decays (>= 0; lam_M > 0), pytree leaves.
      bias: whether the model has a bias b.
    """

    noisy: tuple[int, ...] = ()
    lam_W: float = leaf(default=5e-4, lower=0.0)  # noqa: N815 (as in ufm.UFM)
    lam_H: float = leaf(default=5e-4, lower=0.0)  # noqa: N815
    lam_M: float = leaf(default=5e-4, lower=0.0, strict=True)  # noqa: N815
    lam_b: float = leaf(default=5e-4, lower=0.0)
    bias: bool = static(default=True, check=bool_check)

    def __check__(self):
        changes = super().__check__() or {}
        noisy = tuple(int(c) for c in self.noisy)
        N = sum(self.counts)
        if len(noisy) != N or any(c < 0 or c >= self.K for c in noisy):
            raise ValueError(
                f"noisy must hold one label in [0, K) per sample (N={N}), got {len(noisy)} labels"
            )
        return {**changes, "noisy": noisy}

    @classmethod
    def with_rate(cls, K: int, d: int, n, rate: float, key: Array, **kw) -> NoisyUFM:
        """A model trained on the true labels with a fraction `rate` flipped (`flip_labels`)."""
        counts = class_counts(n, check_int("K", K, 2))
        labels = np.repeat(np.arange(K), counts)
        return cls(K=K, d=d, n=n, noisy=flip_labels(key, labels, K, rate), **kw)

    # --- structure (static) -------------------------------------------------------------------
    @property
    def noisy_labels(self) -> Array:
        """(N,) training label of each column."""
        return jnp.asarray(self.noisy)

    @property
    def is_noisy(self) -> np.ndarray:
        """(N,) bool: the training label differs from the true class."""
        return np.asarray(self.noisy) != np.repeat(np.arange(self.K), self.counts)

    @property
    def targets(self) -> Array:
        """(N, K) one-hot NOISY label of each sample (what the loss sees); `labels` are the
        true classes."""
        return jax.nn.one_hot(self.noisy_labels, self.K)

    # --- parameters and objective ---------------------------------------------------------------
    init = UFM.init  # the same Gaussian start and logits W h_i + b as the UFM
    logits = UFM.logits

    def data_loss(self, params: Params) -> Array:
        return cross_entropy(self.logits(params), self.targets.astype(params.W.dtype))

    def penalty(self, params: Params) -> Array:
        """lam_W/2 ||W||^2 + lam_H/2 sum_k n_k ||hbar_k||^2 + lam_M/2 sum_i ||h_i - hbar_true||^2
        (+ lam_b/2 ||b||^2)."""
        H = params.H
        _, counts, means, _, dev = class_stats(H, self.labels, self.K, "zero")
        r = 0.5 * self.lam_W * frobenius_sq(params.W)
        r = r + 0.5 * self.lam_H * jnp.sum(counts * jnp.sum(means * means, axis=0))
        r = r + 0.5 * self.lam_M * frobenius_sq(dev)
        return r if params.b is None else r + 0.5 * self.lam_b * frobenius_sq(params.b)

    def objective(self, params: Params) -> Array:
        return self.data_loss(params) + self.penalty(params)

    def metrics(self, params: Params) -> dict[str, Array]:
        """`ufm.nc_metrics` of (H, W, b) with respect to the TRUE classes (`labels`, weighted
        global mean), and the scalars of `memorization_report`."""
        out = nc_metrics(params.H, self.labels, W=params.W, b=params.b)
        rep = self.memorization_report(params)
        return out | {k: v for k, v in rep.items() if jnp.ndim(v) == 0}

    def memorization_report(self, params: Params) -> dict[str, Array]:
        """`ufm.metrics.label_noise.memorization_metrics` of the parameters: where the noisy
        samples' features sit relative to the clean class means (jit-able)."""
        true = np.repeat(np.arange(self.K), self.counts)
        return memorization_metrics(params.H, params.W, params.b, true, self.noisy)
