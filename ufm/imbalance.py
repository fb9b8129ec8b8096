"""Imbalanced classes and minority collapse: the public namespace of the regime.

How close the minority classifiers come as the ratio R = n_A/n_B of majority to minority class
sizes grows, and the exact thresholds where they collapse (docs/theory.md §4.3-§4.5). The pieces
live where their kind lives: the thresholds and the merged layer-peeled problem in
`ufm.theory.imbalance`, the collapse measures in `ufm.metrics.imbalance`; here they meet solved
runs in `minority_collapse_curve`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from ufm.metrics.imbalance import minority_classes, minority_cosine, minority_spread
from ufm.theory import certified
from ufm.theory.certified import *  # noqa: F403 (minority collapse from certificates)
from ufm.theory.imbalance import (
    MergedLPM,
    hong_ling_ratio,
    lpm_certificate,
    lpm_merged,
    lpm_threshold,
    mse_vanishing_classes,
    two_group_counts,
)
from ufm.theory.regularized import hong_ling_threshold

__all__ = [
    *certified.__all__,
    "MergedLPM",
    "MinorityCurve",
    "hong_ling_ratio",
    "hong_ling_threshold",
    "lpm_certificate",
    "lpm_merged",
    "lpm_threshold",
    "minority_classes",
    "minority_collapse_curve",
    "minority_cosine",
    "minority_spread",
    "mse_vanishing_classes",
    "two_group_counts",
]


class MinorityCurve(NamedTuple):
    """Minority collapse against the imbalance ratio, one entry per run (sorted by R).

    R: n_A/n_B (largest count over smallest). cosine: `minority_cosine` of W. spread:
    `minority_spread` of W. objective: the run's objective (the best seed's when batched).
    """

    R: np.ndarray
    cosine: np.ndarray
    spread: np.ndarray
    objective: np.ndarray


def minority_collapse_curve(runs: Sequence[tuple[Any, Any]]) -> MinorityCurve:
    """The minority-collapse curve from solved runs: cosine and spread of the minority classifiers
    against R = n_A/n_B.

    Args:
      runs: pairs (model, result), one per imbalance ratio (counts are static, so each ratio is
        its own solve or sweep): `model` any ufm model with per-class ``counts`` (the minority is
        the set of smallest classes), `result` anything with ``params.W`` and ``objective``: a
        `ufm.Result` of ``ufm.solve``, a batch of them (leading axes, e.g. seeds), or a
        `ufm.Sweep` run with ``keep_params=True``; with leading axes the run of lowest finite
        objective is used.

    Returns:
      A `MinorityCurve`, sorted by R.
    """
    rows = []
    for model, res in runs:
        counts = tuple(model.counts)
        minority = minority_classes(counts)
        W = np.asarray(res.params.W)
        obj = np.asarray(res.objective)
        if W.ndim > 2:  # a batch (seeds, grid points): keep the best finite run
            W, obj = W.reshape((-1,) + W.shape[-2:]), obj.reshape(-1)
            i = int(np.nanargmin(np.where(np.isfinite(obj), obj, np.nan)))
            W, obj = W[i], obj[i]
        rows.append(
            (
                max(counts) / min(counts),
                float(minority_cosine(jnp.asarray(W), minority)),
                float(minority_spread(jnp.asarray(W), minority)),
                float(obj),
            )
        )
    rows.sort(key=lambda r: r[0])
    return MinorityCurve(*(np.array(col) for col in zip(*rows, strict=True)))
