"""Closed-form optimum of the supervised contrastive UFM (docs/theory.md §20): balanced classes
(n >= 2 per class), d >= K-1, every temperature tau > 0.

    L* = log((n-1) + (N-n) exp(-K/((K-1) tau)))
       = log(n-1) + log1p((N-n)/(n-1) exp(-K/((K-1) tau))),

attained iff every feature equals its class's vertex of a unit simplex ETF (within-class cosines
1, between-class cosines -1/(K-1)): collapse to a regular simplex (Graf et al., ICML 2021, who
analyse batch-wise sums; the full-batch value and its proof are in docs/theory.md §20: Jensen over
the other samples of each anchor, convexity over anchors, and sum_k ||mu_k||^2 <= K with
equality iff the classes collapse, with mu_G = 0). The log1p form keeps every digit when
n = 2 and tau is small.
"""

from __future__ import annotations

import math

from ufm.models.supcon import SupConUFM
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum
from ufm.theory.normalized import etf_params

__all__ = ["supcon_value"]


def supcon_value(K: int, n: int, tau: float) -> float:
    """log(n-1) + log1p((N-n)/(n-1) exp(-K/((K-1) tau))), N = K n: the optimal full-batch
    SupCon loss of K balanced classes of n >= 2 unit features."""
    N = K * n
    return math.log(n - 1) + math.log1p((N - n) / (n - 1) * math.exp(-K / ((K - 1) * tau)))


@optimum.register
def _(model: SupConUFM) -> Optimum:
    K, d = model.K, model.d
    if not model.balanced:
        raise NoClosedForm(
            f"the SupCon optimum is known for balanced classes only, got n={model.n}: the "
            "argument averages over anchors with one weight per class size"
        )
    if d < K - 1:
        raise NoClosedForm(
            f"the SupCon optimum (a simplex ETF) needs d >= K-1, got d={d}, K={K}: below it the "
            "ETF value is a strict lower bound"
        )
    H = etf_params(K, d, model.counts, 1.0, 1.0).H
    return Optimum(supcon_value(K, model.n, as_float(model.tau)), H, "Graf et al. 2021")
