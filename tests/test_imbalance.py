"""Imbalance and minority collapse: the thresholds of ufm.imbalance against free optimisation.

* Regularised CE-UFM (Hong & Ling): a sweep of the weight decay through n_B = N^2 lam_W lam_H.
* MSE-UFM without bias: exactly the classes with n_k <= N^2 lam_W lam_H vanish.
* Layer-peeled model (Fang et al.): R_0 from the certificate root-find; below it the free optimum
  beats every minority-collapsed point, above it the free optimum is collapsed and equals the
  merged problem's value; the minority-collapse curve increases with R.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ufm
from ufm.imbalance import (
    hong_ling_ratio,
    lpm_merged,
    lpm_threshold,
    minority_classes,
    minority_collapse_curve,
    minority_cosine,
    minority_spread,
    mse_vanishing_classes,
    two_group_counts,
)
from ufm.solve import run

OPT = optax.lbfgs()
COLLAPSED = 1e-5  # minority spread of a collapsed solution (parameters ~ sqrt(objective gap))
SPREAD = 0.05  # minority spread of a solution that is clearly not collapsed
GAP = 1e-10  # relative objective agreement


@jax.jit
def _solve_ufm(model, key):
    return run(model, model.init(key), OPT, 5000, 5000, 1e-11, metrics=False)


# --- measures -----------------------------------------------------------------------------------
def test_minority_measures_on_known_frames():
    M = np.asarray(ufm.geometry.simplex_etf(5, 6)).T  # (K, d) unit ETF rows
    assert abs(float(minority_cosine(M, (2, 3, 4))) + 1 / 4) < 1e-12
    W = M.copy()
    W[3] = W[4] = W[2]
    assert float(minority_spread(W, (2, 3, 4))) == 0.0
    assert abs(float(minority_cosine(W, (2, 3, 4))) - 1) < 1e-12
    stacked = np.stack([M, W])  # leading axes are kept
    np.testing.assert_allclose(minority_cosine(stacked, (2, 3, 4)), [-0.25, 1.0], atol=1e-12)
    assert minority_classes((5, 5, 1, 1)) == (2, 3)
    # a curve from batched results (e.g. seeds x grid points): the best finite run is used
    from types import SimpleNamespace

    batch = np.stack([np.stack([M, W]), np.stack([W, M])])  # (2, 2, K, d)
    obj = np.array([[3.0, 2.0], [np.nan, 1.0]])  # best: [1, 1], the ETF
    model = ufm.UFM(K=5, d=6, n=(4, 4, 1, 1, 1))
    curve = minority_collapse_curve(
        [(model, SimpleNamespace(params=SimpleNamespace(W=batch), objective=obj))]
    )
    assert curve.R[0] == 4 and curve.objective[0] == 1.0
    assert abs(curve.cosine[0] + 1 / 4) < 1e-12
    with pytest.raises(ValueError, match="minority"):
        minority_cosine(M, (1,))


# --- regularised CE-UFM: Hong & Ling ----------------------------------------------------------
def test_hong_ling_threshold_sweep_over_weight_decay(key):
    # K_A = K_B = 3, n_A = 50, n_B = 4, no bias: collapse iff n_B <= N^2 lam^2 (lam_W = lam_H),
    # i.e. lam >= lam* = sqrt(n_B)/N. The majority survives while n_A > N^2 lam^2 (lam < 3.5 lam*).
    counts = two_group_counts(3, 3, 50, 4)
    N = sum(counts)
    lam_star = math.sqrt(4) / N
    assert abs(ufm.theory.regularized.hong_ling_threshold(N, lam_star, lam_star) - 4) < 1e-12
    factors = [0.5, 0.8, 0.9, 1.1, 1.4]
    cosines, spreads = [], []
    for f, k in zip(factors, jax.random.split(key, len(factors)), strict=True):
        lam = f * lam_star
        m = ufm.UFM(K=6, d=6, n=counts, lam_W=lam, lam_H=lam, bias=False)
        res = _solve_ufm(m, k)
        assert int(res.status) == 0
        W, H = res.params.W, res.params.H
        spreads.append(float(minority_spread(W, (3, 4, 5))))
        cosines.append(float(minority_cosine(W, (3, 4, 5))))
        mu = np.stack([np.asarray(H)[:, m.labels == k].mean(1) for k in range(6)])
        mean_spread = np.max(np.linalg.norm(mu[3:, None] - mu[None, 3:], axis=-1))
        assert (spreads[-1] < COLLAPSED) == (f >= 1)
        assert (mean_spread < COLLAPSED * np.max(np.linalg.norm(mu, axis=1))) == (f >= 1)
        assert float(minority_spread(W, (0, 1, 2))) > SPREAD  # the majority does not collapse
    assert all(s > SPREAD for s in spreads[:3])
    # the trend: the minority classifiers' cosine rises with the weight decay up to collapse
    assert all(a < b for a, b in zip(cosines, cosines[1:4], strict=False))
    assert min(cosines[3:]) > 1 - COLLAPSED


def test_hong_ling_threshold_with_a_regularised_bias(key):
    # docs/theory.md §4 argues that a bias does not move the threshold; check both sides of it.
    counts = two_group_counts(3, 3, 50, 4)
    lam_star = math.sqrt(4) / sum(counts)
    for f, k in zip((0.9, 1.1), jax.random.split(key), strict=True):
        lam = f * lam_star
        m = ufm.UFM(K=6, d=6, n=counts, lam_W=lam, lam_H=lam, lam_b=lam, bias=True)
        res = _solve_ufm(m, k)
        assert (float(minority_spread(res.params.W, (3, 4, 5))) < COLLAPSED) == (f > 1)


def test_hong_ling_ratio_places_the_threshold():
    # R_HL solves n_B = (K_A R + K_B)^2 n_B^2 lam_W lam_H exactly
    K_A, K_B, n_B, lW, lH = 3, 2, 5, 1e-3, 4e-3
    R = hong_ling_ratio(K_A, K_B, n_B, lW, lH)
    N = (K_A * R + K_B) * n_B
    assert abs(N * N * lW * lH - n_B) < 1e-10 * n_B
    assert hong_ling_ratio(2, 2, 1, 10.0, 10.0) == 0.0  # every ratio collapses
    with pytest.raises(ValueError, match="lam_W"):
        hong_ling_ratio(2, 2, 1, 0.0, 1.0)


# --- MSE-UFM without bias: class vanishing ------------------------------------------------------
def test_mse_class_vanishing_sweep(key):
    counts = (16, 9, 4, 1)
    N = sum(counts)
    # sweep N^2 lam^2 through the counts: 0, 1, 2, 3 then all 4 classes vanish
    levels = [0.5, 2.0, 6.0, 12.0, 20.0]
    vanished = []
    for level, k in zip(levels, jax.random.split(key, len(levels)), strict=True):
        lam = math.sqrt(level) / N
        m = ufm.UFM(K=4, d=4, n=counts, loss="mse", lam_W=lam, lam_H=lam, bias=False)
        res = _solve_ufm(m, k)
        norms = np.linalg.norm(np.asarray(res.params.W), axis=1)
        predicted = mse_vanishing_classes(counts, lam, lam)
        assert tuple(norms < COLLAPSED) == predicted
        # the survivors' squared norms are sqrt(n_k) - N lam (times sqrt(lam_H/lam_W) = 1)
        expected = np.maximum(np.sqrt(counts) - N * lam, 0)
        np.testing.assert_allclose(norms**2, expected, atol=COLLAPSED)
        opt = ufm.optimum(m)
        assert abs(float(res.objective) - opt.value) <= GAP * opt.value
        vanished.append(sum(predicted))
    assert vanished == [0, 1, 2, 3, 4]


# --- layer-peeled model: R_0 -----------------------------------------------------------------
class _OnBudgets:
    """Fang et al.'s layer-peeled CE problem with both budgets active, as an unconstrained problem
    on (V, U), written here independently of ufm.LayerPeeled: W = sqrt(K E_W) V/||V|| and
    h_i = sqrt(E_H/a_i) u_i/||U|| with a_i = 1/(K n_{y_i}), so that (1/K) sum ||w_k||^2 = E_W and
    (1/K) sum_k (1/n_k) sum_i ||h_i||^2 = E_H exactly (the loss decreases along every scaling, so
    the budgets are active at the optimum). Labels and weights are arrays, so that one compilation
    serves every layout with the same N."""

    def __init__(self, labels, a, E_W, E_H):
        self.labels, self.a, self.E_W, self.E_H = labels, a, E_W, E_H

    def feasible(self, p):
        K = p.W.shape[0]
        W = jnp.sqrt(K * self.E_W) * p.W / jnp.linalg.norm(p.W)
        H = p.H * jnp.sqrt(self.E_H / self.a)[None, :] / jnp.linalg.norm(p.H)
        return ufm.Params(W, H, None)

    def objective(self, p):
        q = self.feasible(p)
        Y = jax.nn.one_hot(self.labels, q.W.shape[0], dtype=q.W.dtype)
        return ufm.losses.cross_entropy(q.H.T @ q.W.T, Y)


@jax.jit
def _solve_lpm(labels, a, E_W, E_H, key):
    kW, kH = jax.random.split(key)
    K, d, N = 10, 10, labels.shape[0]
    p0 = ufm.Params(jax.random.normal(kW, (K, d)), jax.random.normal(kH, (d, N)), None)
    prob = _OnBudgets(labels, a, E_W, E_H)
    res = run(prob, p0, OPT, 20000, 20000, 1e-10)
    return res._replace(params=prob.feasible(res.params))


def test_lpm_threshold_against_free_optimisation(key):
    # Fang et al.'s setting: K_A = K_B = 5, E_W = 1, E_H = 5, per-class feature budget.
    K_A = K_B = 5
    R0 = lpm_threshold(K_A, K_B, 1.0, 5.0)
    assert lpm_merged(K_A, K_B, 0.98 * R0, 1.0, 5.0).certificate < 1
    assert lpm_merged(K_A, K_B, 1.02 * R0, 1.0, 5.0).certificate > 1
    # layouts with n_A + n_B = S (one compilation): balanced, then ratios around R_0
    S = 56
    n_B_lo = math.ceil(S / (0.85 * R0 + 1))  # R = (S - n_B)/n_B <= 0.85 R_0
    n_B_hi = math.floor(S / (1.05 * R0 + 1))  # R >= 1.05 R_0
    layouts = [(28, 28), (S - n_B_lo, n_B_lo), (S - n_B_hi, n_B_hi)]
    assert (S - n_B_lo) / n_B_lo < 0.85 * R0 and 1.05 * R0 < (S - n_B_hi) / n_B_hi < 1.5 * R0
    runs = []
    for (n_A, n_B), k in zip(layouts, jax.random.split(key, len(layouts)), strict=True):
        m = ufm.LayerPeeled(K=10, d=10, n=two_group_counts(K_A, K_B, n_A, n_B), E_W=1.0, E_H=5.0)
        labels = np.repeat(np.arange(10), m.counts)
        a = 1.0 / (10 * np.asarray(m.counts, float)[labels])
        res = _solve_lpm(jnp.asarray(labels), jnp.asarray(a), 1.0, 5.0, k)
        assert int(res.status) == 0
        W, H = np.asarray(res.params.W), np.asarray(res.params.H)
        assert abs(np.sum(W**2) / 10 - 1) < 1e-12 and abs(np.sum(a * np.sum(H**2, 0)) - 5) < 1e-12
        runs.append((m, res))
        R = n_A / n_B
        merged = lpm_merged(K_A, K_B, R, 1.0, 5.0)
        f = float(res.objective)
        if R < R0:  # the free optimum strictly beats every minority-collapsed point
            assert f < merged.value - 1e-6
        else:  # collapse is optimal: equal values, collapsed classifiers
            assert abs(f - merged.value) <= GAP * merged.value
            assert float(minority_spread(W, range(5, 10))) < COLLAPSED
    # the merged problem's point is feasible for ufm.LayerPeeled and attains its value there
    G = ufm.Params(jnp.asarray(merged.W), jnp.asarray(np.repeat(merged.H.T, m.counts, 1)), None)
    bW, bH = m.budgets(G)
    assert abs(float(bW) - 1) < 1e-12 and abs(float(bH) - 5) < 1e-12
    assert abs(float(m.objective(G)) - merged.value) < 1e-12
    curve = minority_collapse_curve(runs)
    # balanced: Fang et al.'s Theorem 1, the ETF (cosine -1/(K-1)) with the value
    # log(1 + (K-1) exp(-K sqrt(E_W E_H)/(K-1))) (docs/theory.md §4)
    balanced = math.log(1 + 9 * math.exp(-10 * math.sqrt(5) / 9))
    assert curve.R[0] == 1 and abs(curve.objective[0] - balanced) <= GAP * balanced
    assert abs(curve.cosine[0] + 1 / 9) < COLLAPSED
    # the trend: the minority cosine rises with R and reaches 1 beyond R_0
    assert np.all(np.diff(curve.R) > 0) and np.all(np.diff(curve.cosine) > 0)
    assert curve.cosine[-1] > 1 - COLLAPSED and curve.spread[-1] < COLLAPSED
    assert curve.spread[1] > SPREAD


def test_lpm_threshold_root_for_both_budgets():
    # the certificate changes sign at the returned value, for either feature budget
    for budget in ("class", "sample"):
        R0 = lpm_threshold(2, 2, 1.0, 2.0, budget, rtol=1e-6)
        assert R0 > 1
        assert lpm_merged(2, 2, 0.99 * R0, 1.0, 2.0, budget).certificate < 1
        assert lpm_merged(2, 2, 1.01 * R0, 1.0, 2.0, budget).certificate > 1
