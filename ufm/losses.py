"""Per-sample classification losses on logits, averaged over samples.

Every loss has the signature ``loss(logits, targets) -> scalar`` with logits of shape (N, K) and
targets of shape (N, K): a one-hot row per sample (a multi-hot row for pick-all-label CE, a smoothed
row for label smoothing). All are means over the N samples, the convention of THEORY.md section 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["cross_entropy", "mse", "LOSSES"]


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
