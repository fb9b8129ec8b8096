"""Imbalanced classes and minority collapse: how close the minority classifiers come as the ratio
R = n_A/n_B of majority to minority class sizes grows, and the exact thresholds where they collapse.

Two groups: K_A majority classes of n_A samples, K_B minority classes of n_B (`two_group_counts`).
* Regularised CE-UFM (`ufm.UFM` with per-class counts; Hong & Ling 2023): the minority classes
  collapse iff n_B <= N^2 lam_W lam_H, N = K_A n_A + K_B n_B (`hong_ling_ratio` gives the R where
  that starts; `ufm.theory.regularized.hong_ling_threshold` the count). The MSE-UFM without bias
  has the same number as its class-vanishing threshold (`mse_vanishing_classes`).
* Layer-peeled model (`ufm.LayerPeeled`; Fang, He, Long & Su, PNAS 2021): Fang et al. prove the
  collapse as R -> infinity; the exact finite threshold R_0 (`lpm_threshold`) is a root-find on a
  dual certificate evaluated at the optimum of the problem with the minority classes merged
  (`lpm_merged`), derived in THEORY.md section 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.models._base import check_choice, check_int, check_real
from ufm.theory._roots import bisect, bracket

__all__ = [
    "MergedLPM",
    "MinorityCurve",
    "hong_ling_ratio",
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


# --- layouts and the collapse measures --------------------------------------------------------
def two_group_counts(K_A: int, K_B: int, n_A: int, n_B: int) -> tuple[int, ...]:
    """Per-class counts (n_A,)*K_A + (n_B,)*K_B: majority classes first, then the minority."""
    K_A, K_B = check_int("K_A", K_A, 1), check_int("K_B", K_B, 1)
    n_A, n_B = check_int("n_A", n_A, 1), check_int("n_B", n_B, 1)
    return (n_A,) * K_A + (n_B,) * K_B


def minority_classes(counts: Sequence[int]) -> tuple[int, ...]:
    """Indices of the classes with the smallest count (the minority), in increasing order."""
    counts = tuple(int(c) for c in counts)
    if len(counts) < 2:
        raise ValueError(f"counts must hold at least 2 classes, got counts={counts!r}")
    return tuple(k for k, c in enumerate(counts) if c == min(counts))


def _minority_rows(W: Array, minority: Sequence[int]) -> Array:
    minority = tuple(int(k) for k in minority)
    if len(minority) < 2:
        raise ValueError(f"minority must name at least 2 classes, got minority={minority!r}")
    return jnp.take(W, jnp.asarray(minority), axis=-2)


def minority_cosine(W: Array, minority: Sequence[int]) -> Array:
    """Mean cosine between the classifier rows w_k, w_k' of distinct minority classes k, k'.

    -1/(K-1) for a simplex ETF, 1 at minority collapse. W has shape (..., K, d); leading axes
    (seeds, grid points) are kept. A zero row gives NaN.
    """
    V = _minority_rows(W, minority)
    V = V / jnp.linalg.norm(V, axis=-1, keepdims=True)
    C = jnp.einsum("...kd,...ld->...kl", V, V)
    m = V.shape[-2]
    off = ~np.eye(m, dtype=bool)
    return jnp.sum(jnp.where(off, C, 0.0), axis=(-2, -1)) / (m * (m - 1))


def minority_spread(W: Array, minority: Sequence[int]) -> Array:
    """max_{k, k' minority} ||w_k - w_k'|| / max_k ||w_k||: 0 exactly at minority collapse.

    Scale-free; W has shape (..., K, d). NaN when W = 0.
    """
    V = _minority_rows(W, minority)
    D = jnp.linalg.norm(V[..., :, None, :] - V[..., None, :, :], axis=-1)
    scale = jnp.max(jnp.linalg.norm(W, axis=-1), axis=-1)
    return jnp.max(D, axis=(-2, -1)) / scale


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


# --- regularised UFM: Hong & Ling ------------------------------------------------------------
def hong_ling_ratio(K_A: int, K_B: int, n_B: int, lam_W: float, lam_H: float) -> float:
    """The imbalance ratio from which the minority classes of the regularised CE-UFM collapse.

    With n_B fixed, n_B <= N^2 lam_W lam_H and N = (K_A R + K_B) n_B give collapse iff
    R >= R_HL := (1/sqrt(n_B lam_W lam_H) - K_B)/K_A (0 when every R collapses). Hong & Ling
    2023; THEORY.md section 4. R need not be attainable with integer counts.
    """
    K_A, K_B, n_B = check_int("K_A", K_A, 1), check_int("K_B", K_B, 1), check_int("n_B", n_B, 1)
    lam_W = check_real("lam_W", lam_W, strict=True)
    lam_H = check_real("lam_H", lam_H, strict=True)
    return max((1.0 / math.sqrt(n_B * lam_W * lam_H) - K_B) / K_A, 0.0)


def mse_vanishing_classes(counts: Sequence[int], lam_W: float, lam_H: float) -> tuple[bool, ...]:
    """Which classes vanish (w_k = 0 and class mean 0) at the optimum of the MSE-UFM without bias:
    class k iff n_k <= N^2 lam_W lam_H (soft-thresholding of sqrt(n_k) at N sqrt(lam_W lam_H);
    THEORY.md section 4, cf. Dang et al. 2023). Assumes d >= the number of surviving classes."""
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


def _merged_setup(K_A, K_B, R, E_W, E_H, h_budget):
    K = K_A + K_B
    m = np.array([1.0] * K_A + [float(K_B)])
    pi = np.array([R] * K_A + [1.0]) / (K_A * R + K_B)  # n_k/N for one class of each group
    a = np.full(K_A + 1, 1.0 / K) if h_budget == "class" else pi  # feature-budget weights
    alpha = np.sqrt(K * E_W / m)  # w_i = alpha_i v_i with ||V||_F = 1
    beta = np.sqrt(E_H / (m * a))  # h_i = beta_i u_i with ||U||_F = 1
    return K, m, pi, alpha, beta


def _merged_loss(x, G, p, m, pi, alpha, beta, with_grad=True):
    V, U = x[: G * p].reshape(G, p), x[G * p :].reshape(G, p)
    nv, nu = np.linalg.norm(V), np.linalg.norm(U)
    Vt, Ut = V / nv, U / nu
    Wm, Hm = alpha[:, None] * Vt, beta[:, None] * Ut
    Z = Hm @ Wm.T  # Z[i, j] = <w_j, h_i>: logit of group j for a class of group i
    zmax = Z.max(axis=1, keepdims=True)
    E = m[None, :] * np.exp(Z - zmax)
    S = E.sum(axis=1, keepdims=True)
    lse = (zmax + np.log(S))[:, 0]
    f = float(np.sum(m * pi * (lse - np.diag(Z))))
    if not with_grad:
        return f, Z
    Gz = (m * pi)[:, None] * (E / S - np.eye(len(m)))  # d f / d Z
    gW, gH = Gz.T @ Hm, Gz @ Wm
    gVt, gUt = alpha[:, None] * gW, beta[:, None] * gH
    gV = (gVt - np.sum(gVt * Vt) * Vt) / nv
    gU = (gUt - np.sum(gUt * Ut) * Ut) / nu
    return f, np.concatenate([gV.ravel(), gU.ravel()])


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
    smooth on a product of two spheres; it is solved by BFGS (SciPy) from `starts` random starts
    (plus `x0`), keeping the best. Features live in R^p, p = K_A + 1, enough for any optimum.

    Returns:
      `MergedLPM`, with certificate kappa = (2 sqrt(m_W m_H)/K)/pi_B ("class") or
      (4 m_W m_H/K)/pi_B ("sample"), where m_W = S/(2 E_W) and m_H = S/(2 E_H) are the KKT
      multipliers and S = -<grad_Z loss, Z> = sum_k pi_k <e_k - p_k, z_k> (scaling W or H moves
      the loss by -S); see `lpm_certificate`.
    """
    return _lpm_merged(K_A, K_B, R, E_W, E_H, h_budget, seed, starts, None)[0]


def _lpm_merged(K_A, K_B, R, E_W, E_H, h_budget, seed, starts, x0):
    """`lpm_merged` that also takes and returns the optimiser's point (for warm starts)."""
    from scipy.optimize import minimize

    K_A, K_B = check_int("K_A", K_A, 1), check_int("K_B", K_B, 2)
    R = check_real("R", R, strict=True)
    E_W, E_H = check_real("E_W", E_W, strict=True), check_real("E_H", E_H, strict=True)
    check_choice("h_budget", h_budget, ("class", "sample"))
    K, m, pi, alpha, beta = _merged_setup(K_A, K_B, float(R), float(E_W), float(E_H), h_budget)
    G = p = K_A + 1
    rng = np.random.default_rng(seed)
    inits = [rng.standard_normal(2 * G * p) for _ in range(starts)]
    if x0 is not None:
        inits.insert(0, np.asarray(x0, dtype=float))
    best = None
    for x in inits:
        r = minimize(
            _merged_loss,
            x,
            args=(G, p, m, pi, alpha, beta),
            jac=True,
            method="BFGS",
            options={"gtol": 1e-13, "maxiter": 20000},
        )
        if best is None or r.fun < best.fun:
            best = r
    f, Z = _merged_loss(best.x, G, p, m, pi, alpha, beta, with_grad=False)
    E = m[None, :] * np.exp(Z - Z.max(axis=1, keepdims=True))
    q = E / E.sum(axis=1, keepdims=True)  # q_ij = m_j p_(class of group j) for group i
    S = float(np.sum(m * pi * (np.diag(Z) - np.sum(q * Z, axis=1))))
    pi_B = float(pi[-1])
    if h_budget == "class":
        kappa = S / (K * math.sqrt(E_W * E_H)) / pi_B
    else:
        kappa = S * S / (K * E_W * E_H) / pi_B
    V, U = best.x[: G * p].reshape(G, p), best.x[G * p :].reshape(G, p)
    Wm = alpha[:, None] * V / np.linalg.norm(V)
    Hm = beta[:, None] * U / np.linalg.norm(U)
    rows = list(range(K_A)) + [K_A] * K_B
    return MergedLPM(float(f), Wm[rows], Hm[rows], float(kappa), pi_B), best.x


def lpm_certificate(
    K_A: int, K_B: int, R: float, E_W: float = 1.0, E_H: float = 1.0, h_budget: str = "class"
) -> float:
    """kappa(R): minority collapse is a global optimum of the layer-peeled CE model iff kappa >= 1.

    Derivation (THEORY.md section 4 [D]): the LPM is equivalent to a convex SDP, so its optimum
    minimises the Lagrangian, a regularised UFM with weights set by the multipliers m_W, m_H. By
    Tool A that is min_Z g(Z) + mu ||Z||_* (mu = 2 sqrt(m_W m_H)/K for Fang's per-class budget, on
    class-mean logits z_k with g = sum_k pi_k CE(z_k, k)). At a minority-collapsed point, the block
    of grad g that separates minority classes is -pi_B (I - 11^T/K_B) on the minority rows and
    columns (the softmax is constant across minority rows), of operator norm pi_B, and the rest of
    the first-order condition holds by optimality of the merged problem: collapse is optimal iff
    pi_B <= mu. With the sample-averaged budget the columns carry weights sqrt(pi_k), the block
    has norm sqrt(pi_B) and mu = 2 sqrt(m_W m_H/K): collapse iff pi_B <= 4 m_W m_H/K.
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

    Bisection in log R on kappa(R) = 1 (`lpm_certificate`), bracketed by doubling from R = 1
    (kappa(1) < 1: at balance the optimum is the ETF), warm-starting each merged solve from the
    previous one. Fang et al. prove only that collapse happens as R -> infinity; this threshold
    is derived (THEORY.md section 4) and verified against free optimisation in the tests.
    Raises ValueError if no R <= 2^40 collapses.
    """
    x = None

    def kappa(R):
        nonlocal x
        res, x = _lpm_merged(K_A, K_B, R, E_W, E_H, h_budget, 0, 1 if x is not None else 3, x)
        return res.certificate

    def f(R):
        return kappa(R) - 1.0

    if f(1.0) >= 0:
        return 1.0
    try:
        lo, hi = bracket(f, 1.0, 2.0, limit=2.0**40)
    except ValueError:
        raise ValueError("no minority collapse found for R <= 2^40") from None
    return bisect(f, lo, hi, log=True, rtol=rtol)
