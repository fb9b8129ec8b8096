"""The layer-peeled model (docs/theory.md §4): its exact projection, the closed forms of
`optimum` against independent NumPy computations, and projected solves that stay feasible at
every iterate and reach the optimum with the predicted geometry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.solve import CONVERGED
from ufm.theory import NoClosedForm

GAP = 1e-8  # relative objective gap the solver must reach
GEOM = 1e-6  # Gram / norm tolerance: parameters are accurate to ~sqrt(gap) (docs/theory.md §8)
FEAS = 1e-10  # constraint violation allowed at any iterate


def recorded(res, name):
    """The values of a metric at every recorded iterate (rows after an early stop are NaN)."""
    return np.asarray(res.history[name])[np.asarray(res.history["step"]) >= 0]


def np_ce(W, H, labels):
    """Mean cross-entropy of the logits W H in NumPy (log-sum-exp)."""
    Z = (W @ H).T
    zmax = Z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(Z - zmax).sum(axis=1))
    return float(np.mean(lse - Z[np.arange(len(labels)), labels]))


def np_etf(K):
    """(K-1, K) simplex ETF with unit columns from the eigenvectors of I - 11^T/K (NumPy)."""
    lam, V = np.linalg.eigh(np.eye(K) - np.ones((K, K)) / K)
    return math.sqrt(K / (K - 1)) * V[:, lam > 0.5].T


# --- construction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(E_W=0.0), "E_W"),
        (dict(E_W=-1.0), "E_W"),
        (dict(E_H=0.0), "E_H"),
        (dict(E_H=float("inf")), "E_H"),
        (dict(loss="hinge"), "loss"),
        (dict(h_budget="mean"), "h_budget"),
        (dict(K=1), "K"),
        (dict(d=0), "d"),
        (dict(n=(2, 3)), "n"),
    ],
)
def test_bad_input(kw, name):
    args = dict(K=3, d=4, n=2) | kw
    with pytest.raises(ValueError, match=name):
        ufm.LayerPeeled(**args)


def test_budgets_are_leaves_and_structure_static():
    m = ufm.LayerPeeled(3, 4, (2, 3, 1), E_W=0.5, E_H=2.0, h_budget="sample")
    leaves, treedef = jax.tree.flatten(m)
    assert leaves == [0.5, 2.0]
    m2 = jax.tree.unflatten(treedef, [jnp.asarray(1.5), jnp.asarray(3.0)])
    assert (m2.K, m2.n, m2.h_budget, m2.N) == (3, (2, 3, 1), "sample", 6)
    assert m2.labels.tolist() == [0, 0, 1, 1, 1, 2]


# --- the projection ------------------------------------------------------------------------------
def np_project(X, a, E):
    """Euclidean projection of the rows of X onto {sum_i a_i ||x_i||^2 <= E}: x_i/(1 + mu a_i),
    mu >= 0 by bisection on the (decreasing) budget sum (NumPy)."""
    A = (X * X).sum(axis=1)
    q = lambda mu: float(np.sum(a * A / (1 + mu * a) ** 2))  # noqa: E731
    if q(0.0) <= E:
        return X.copy()
    lo, hi = 0.0, 1.0
    while q(hi) > E:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if q(mid) > E else (lo, mid)
    return X / (1 + hi * a)[:, None]


@pytest.mark.parametrize("h_budget", ["class", "sample"])
def test_projection_is_the_euclidean_projection(h_budget, key):
    counts = (9, 4, 1)
    m = ufm.LayerPeeled(3, 4, counts, E_W=0.7, E_H=1.3, h_budget=h_budget)
    kW, kH = jax.random.split(key)
    W = 3.0 * jax.random.normal(kW, (3, 4))
    H = 3.0 * jax.random.normal(kH, (4, m.N))
    p = m.project(ufm.Params(W, H, None))
    bW, bH = m.budgets(p)
    assert abs(float(bW) - 0.7) <= FEAS and abs(float(bH) - 1.3) <= FEAS  # both budgets bind
    a_H = np.repeat(
        1 / (3 * np.array(counts)) if h_budget == "class" else np.full(3, 1 / 14), counts
    )
    np.testing.assert_allclose(p.W, np_project(np.asarray(W), np.full(3, 1 / 3), 0.7), atol=1e-12)
    np.testing.assert_allclose(p.H.T, np_project(np.asarray(H).T, a_H, 1.3), atol=1e-12)
    # feasible points are fixed points, exactly
    q = m.project(ufm.Params(p.W * 0.5, p.H * 0.5, None))
    assert np.array_equal(q.W, p.W * 0.5) and np.array_equal(q.H, p.H * 0.5)


# --- CE, balanced: the closed form ---------------------------------------------------------------
CE_BUDGETS = [(1.0, 2.0), (0.7, 3.0), (2.0, 0.9)]  # sqrt(E_W E_H) from 1.34 to 1.45


@pytest.mark.parametrize(("E_W", "E_H"), CE_BUDGETS)
@pytest.mark.parametrize(("K", "d"), [(4, 3), (4, 6), (7, 9)])
def test_ce_optimum_matches_etf_at_the_budgets(K, d, E_W, E_H):
    n = 3
    m = ufm.LayerPeeled(K, d, n, E_W=E_W, E_H=E_H)
    opt = ufm.optimum(m)
    # independent: the CE of a NumPy ETF at the budgets, features aligned with the classifiers
    M = np_etf(K)  # (K-1, K)
    W = math.sqrt(E_W) * M.T
    H = np.repeat(math.sqrt(E_H) * M, n, axis=1)
    assert opt.value == pytest.approx(np_ce(W, H, np.repeat(np.arange(K), n)), rel=1e-13)
    # the returned minimiser: its value, at the budgets, an ETF, h = sqrt(E_H/E_W) w
    assert float(m.objective(opt.params)) == pytest.approx(opt.value, rel=1e-13)
    Wo, Ho = np.asarray(opt.params.W), np.asarray(opt.params.H)
    np.testing.assert_allclose(Wo @ Wo.T, E_W * K / (K - 1) * (np.eye(K) - 1 / K), atol=1e-13)
    np.testing.assert_allclose(Ho, np.repeat(math.sqrt(E_H / E_W) * Wo.T, n, axis=1), atol=1e-13)
    # the margin of docs/theory.md §4: K sqrt(E_W E_H)/(K-1) between the correct and every wrong
    # logit
    Z = Wo @ Ho[:, ::n]
    margin = K * math.sqrt(E_W * E_H) / (K - 1)
    np.testing.assert_allclose(np.diag(Z)[:, None] - Z, margin * (1 - np.eye(K)), atol=1e-12)


def test_ce_solve_reaches_optimum_feasible_at_every_iterate():
    """Projected gradient (the model's default optimizer) from random starts: every recorded
    iterate (record_every=1) is feasible, and every start reaches f* with the ETF geometry."""
    K, d, n = 4, 5, 3
    models = [ufm.LayerPeeled(K, d, n, E_W=E_W, E_H=E_H) for E_W, E_H in CE_BUDGETS]
    for m in models:
        opt = ufm.optimum(m)
        for s in range(3):
            res = ufm.solve(m, jax.random.key(s), steps=3000, tol=1e-12, record_every=1)
            assert recorded(res, "step").size == int(res.steps) + 1  # every iterate
            for name in ("excess_W", "excess_H"):
                assert np.all(recorded(res, name) <= FEAS), name
            gap = (float(res.objective) - opt.value) / opt.value
            assert -1e-12 <= gap <= GAP, (m, s, gap)
            assert int(res.status) == CONVERGED
            p = res.params
            rep = ufm.check(m, p, opt)
            assert rep.metrics["nc1"] <= 1e-10
            assert rep.gram_gap_W <= GEOM and rep.gram_gap_H <= GEOM
            W, H = np.asarray(p.W), np.asarray(p.H)
            np.testing.assert_allclose(np.sum(W**2, axis=1), m.E_W, atol=GEOM)  # each ||w_k||^2
            np.testing.assert_allclose(np.sum(H**2, axis=0), m.E_H, atol=GEOM)  # each ||h_i||^2
            means = H.reshape(d, K, n).mean(axis=2)
            np.testing.assert_allclose(means, math.sqrt(m.E_H / m.E_W) * W.T, atol=GEOM)


# --- imbalanced: the per-class budget ---------------------------------------------------------
def test_imbalanced_class_budget_iterates_stay_feasible():
    """Fang et al.'s per-class feature budget with R = n_A/n_B = 6: the weighted projection keeps
    every iterate (record_every=1) feasible, and the run ends at a KKT point (stationarity ~ 0)
    with both budgets binding; no closed form is claimed."""
    m = ufm.LayerPeeled(4, 4, (6, 6, 1, 1), E_W=1.0, E_H=3.0)
    with pytest.raises(NoClosedForm, match="minority collapse"):
        ufm.optimum(m)
    res = ufm.solve(m, jax.random.key(1), steps=20000, tol=1e-10, record_every=1)
    assert recorded(res, "step").size == int(res.steps) + 1  # every iterate
    for name in ("excess_W", "excess_H"):
        assert np.all(recorded(res, name) <= FEAS), name
    assert res.status_name == "converged"
    bW, bH = m.budgets(res.params)
    assert abs(float(bW) - 1.0) <= GEOM and abs(float(bH) - 3.0) <= GEOM


# --- MSE: projection of Y onto a nuclear-norm ball ---------------------------------------------
def np_mse_lpm(counts, d, E_W, E_H):
    """f* of the MSE layer-peeled model (sample budget): min (1/(2N)) sum_k (sqrt(n_k) - s_k)^2
    over s >= 0, sum s <= sqrt(K E_W N E_H), at most d nonzero (kept: the largest sqrt(n_k)),
    by bisection on the soft threshold (NumPy)."""
    counts = np.asarray(counts, dtype=float)
    K, N = len(counts), counts.sum()
    sig = np.sort(np.sqrt(counts))[::-1]
    kept, dropped = sig[: min(d, K)], sig[min(d, K) :]
    R = math.sqrt(K * E_W * N * E_H)
    lo, hi = 0.0, float(kept.max())
    if kept.sum() > R:
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if np.maximum(kept - mid, 0).sum() > R else (lo, mid)
        s = np.maximum(kept - hi, 0)
    else:
        s = kept
    return float((np.sum((kept - s) ** 2) + np.sum(dropped**2)) / (2 * N))


MSE_CASES = [
    ((3, 3, 3, 3), 5, 0.3, 0.5),  # balanced, the ball binds: t = K sqrt(E_W E_H)/K
    ((3, 3, 3, 3), 5, 3.0, 0.5),  # balanced, inside: exact fit, f* = 0
    ((8, 4, 2, 1), 5, 0.4, 0.4),  # imbalanced, the smallest class is thresholded away
    ((8, 4, 2, 1), 3, 0.4, 0.4),  # rank-limited, d < K
]


@pytest.mark.parametrize(("counts", "d", "E_W", "E_H"), MSE_CASES)
def test_mse_optimum_matches_nuclear_ball_projection(counts, d, E_W, E_H):
    m = ufm.LayerPeeled(4, d, counts, loss="mse", E_W=E_W, E_H=E_H, h_budget="sample")
    opt = ufm.optimum(m)
    assert opt.value == pytest.approx(np_mse_lpm(counts, d, E_W, E_H), rel=1e-12, abs=1e-15)
    assert float(m.objective(opt.params)) == pytest.approx(opt.value, rel=1e-12, abs=1e-15)
    bW, bH = m.budgets(opt.params)
    assert float(bW) <= E_W * (1 + 1e-12) and float(bH) <= E_H * (1 + 1e-12)
    if len(set(counts)) == 1 and math.sqrt(E_W * E_H) < 1:  # balanced, binding: an OF
        W = np.asarray(opt.params.W)
        np.testing.assert_allclose(W @ W.T, E_W * np.eye(4), atol=1e-13)


def test_mse_solve_reaches_optimum():
    models = [
        ufm.LayerPeeled(4, 5, (8, 4, 2, 1), loss="mse", E_W=E_W, E_H=E_H, h_budget="sample")
        for E_W, E_H in [(0.4, 0.4), (0.2, 0.7)]
    ]
    for m in models:
        opt = ufm.optimum(m)
        for s in range(2):
            res = ufm.solve(m, jax.random.key(s), steps=3000, tol=1e-12, record_every=1)
            for name in ("excess_W", "excess_H"):
                assert np.all(recorded(res, name) <= FEAS), name
            gap = (float(res.objective) - opt.value) / opt.value
            assert -1e-12 <= gap <= GAP, (m, gap)
            W, W_star = np.asarray(res.params.W), np.asarray(opt.params.W)
            np.testing.assert_allclose(W @ W.T, W_star @ W_star.T, atol=GEOM)  # thresholded OF


def test_no_closed_form_says_why():
    with pytest.raises(NoClosedForm, match="d >= K-1"):
        ufm.optimum(ufm.LayerPeeled(5, 2, 3))
    with pytest.raises(NoClosedForm, match="h_budget='sample'"):
        ufm.optimum(ufm.LayerPeeled(3, 3, (3, 2, 1), loss="mse"))
