"""Closed-form optimum of the fixed simplex-ETF classifier UFM (Yang et al., NeurIPS 2022;
docs/theory.md §19): unit ETF rows w_k, any counts, d >= K-1. With pi_k = n_k/N and
g(r) = log(1 + (K-1) exp(-K r/(K-1))), the CE of a feature r w_k of class k:

* budget "each" (||h_i||^2 <= E_H) or "sample" ((1/N) sum_i ||h_i||^2 <= E_H):
      h_i* = sqrt(E_H) w_{y_i},   f* = g(sqrt(E_H)),   for any counts.
  (Jensen over the wrong classes with sum_k w_k = 0 and Cauchy-Schwarz give CE_i >= g(||h_i||),
  with equality iff h_i = ||h_i|| w_{y_i}; g(sqrt(s)) is convex in s = ||h||^2, so equal norms
  are optimal under the averaged budget.)
* budget "class" (Fang et al.'s (1/K) sum_k (1/n_k) sum_{i in k} ||h_i||^2 <= E_H): the features
  still point along w_{y_i}, but under imbalance the class radii r_k differ (the uniform radius
  sqrt(E_H), claimed in the paper for this budget, is optimal only for balanced counts). They
  minimise sum_k pi_k g(r_k) s.t. (1/K) sum_k r_k^2 = E_H, whose KKT conditions read

      pi_k (K/(K-1)) (1 - P(r_k)) = theta r_k,    P(r) = 1/(1 + (K-1) e^{-K r/(K-1)}),

  theta = 2 nu/K >= 0 the scaled multiplier: each r_k is the root of an increasing function of r
  (bracketed by [0, pi_k/theta]) and (1/K) sum_k r_k(theta)^2 decreases in theta, so theta is a
  1-D root too (`fixed_etf_radii`). f* = sum_k pi_k g(r_k); majority classes get larger radii.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.models.fixed_etf import FixedETFUFM
from ufm.theory._base import Optimum, as_float, optimum
from ufm.theory._roots import bisect, bracket
from ufm.theory.normalized import sphere_ce_value

__all__ = ["fixed_etf_radii"]


def _radius(K: int, pi: float, theta: float) -> float:
    """The root r of theta r = pi (K/(K-1)) (1 - P(r)), 1 - P(r) = 1/(1 + e^{K r/(K-1)}/(K-1))."""
    a = K / (K - 1)

    def h(r):
        return theta * r - pi * a / (1.0 + math.exp(min(a * r, 700.0)) / (K - 1))

    return bisect(h, 0.0, pi / theta)


def fixed_etf_radii(counts, E_H: float) -> np.ndarray:
    """(K,) optimal class radii r_k of the fixed-ETF UFM under the per-class budget
    (1/K) sum_k r_k^2 = E_H: the 1-D KKT reduction of the module docstring, solved by nested
    bisection in s = 1/theta (every r_k <= pi_k s, so a small s meets the budget with room)."""
    counts = np.asarray(counts, dtype=float)
    K = len(counts)
    pi = counts / counts.sum()

    def radii(s):
        return np.array([_radius(K, p, 1.0 / s) for p in pi])

    def excess(s):  # non-decreasing in s
        return float(np.mean(radii(s) ** 2)) - E_H

    s0 = 0.5 * math.sqrt(K * E_H / float(np.sum(pi**2)))  # (1/K) sum (pi_k s0)^2 < E_H
    lo, hi = bracket(excess, s0, 2 * s0)
    return radii(bisect(excess, lo, hi, log=True))


@optimum.register
def _(model: FixedETFUFM) -> Optimum:
    K, counts = model.K, np.asarray(model.counts)
    E_H = as_float(model.E_H)
    if model.h_budget == "class" and not model.balanced:
        r = fixed_etf_radii(counts, E_H)
        value = float(np.sum(counts / counts.sum() * [sphere_ce_value(K, x) for x in r]))
        source = "docs/theory.md §19"  # the paper's uniform radius is not optimal here
    else:
        r = np.full(K, math.sqrt(E_H))
        value = sphere_ce_value(K, math.sqrt(E_H))
        source = "Yang et al. 2022"
    H = np.repeat(np.asarray(model.W).T * r[None, :], counts, axis=1)
    return Optimum(value, jnp.asarray(H), source)
