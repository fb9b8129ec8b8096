"""Exact optimum of the multi-label UFM with the pick-all-label CE (`ufm.MultiLabelUFM`; derived
in docs/theory.md §6.3, setting of Li, Li, Wang & Qu, ICML 2024).

When every label set of each present multiplicity m is present with the same count n_m
("within-multiplicity balance", Li et al.'s assumption), and d >= K-1, the nuclear-norm reduction
(§0.1) and symmetrisation (§0.2) reduce the problem to the convex
    min_{s >= 0} (1/N) sum_m N_m m log(m + (K-m) e^{-s_m}) + mu (K-1) sqrt(gamma(s)),
    gamma(s) = sum_m n_m C(K-2, m-1) s_m^2,   mu = sqrt(lam_W lam_H),   N_m = n_m C(K, m),
where s_m is the margin of a multiplicity-m sample (logits s_m (1_S - m/K)). Then W is a simplex
ETF with W W^T = sqrt(lam_H/lam_W) sqrt(gamma) P, and h_S = sqrt(lam_W/lam_H) gamma^{-1/2} s_m
sum_{k in S} w_k: the mean of a set S of size m is (s_m/s_1) times the sum of the single-label
means of its members.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.geometry import orthonormal_basis
from ufm.models.multilabel import MultiLabelUFM
from ufm.models.ufm import Params
from ufm.theory._base import NoClosedForm, Optimum, optimum, weight_decays
from ufm.theory._roots import bisect, bracket

__all__ = ["multilabel_margins"]


def _balanced_multiplicities(model: MultiLabelUFM) -> dict[int, int]:
    """{m: n_m} when every set of each present size m is present with the same count n_m;
    raises NoClosedForm otherwise."""
    K = model.K
    by_m: dict[int, list[int]] = {}
    for S, c in zip(model.label_sets, model.counts, strict=True):
        by_m.setdefault(len(S), []).append(c)
    for m, cs in by_m.items():
        if len(cs) != math.comb(K, m) or len(set(cs)) != 1:
            raise NoClosedForm(
                "the multi-label optimum is known only under within-multiplicity balance (every "
                f"label set of each present size, all with the same count); size {m} has "
                f"{len(cs)} of {math.comb(K, m)} sets with counts {sorted(set(cs))}"
            )
    return {m: cs[0] for m, cs in sorted(by_m.items())}


def multilabel_margins(
    K: int, n_by_multiplicity: dict[int, int], lam_W: float, lam_H: float
) -> tuple[dict[int, float], float]:
    """({m: s_m}, f*) for the within-multiplicity balanced layout (module docstring).

    Stationarity of the reduced convex problem reads a_m(s_m) = nu c_m s_m for every m, with
    a_m(s) = (N_m/N) m (K-m) e^{-s}/(m + (K-m)e^{-s}) (decreasing), c_m = n_m C(K-2, m-1) and one
    scalar nu = mu (K-1)/sqrt(gamma). For fixed nu each s_m(nu) is the root of a monotone
    equation, and nu sqrt(gamma(s(nu))) is increasing in nu, so nu is the root of
    nu sqrt(gamma) = mu (K-1): nested bisection, exact to float64. The zero solution is optimal
    iff sum_m a_m(0)^2/c_m <= mu^2 (K-1)^2 (the subgradient condition at s = 0).
    """
    mu = math.sqrt(lam_W * lam_H)
    N = sum(n * math.comb(K, m) for m, n in n_by_multiplicity.items())
    ms = [m for m in n_by_multiplicity if m < K]  # m = K: constant loss, no logit structure
    w = {m: n_by_multiplicity[m] * math.comb(K, m) * m / N for m in ms}
    c = {m: n_by_multiplicity[m] * math.comb(K - 2, m - 1) for m in ms}

    def a(m, s):
        e = (K - m) * math.exp(-s)
        return w[m] * e / (m + e)

    def loss(m, s):
        return w[m] * math.log(m + (K - m) * math.exp(-s))

    const = sum(
        n * math.comb(K, m) * m * math.log(K) / N for m, n in n_by_multiplicity.items() if m == K
    )
    if not ms or sum(a(m, 0.0) ** 2 / c[m] for m in ms) <= (mu * (K - 1)) ** 2:
        return {m: 0.0 for m in n_by_multiplicity}, const + sum(loss(m, 0.0) for m in ms)

    def s_of(nu):
        def root(m):  # s_m(nu): f increasing, f(0) = -a_m(0) < 0
            def f(s):
                return nu * c[m] * s - a(m, s)

            return bisect(f, *bracket(f, 0.0, 1.0))

        return {m: root(m) for m in ms}

    def g(nu):
        s = s_of(nu)
        return nu * math.sqrt(sum(c[m] * s[m] ** 2 for m in ms)) - mu * (K - 1)

    nu = bisect(g, *bracket(g, 1e-300, 1.0, factor=4.0), log=True)
    s = s_of(nu)
    gamma = sum(c[m] * s[m] ** 2 for m in ms)
    value = const + sum(loss(m, s[m]) for m in ms) + mu * (K - 1) * math.sqrt(gamma)
    s.update({m: 0.0 for m in n_by_multiplicity if m == K})
    return s, value


@optimum.register
def _(model: MultiLabelUFM) -> Optimum:
    K, d = model.K, model.d
    lam_W, lam_H = weight_decays(model, "without weight decay the CE infimum is not attained")
    if d < K - 1:
        raise NoClosedForm(f"the multi-label optimum needs d >= K-1, got d={d}, K={K}")
    n_by_m = _balanced_multiplicities(model)
    s, value = multilabel_margins(K, n_by_m, lam_W, lam_H)
    gamma = sum(n * math.comb(K - 2, m - 1) * s[m] ** 2 for m, n in n_by_m.items() if m < K)
    Q = np.asarray(orthonormal_basis(K))  # (K, K-1)
    W = (lam_H / lam_W) ** 0.25 * gamma**0.25 * Q @ np.eye(d, K - 1).T
    T = model.set_targets
    sizes = T.sum(1)
    Zsets = np.array([s[int(m)] for m in sizes])[:, None] * (T - sizes[:, None] / K)  # (sets, K)
    scale = math.sqrt(lam_W / lam_H) / math.sqrt(gamma) if gamma > 0 else 0.0
    Hsets = scale * (Zsets @ W)  # (sets, d): h_S = scale W^T z_S
    H = Hsets[model.set_index].T
    b = jnp.zeros((K,)) if model.bias else None
    return Optimum(value, Params(jnp.asarray(W), jnp.asarray(H), b), "Li et al. 2024")
