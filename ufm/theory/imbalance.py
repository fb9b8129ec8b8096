"""Imbalanced classes: the exact minority-collapse thresholds (docs/theory.md §4.3-§4.5).

Two groups: K_A majority classes of n_A samples, K_B minority classes of n_B (`two_group_counts`),
R = n_A/n_B.
* Regularised CE-UFM (Hong & Ling 2023): the minority classes collapse iff n_B <= N^2 lam_W lam_H,
  N = K_A n_A + K_B n_B (`hong_ling_ratio` gives the R where that starts;
  `ufm.theory.regularized.hong_ling_threshold` the count). The MSE-UFM without bias has the same
  number as its class-vanishing threshold (`mse_vanishing_classes`).
* Layer-peeled model (Fang, He, Long & Su, PNAS 2021): Fang et al. prove the collapse as
  R -> infinity; the exact finite threshold R_0 (`lpm_threshold`) is the root of a dual
  certificate evaluated at the optimum of the problem with the minority classes merged
  (`lpm_merged`), derived in docs/theory.md §4.3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from ufm.models._base import (
    Model,
    check_choice,
    check_int,
    check_real,
    choice_check,
    int_check,
    leaf,
    static,
)
from ufm.solve import solve
from ufm.theory._roots import bisect, bracket

__all__ = [
    "MergedLPM",
    "hong_ling_ratio",
    "lpm_certificate",
    "lpm_merged",
    "lpm_threshold",
    "mse_vanishing_classes",
    "two_group_counts",
]


def two_group_counts(K_A: int, K_B: int, n_A: int, n_B: int) -> tuple[int, ...]:
    """Per-class counts (n_A,)*K_A + (n_B,)*K_B: majority classes first, then the minority."""
    K_A, K_B = check_int("K_A", K_A, 1), check_int("K_B", K_B, 1)
    n_A, n_B = check_int("n_A", n_A, 1), check_int("n_B", n_B, 1)
    return (n_A,) * K_A + (n_B,) * K_B


# --- regularised UFM: Hong & Ling ------------------------------------------------------------
def hong_ling_ratio(K_A: int, K_B: int, n_B: int, lam_W: float, lam_H: float) -> float:
    """The imbalance ratio from which the minority classes of the regularised CE-UFM collapse.

    With n_B fixed, n_B <= N^2 lam_W lam_H and N = (K_A R + K_B) n_B give collapse iff
    R >= R_HL := (1/sqrt(n_B lam_W lam_H) - K_B)/K_A (0 when every R collapses). Hong & Ling
    2023; docs/theory.md §4.4. R need not be attainable with integer counts.
    """
    K_A, K_B, n_B = check_int("K_A", K_A, 1), check_int("K_B", K_B, 1), check_int("n_B", n_B, 1)
    lam_W = check_real("lam_W", lam_W, strict=True)
    lam_H = check_real("lam_H", lam_H, strict=True)
    return max((1.0 / math.sqrt(n_B * lam_W * lam_H) - K_B) / K_A, 0.0)


def mse_vanishing_classes(counts: Sequence[int], lam_W: float, lam_H: float) -> tuple[bool, ...]:
    """Which classes vanish (w_k = 0 and class mean 0) at the optimum of the MSE-UFM without bias:
    class k iff n_k <= N^2 lam_W lam_H (soft-thresholding of sqrt(n_k) at N sqrt(lam_W lam_H);
    docs/theory.md §4.5, cf. Dang et al. 2023). Assumes d >= the number of surviving classes."""
    counts = tuple(check_int("n", c, 1) for c in counts)
    N = sum(counts)
    thr = N * N * check_real("lam_W", lam_W) * check_real("lam_H", lam_H)
    return tuple(c <= thr for c in counts)


# --- layer-peeled model: the certificate and R_0 ----------------------------------------------
class MergedLPM(NamedTuple):
    """Optimum of the layer-peeled CE problem with the K_B minority classes merged into one.

    value: its loss, the best loss any minority-collapsed point can reach.
    W, H: (K, p) per-class classifiers and class-mean features (minority rows equal), feasible
      with both budgets active.
    certificate: kappa >= 1 iff minority collapse is globally optimal (see `lpm_certificate`).
    minority_fraction: pi_B = n_B/N.
    """

    value: float
    W: np.ndarray
    H: np.ndarray
    certificate: float
    minority_fraction: float


class _Merged(Model):
    """The merged problem on the product of two unit spheres (see `lpm_merged`): parameters
    (V, U), each (G, G) with G = K_A + 1 groups (features in R^G suffice), w_i = alpha_i v_i/||V||
    and h_i = beta_i u_i/||U||, so that both budgets hold with equality."""

    K_A: int = static(check=int_check(1))
    K_B: int = static(check=int_check(2))
    h_budget: str = static(default="class", check=choice_check(("class", "sample")))
    R: float = leaf(default=1.0, lower=0.0, strict=True)
    E_W: float = leaf(default=1.0, lower=0.0, strict=True)  # noqa: N815 (Fang et al.'s names)
    E_H: float = leaf(default=1.0, lower=0.0, strict=True)  # noqa: N815

    def weights(self) -> tuple[Array, Array, Array, Array]:
        """(m, pi, alpha, beta): group sizes (1, ..., 1, K_B), n_k/N of one class of each group,
        and the radii that make the budgets bind."""
        K_A, K = self.K_A, self.K_A + self.K_B
        m = jnp.asarray([1.0] * K_A + [float(self.K_B)])
        pi = jnp.append(jnp.full(K_A, self.R), 1.0) / (K_A * self.R + self.K_B)
        a = jnp.full(K_A + 1, 1.0 / K) if self.h_budget == "class" else pi  # budget weights
        return m, pi, jnp.sqrt(K * self.E_W / m), jnp.sqrt(self.E_H / (m * a))

    def init(self, key: Array) -> tuple[Array, Array]:
        G = self.K_A + 1
        kV, kU = jax.random.split(key)
        return jax.random.normal(kV, (G, G)), jax.random.normal(kU, (G, G))

    def points(self, params) -> tuple[Array, Array]:
        """(W, H) of the K_A + 1 groups, both budgets active."""
        V, U = params
        _, _, alpha, beta = self.weights()
        return alpha[:, None] * V / jnp.linalg.norm(V), beta[:, None] * U / jnp.linalg.norm(U)

    def objective(self, params) -> Array:
        """sum_i m_i pi_i CE_i with the minority logit counted m_B = K_B times in every lse."""
        m, pi, _, _ = self.weights()
        Wm, Hm = self.points(params)
        Z = Hm @ Wm.T  # Z[i, j] = <w_j, h_i>: logit of group j for a class of group i
        lse = jax.nn.logsumexp(Z, b=m[None, :], axis=1)
        return jnp.sum(m * pi * (lse - jnp.diagonal(Z)))


_LBFGS = optax.lbfgs()


def lpm_merged(
    K_A: int,
    K_B: int,
    R: float,
    E_W: float = 1.0,
    E_H: float = 1.0,
    h_budget: str = "class",
    seed: int = 0,
    starts: int = 3,
) -> MergedLPM:
    """Solve the layer-peeled CE problem restricted to minority collapse, and its certificate.

    The restricted problem has K_A + 1 distinct classifier/feature pairs (the K_B minority ones
    equal): minimise sum_i m_i pi_i CE_i over them, with the minority logit counted m_B = K_B times
    in every log-sum-exp, subject to (1/K) sum_i m_i ||w_i||^2 = E_W and the feature budget
    sum_i m_i a_i ||h_i||^2 = E_H (a_i = 1/K for Fang's per-class budget h_budget="class",
    a_i = pi_i = n_i/N for "sample"). Both budgets are active at the optimum, so the problem is
    smooth on a product of two spheres; it is solved by `ufm.solve` (L-BFGS, float64) from
    `starts` random starts, keeping the best. Features live in R^p, p = K_A + 1, enough for any
    optimum.

    Returns:
      `MergedLPM`, with certificate kappa = (2 sqrt(m_W m_H)/K)/pi_B ("class") or
      (4 m_W m_H/K)/pi_B ("sample"), where m_W = S/(2 E_W) and m_H = S/(2 E_H) are the KKT
      multipliers and S = -<grad_Z loss, Z> = sum_k pi_k <e_k - p_k, z_k> (scaling W or H moves
      the loss by -S); see `lpm_certificate`.
    """
    return _lpm_merged(K_A, K_B, R, E_W, E_H, h_budget, seed, starts, None)[0]


def _lpm_merged(K_A, K_B, R, E_W, E_H, h_budget, seed, starts, x0):
    """`lpm_merged` that also takes and returns the optimiser's point (for warm starts)."""
    K_A, K_B = check_int("K_A", K_A, 1), check_int("K_B", K_B, 2)
    R = check_real("R", R, strict=True)
    E_W, E_H = check_real("E_W", E_W, strict=True), check_real("E_H", E_H, strict=True)
    check_choice("h_budget", h_budget, ("class", "sample"))
    check_int("starts", starts, 1)
    with jax.enable_x64(True):  # the certificate is a first-order quantity: float64 throughout
        model = _Merged(K_A=K_A, K_B=K_B, h_budget=h_budget, R=float(R), E_W=E_W, E_H=E_H)
        keys = jax.random.split(jax.random.key(seed), starts + 1)
        inits = [model.init(k) for k in keys[1:]] + ([] if x0 is None else [x0])
        runs = [
            solve(model, keys[0], 20000, _LBFGS, tol=1e-13, init=x, metrics=False) for x in inits
        ]
        best = min(runs, key=lambda r: float(r.objective))
        m, pi, _, _ = (np.asarray(a) for a in model.weights())
        Wm, Hm = (np.asarray(a) for a in model.points(best.params))
        x = tuple(np.asarray(a) for a in best.params)
    Z = Hm @ Wm.T
    E = m[None, :] * np.exp(Z - Z.max(axis=1, keepdims=True))
    q = E / E.sum(axis=1, keepdims=True)  # q_ij = m_j p_(class of group j) for group i
    S = float(np.sum(m * pi * (np.diag(Z) - np.sum(q * Z, axis=1))))
    pi_B, K = float(pi[-1]), K_A + K_B
    if h_budget == "class":
        kappa = S / (K * math.sqrt(E_W * E_H)) / pi_B
    else:
        kappa = S * S / (K * E_W * E_H) / pi_B
    rows = list(range(K_A)) + [K_A] * K_B
    return MergedLPM(float(best.objective), Wm[rows], Hm[rows], float(kappa), pi_B), x


def lpm_certificate(
    K_A: int, K_B: int, R: float, E_W: float = 1.0, E_H: float = 1.0, h_budget: str = "class"
) -> float:
    """kappa(R): minority collapse is a global optimum of the layer-peeled CE model iff kappa >= 1.

    Derivation (docs/theory.md §4.3): the LPM is equivalent to a convex SDP, so its optimum
    minimises the Lagrangian, a regularised UFM with weights set by the multipliers m_W, m_H. By
    the nuclear-norm reduction (§0.1) that is min_Z g(Z) + mu ||Z||_* (mu = 2 sqrt(m_W m_H)/K for
    Fang's per-class budget, on class-mean logits z_k with g = sum_k pi_k CE(z_k, k)). At a
    minority-collapsed point, the block of grad g that separates minority classes is
    -pi_B (I - 11^T/K_B) on the minority rows and columns (the softmax is constant across
    minority rows), of operator norm pi_B, and the rest of the first-order condition holds by
    optimality of the merged problem: collapse is optimal iff pi_B <= mu. With the
    sample-averaged budget the columns carry weights sqrt(pi_k), the block has norm sqrt(pi_B)
    and mu = 2 sqrt(m_W m_H/K): collapse iff pi_B <= 4 m_W m_H/K.
    """
    return lpm_merged(K_A, K_B, R, E_W, E_H, h_budget).certificate


def lpm_threshold(
    K_A: int,
    K_B: int,
    E_W: float = 1.0,
    E_H: float = 1.0,
    h_budget: str = "class",
    rtol: float = 1e-10,
) -> float:
    """R_0: the smallest ratio n_A/n_B at which minority collapse is the optimum of the
    layer-peeled CE model (K_A majority, K_B >= 2 minority classes, budgets E_W, E_H).

    The root of kappa(R) - 1 (`lpm_certificate`, increasing in R) by `ufm.theory._roots.bisect`
    in log R to relative tolerance `rtol`, bracketed by doubling from R = 1 (kappa(1) < 1: at
    balance the optimum is the ETF), warm-starting each merged solve from the previous one.
    Fang et al. prove only that collapse happens as R -> infinity; this threshold is derived
    (docs/theory.md §4.3) and verified against free optimisation in the tests.
    Raises ValueError if no R <= 2^40 collapses.
    """
    x = None

    def f(R):
        nonlocal x
        res, x = _lpm_merged(K_A, K_B, R, E_W, E_H, h_budget, 0, 1 if x is not None else 3, x)
        return res.certificate - 1.0

    if f(1.0) >= 0:
        return 1.0
    try:
        lo, hi = bracket(f, 1.0, 2.0, limit=2.0**40)
    except ValueError:
        raise ValueError("no minority collapse found for R <= 2^40") from None
    return bisect(f, lo, hi, log=True, rtol=rtol)
