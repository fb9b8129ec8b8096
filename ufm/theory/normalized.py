"""Closed-form optimum of the normalized-feature UFM (docs/theory.md §3 and §7).

CE on the sphere, balanced, d >= K-1 (Yaras et al. 2022: only global minimisers are NC; value
derived in §3), with 1/tau_eff = r_W r_H / tau:
    f* = log(1 + (K-1) exp(-K / ((K-1) tau_eff))),
attained by W rows a simplex ETF of radius r_W and h_{k,i} = (r_H/r_W) w_k
(margin K/((K-1) tau_eff)).
For K > d+1 the ETF value is a strict lower bound and no general closed form is known (§7).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.geometry import simplex_etf
from ufm.models.normalized import NormalizedUFM
from ufm.models.ufm import Params
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum

__all__ = ["sphere_ce_value"]


def sphere_ce_value(K: int, inv_tau: float) -> float:
    """log(1 + (K-1) exp(-K inv_tau/(K-1))): the optimal CE of K unit ETF classifiers and
    features at logit scale inv_tau (the sphere model with 1/tau, or the LPM with sqrt(E_W E_H))."""
    return math.log1p((K - 1) * math.exp(-K * inv_tau / (K - 1)))


def etf_params(K: int, d: int, counts, r_W: float, r_H: float) -> Params:
    """W rows a simplex ETF of radius r_W in R^d; every feature of class k equal to r_H m_k."""
    M = np.asarray(simplex_etf(K, d, dtype=jnp.float64))  # (d, K), unit columns
    W = r_W * M.T
    H = np.repeat(r_H * M, counts, axis=1)
    return Params(jnp.asarray(W), jnp.asarray(H), None)


def _too_many_classes(model: NormalizedUFM, inv_tau: float) -> NoClosedForm:
    K, d = model.K, model.d
    bound = sphere_ce_value(K, inv_tau)
    return NoClosedForm(
        f"no closed form is known for K > d+1 (K={K}, d={d}; docs/theory.md §7, Jiang et al. 2024 "
        f"'generalized neural collapse'). Known: the ETF value log(1+(K-1)exp(-K/((K-1)tau_eff)))"
        f" = {bound:.6g} is a strict lower bound; for small tau the classifiers maximise the "
        "minimum one-vs-rest distance (softmax codes) and features align with them (under "
        "technical conditions); numerically (not proven) the regular K-gon is optimal for d = 2 "
        "and the cross-polytope for K = 2d, while for d = 3, K = 5 the optimal shape depends on "
        "tau and for K = 8 the cube is not optimal. Solve with several starts: the landscape has "
        "spurious minima."
    )


@optimum.register
def _(model: NormalizedUFM) -> Optimum:
    K, d = model.K, model.d
    r_W, r_H, tau = as_float(model.r_W), as_float(model.r_H), as_float(model.tau)
    inv_tau = r_W * r_H / tau
    if model.loss != "ce":
        raise NoClosedForm(
            "the sphere optimum is known for loss='ce' only (docs/theory.md §3), "
            f"got loss={model.loss!r}"
        )
    if not model.balanced:
        raise NoClosedForm(
            "the sphere optimum is known for balanced counts only: the ETF argument averages "
            f"over classes with equal weights (docs/theory.md §3), got n={model.n}"
        )
    if d < K - 1:
        raise _too_many_classes(model, inv_tau)
    params = etf_params(K, d, model.counts, r_W, r_H)
    return Optimum(sphere_ce_value(K, inv_tau), params, "Yaras et al. 2022")
