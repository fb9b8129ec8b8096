"""The UFM with a fixed simplex-ETF classifier (docs/theory.md §19): the projection onto each
budget, the optimum h_i = sqrt(E_H) w_{y_i} under the per-sample and sample-averaged budgets for
any counts, the per-class radii of Fang's budget against the reference values and its KKT
conditions, and projected solves that reach all three."""

import math

import jax
import numpy as np
import pytest

import ufm
from ufm.solve import CONVERGED
from ufm.theory.fixed_etf import fixed_etf_radii
from ufm.theory.normalized import sphere_ce_value

EXACT = 1e-9  # closed form vs independent computations
SOLVE = 1e-6  # solved objective and features vs the optimum
FEAS = 1e-12  # budget violation allowed after a projection

# counts, E_H -> (radii to 4-5 digits, value to 12 digits, value at the uniform radius sqrt(E_H)),
# from a convex solver (docs/theory.md §19)
REFERENCE = {
    ((5, 3, 2, 1), 2.0): ((1.8326, 1.5147, 1.2656, 0.8633), 0.337575273200, 0.375147),
    ((6, 3, 1), 0.5): ((0.98469, 0.66608, 0.29449), 0.473893098346, 0.526180),
}


def np_ce(W, H, labels):
    """Mean cross-entropy of the logits W H in NumPy (log-sum-exp)."""
    Z = (W @ H).T
    zmax = Z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(Z - zmax).sum(axis=1))
    return float(np.mean(lse - Z[np.arange(len(labels)), labels]))


def budget(model, H):
    """The constrained quantity of the model's budget (max_i ||h_i||^2 for "each")."""
    sq = np.sum(np.asarray(H) ** 2, axis=0)
    if model.h_budget == "each":
        return sq.max()
    return float(np.sum(np.asarray(model.h_weights()) * sq))


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(E_H=0.0), "E_H"),
        (dict(E_H=-2.0), "E_H"),
        (dict(h_budget="mean"), "h_budget"),
        (dict(d=1), "d"),
        (dict(n=(2, 2)), "n"),
    ],
)
def test_bad_input(kw, name):
    with pytest.raises(ValueError, match=name):
        ufm.FixedETFUFM(**(dict(K=3, d=2, n=2) | kw))


def test_classifier_is_a_unit_etf():
    W = np.asarray(ufm.FixedETFUFM(4, 6, 2).W)
    np.testing.assert_allclose(W @ W.T, (4 * np.eye(4) - 1) / 3, atol=1e-15)


@pytest.mark.parametrize("h_budget", ["class", "sample", "each"])
def test_projection_is_feasible_and_idempotent(key, h_budget):
    model = ufm.FixedETFUFM(3, 4, (4, 2, 1), E_H=0.7, h_budget=h_budget)
    H = 3.0 * jax.random.normal(key, (4, 7))
    P = model.project(H)
    assert budget(model, P) <= 0.7 * (1 + FEAS)
    np.testing.assert_allclose(np.asarray(model.project(P)), np.asarray(P), atol=1e-12)


@pytest.mark.parametrize(("counts", "E_H"), list(REFERENCE))
def test_class_budget_radii(counts, E_H):
    radii_ref, value_ref, uniform_ref = REFERENCE[(counts, E_H)]
    K = len(counts)
    r = fixed_etf_radii(counts, E_H)
    np.testing.assert_allclose(r, radii_ref, atol=6e-5)
    assert np.mean(r**2) == pytest.approx(E_H, rel=1e-12)  # the budget binds
    # KKT: pi_k g'(r_k)/r_k is the same for every class (one multiplier)
    pi = np.asarray(counts) / sum(counts)
    a = K / (K - 1)
    dg = -a / (1 + np.exp(a * r) / (K - 1))
    ratio = pi * dg / r
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)
    model = ufm.FixedETFUFM(K, K, counts, E_H=E_H, h_budget="class")
    opt = ufm.optimum(model)
    assert opt.value == pytest.approx(value_ref, abs=1e-11)
    labels = np.asarray(model.labels)
    assert np_ce(np.asarray(model.W), np.asarray(opt.params), labels) == pytest.approx(
        opt.value, rel=EXACT
    )
    assert budget(model, opt.params) == pytest.approx(E_H, rel=1e-12)
    # the uniform radius claimed for this budget is feasible but worse
    uniform = sphere_ce_value(K, math.sqrt(E_H))
    assert uniform == pytest.approx(uniform_ref, abs=1e-6)
    assert uniform > opt.value + 1e-3


@pytest.mark.parametrize("h_budget", ["sample", "each"])
def test_uniform_budgets_any_counts(h_budget):
    counts, E_H, K = (5, 3, 2, 1), 1.3, 4
    for d in (K - 1, K + 1):
        model = ufm.FixedETFUFM(K, d, counts, E_H=E_H, h_budget=h_budget)
        opt = ufm.optimum(model)
        W, H = np.asarray(model.W), np.asarray(opt.params)
        labels = np.asarray(model.labels)
        np.testing.assert_allclose(H, math.sqrt(E_H) * W.T[:, labels], atol=1e-14)
        f = math.log1p((K - 1) * math.exp(-K * math.sqrt(E_H) / (K - 1)))
        assert opt.value == pytest.approx(f, rel=EXACT)
        assert np_ce(W, H, labels) == pytest.approx(f, rel=EXACT)
        # random feasible features never do better
        rng = np.random.default_rng(d)
        for _ in range(5):
            X = np.asarray(model.project(rng.normal(size=H.shape)))
            assert np_ce(W, X, labels) > opt.value


@pytest.mark.parametrize(("h_budget", "d"), [("class", 5), ("sample", 3), ("each", 3)])
def test_solve_reaches_the_optimum(h_budget, d):
    counts, E_H = (5, 3, 2, 1), 2.0
    model = ufm.FixedETFUFM(4, d, counts, E_H=E_H, h_budget=h_budget)
    opt = ufm.optimum(model)
    res = ufm.solve(model, jax.random.key(0), steps=5000, tol=1e-12, metrics=False)
    assert int(res.status) == CONVERGED
    assert float(res.objective) == pytest.approx(opt.value, rel=SOLVE)
    assert budget(model, res.params) <= E_H * (1 + FEAS)
    np.testing.assert_allclose(np.asarray(res.params), np.asarray(opt.params), atol=SOLVE)
