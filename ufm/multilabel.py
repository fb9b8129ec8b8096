"""Multi-label classification under the UFM with the pick-all-label cross-entropy (Li, Li, Wang &
Qu, ICML 2024, "Neural collapse in multi-label learning with pick-all-label loss"): samples carry
label sets, the loss sums the CE of every label in the set, and the optimum is "multi-label NC":
the multiplicity-1 class means form a simplex ETF and the mean of a label set S is a scaled sum
(a scaled "tag-wise average") of the means of its members.

    f(W, H, b) = (1/N) sum_i sum_{k in S_i} -log softmax(W h_i + b)_k
                 + lam_W/2 ||W||^2 + lam_H/2 ||H||^2 + lam_b/2 ||b||^2

Exact optimum (derived here, [D]; `optimum(MultiLabelUFM)`): when every label set of each present
multiplicity m is present with the same count n_m ("within-multiplicity balance", Li et al.'s
assumption), and d >= K-1, Tools A and B of THEORY.md reduce the problem to the convex
    min_{s >= 0} (1/N) sum_m N_m m log(m + (K-m) e^{-s_m}) + mu (K-1) sqrt(gamma(s)),
    gamma(s) = sum_m n_m C(K-2, m-1) s_m^2,   mu = sqrt(lam_W lam_H),   N_m = n_m C(K, m),
where s_m is the margin of a multiplicity-m sample (logits s_m (1_S - m/K)). Then W is a simplex
ETF with W W^T = sqrt(lam_H/lam_W) sqrt(gamma) P, and h_S = sqrt(lam_W/lam_H) gamma^{-1/2} s_m
sum_{k in S} w_k: the mean of a set S of size m is (s_m/s_1) times the sum of the single-label
means of its members.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.geometry import orthonormal_basis
from ufm.losses import cross_entropy
from ufm.models._base import (
    Model,
    bool_check,
    check_int,
    counts_check,
    frobenius_sq,
    int_check,
    leaf,
    static,
)
from ufm.models.ufm import UFM, Params
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum
from ufm.theory._roots import bisect, bracket

__all__ = [
    "MultiLabelUFM",
    "all_label_sets",
    "multilabel_margins",
    "tagwise_geometry",
]


def all_label_sets(K: int, multiplicities: Sequence[int] = (1, 2)) -> tuple[tuple[int, ...], ...]:
    """Every label set of the given sizes: all subsets of {0..K-1} of each size, by size then
    lexicographically (the within-multiplicity balanced layout of Li et al.)."""
    K = check_int("K", K, 2)
    out = []
    for m in multiplicities:
        m = check_int("multiplicities", m, 1)
        if m > K:
            raise ValueError(f"multiplicities must be <= K={K}, got {m}")
        out.extend(itertools.combinations(range(K), m))
    return tuple(out)


class MultiLabelUFM(Model):
    """Regularised UFM with label sets and the pick-all-label CE (see the module docstring).

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= 1).
      label_sets: the distinct label sets, each a non-empty tuple of distinct classes in [0, K)
        (e.g. `all_label_sets(K, (1, 2))`). Static.
      n: samples per label set: an int, or one count per label set.
      lam_W, lam_H, lam_b: weight decays (>= 0), pytree leaves.
      bias: whether the model has a bias b (free when lam_b = 0).
    The columns of H are ordered set by set: n_1 samples of label_sets[0], then label_sets[1], ...
    """

    K: int = static(check=int_check(2))
    d: int = static(check=int_check(1))
    label_sets: tuple[tuple[int, ...], ...] = ()
    n: int | tuple[int, ...] = static(default=1, check=counts_check)
    lam_W: float = leaf(default=5e-4, lower=0.0)  # noqa: N815 (the paper's name, as in ufm.UFM)
    lam_H: float = leaf(default=5e-4, lower=0.0)  # noqa: N815
    lam_b: float = leaf(default=5e-4, lower=0.0)
    bias: bool = static(default=True, check=bool_check)

    def __check__(self):
        sets = []
        for S in self.label_sets:
            S = tuple(sorted(int(k) for k in S))
            if not S or len(set(S)) != len(S) or S[0] < 0 or S[-1] >= self.K:
                raise ValueError(
                    "label_sets must hold non-empty sets of distinct classes in [0, K), "
                    f"got {tuple(self.label_sets)!r}"
                )
            sets.append(S)
        if not sets or len(set(sets)) != len(sets):
            raise ValueError(f"label_sets must be non-empty and distinct, got {self.label_sets!r}")
        n = self.n
        if isinstance(n, tuple):
            if len(n) != len(sets):
                raise ValueError(
                    f"n must have one count per label set ({len(sets)}), got len(n)={len(n)}"
                )
            n = n[0] if len(set(n)) == 1 else n
        return {"label_sets": tuple(sets), "n": n}

    # --- structure (static) -------------------------------------------------------------------
    @property
    def counts(self) -> tuple[int, ...]:
        """Samples per label set."""
        return (self.n,) * len(self.label_sets) if isinstance(self.n, int) else self.n

    @property
    def N(self) -> int:
        return sum(self.counts)

    @property
    def set_index(self) -> np.ndarray:
        """(N,) index into label_sets of each column of H."""
        return np.repeat(np.arange(len(self.label_sets)), self.counts)

    @property
    def set_targets(self) -> np.ndarray:
        """(number of sets, K) multi-hot rows, one per label set."""
        T = np.zeros((len(self.label_sets), self.K))
        for i, S in enumerate(self.label_sets):
            T[i, list(S)] = 1.0
        return T

    @property
    def targets(self) -> Array:
        """(N, K) multi-hot target of each sample."""
        return jnp.asarray(self.set_targets[self.set_index])

    # --- parameters and objective ---------------------------------------------------------------
    init = UFM.init  # the same Gaussian start and logits W h_i + b as the UFM
    logits = UFM.logits

    def data_loss(self, params: Params) -> Array:
        """Pick-all-label CE: (1/N) sum_i sum_{k in S_i} -log softmax(z_i)_k."""
        return cross_entropy(self.logits(params), self.targets.astype(params.W.dtype))

    def penalty(self, params: Params) -> Array:
        r = 0.5 * (self.lam_W * frobenius_sq(params.W) + self.lam_H * frobenius_sq(params.H))
        return r if params.b is None else r + 0.5 * self.lam_b * frobenius_sq(params.b)

    def objective(self, params: Params) -> Array:
        return self.data_loss(params) + self.penalty(params)

    def metrics(self, params: Params) -> dict[str, Array]:
        """`tagwise_geometry` of the parameters."""
        return tagwise_geometry(self, params)


def tagwise_geometry(model: MultiLabelUFM, params: Params) -> dict[str, Array]:
    """How far (W, H) are from multi-label NC, as scalars (jit-able):

    nc1: tr(Sigma_W)/tr(Sigma_B) over label sets (within-set spread of the features).
    etf_W: ||W W^T/||W W^T|| - P/sqrt(K-1)||, the classifier's distance from a simplex ETF.
    etf_singles: the same for the Gram of the single-label means mu_k (uncentred: at the
      optimum they sum to 0); NaN when some class has no single-label set.
    for each multiplicity m >= 2 present:
      tagwise_residual_m: max over sets S of size m of ||mu_S - t_S u_S||/||mu_S||, where
        u_S = sum_{k in S} mu_k and t_S = <mu_S, u_S>/||u_S||^2: 0 iff every set mean is a
        scaled sum of its members' single-label means;
      tagwise_scale_m: mean of t_S over those sets (theory: s_m/s_1, `multilabel_margins`).
    """
    H, W = params.H, params.W
    sets = model.label_sets
    idx = jnp.asarray(model.set_index)
    n_sets = len(sets)
    Yset = jax.nn.one_hot(idx, n_sets, dtype=H.dtype)  # (N, sets)
    counts = Yset.sum(0)
    Mset = (H @ Yset) / counts[None, :]  # (d, sets)
    within = jnp.sum((H - Mset @ Yset.T) ** 2) / H.shape[1]
    mu_G = H.mean(axis=1)
    between = jnp.sum((Mset - mu_G[:, None]) ** 2) / n_sets
    K = model.K
    E = (jnp.eye(K, dtype=H.dtype) - 1.0 / K) / math.sqrt(K - 1)

    def etf_gap(G):
        return jnp.linalg.norm(G / jnp.linalg.norm(G) - E)

    out = {"nc1": within / between, "etf_W": etf_gap(W @ W.T)}
    single = {S[0]: i for i, S in enumerate(sets) if len(S) == 1}
    if len(single) < K:
        out["etf_singles"] = jnp.asarray(jnp.nan, H.dtype)
        return out
    mu1 = Mset[:, jnp.asarray([single[k] for k in range(K)])]  # (d, K)
    out["etf_singles"] = etf_gap(mu1.T @ mu1)
    for m in sorted({len(S) for S in sets} - {1}):
        rows = [i for i, S in enumerate(sets) if len(S) == m]
        T = jnp.asarray(model.set_targets[rows])  # (r, K) multi-hot
        U = mu1 @ T.T  # (d, r): sums of member means
        MS = Mset[:, jnp.asarray(rows)]
        t = jnp.sum(MS * U, axis=0) / jnp.sum(U * U, axis=0)
        res = jnp.linalg.norm(MS - t[None, :] * U, axis=0) / jnp.linalg.norm(MS, axis=0)
        out[f"tagwise_residual_{m}"] = jnp.max(res)
        out[f"tagwise_scale_{m}"] = jnp.mean(t)
    return out


# --- the exact optimum ------------------------------------------------------------------------
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
    lam_W, lam_H = as_float(model.lam_W), as_float(model.lam_H)
    if lam_W <= 0 or lam_H <= 0:
        raise NoClosedForm(f"the optimum needs lam_W, lam_H > 0, got {lam_W}, {lam_H}")
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
    return Optimum(value, Params(jnp.asarray(W), jnp.asarray(H), b))
