"""Per-sample classification losses on logits, averaged over samples.

Every loss has the signature ``loss(logits, targets) -> scalar`` with logits of shape (N, K) and
targets of shape (N, K): a one-hot row per sample (a multi-hot row for pick-all-label CE, a smoothed
row for label smoothing). All are means over the N samples, the convention of docs/theory.md §0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["cross_entropy", "mse", "label_smoothing", "focal", "LOSSES", "PARAMETRIC_LOSSES"]


def cross_entropy(logits: Array, targets: Array) -> Array:
    """Mean cross-entropy, (1/N) sum_i -<y_i, log softmax(z_i)>.

    Stable through log-sum-exp. With one-hot y_i it is the usual CE; with a multi-hot y_i it is the
    pick-all-label CE of Li et al. (sum of the CE of each label); with a smoothed y_i it is label
    smoothing.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(targets * logp) / logits.shape[0]


def mse(logits: Array, targets: Array) -> Array:
    """Mean squared error, (1/(2N)) sum_i ||z_i - y_i||^2 (Zhou et al. 2022; Tirer & Bruna 2022)."""
    r = logits - targets
    return 0.5 * jnp.sum(r * r) / logits.shape[0]


LOSSES = {"ce": cross_entropy, "mse": mse}


def label_smoothing(logits: Array, targets: Array, alpha: Array | float) -> Array:
    """Mean label-smoothed cross-entropy: CE against the smoothed targets (1 - alpha) y_i + alpha/K.

        LS(z, y) = -sum_k [(1 - alpha) y_k + alpha/K] log softmax(z)_k,   alpha in [0, 1]

    alpha = 0 is plain CE. On the ETF with margin s (logits s(e_k - 1/K)) it equals
    log(1 + (K-1)e^{-s}) + alpha (K-1)s/K, so under the regularised UFM label smoothing acts as CE
    with K c replaced by K c + alpha (Zhou et al., "Are all losses created equal? A neural collapse
    perspective", NeurIPS 2022; docs/theory.md §6). `targets` rows should sum to 1.
    """
    K = logits.shape[-1]
    smoothed = (1.0 - alpha) * targets + alpha / K
    return cross_entropy(logits, smoothed)


def focal(logits: Array, targets: Array, gamma: Array | float) -> Array:
    """Mean focal loss (Lin et al. 2017), as studied under the UFM by Zhou et al. (NeurIPS 2022).

        FL(z, y) = -sum_k y_k (1 - p_k)^gamma log p_k,   p = softmax(z),   gamma >= 0

    gamma = 0 is plain CE. 1 - p_k is computed as -expm1(log p_k) (accurate as p_k -> 1), and the
    factor (1 - p_k)^gamma has a finite gradient even where it rounds to 0^gamma.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    q = -jnp.expm1(logp)  # 1 - p, >= 0
    pos = q > 0
    weight = jnp.where(
        pos, jnp.exp(gamma * jnp.log(jnp.where(pos, q, 1.0))), jnp.where(gamma == 0, 1.0, 0.0)
    )
    return -jnp.sum(targets * weight * logp) / logits.shape[0]


PARAMETRIC_LOSSES = {"ls": (label_smoothing, "alpha"), "focal": (focal, "gamma")}
"""Losses with one hyperparameter: name -> (loss(logits, targets, value), hyperparameter name).
Models that support them (`ufm.UFM`) carry the hyperparameter as a pytree leaf."""
