"""The max-margin UFM and the SELI geometry (docs/theory.md §17): the closed form against the
reference values and an independent primal-dual certificate in NumPy (a feasible primal point and
a feasible dual point with equal values prove optimality), the augmented Lagrangian, and solves
with the method of multipliers that reach the optimum and its multipliers."""

import jax
import numpy as np
import pytest

import ufm
from ufm.solve import CONVERGED
from ufm.theory.max_margin import seli_value

EXACT = 1e-9  # closed form vs the reference values and the independent certificate
REF = 1e-12  # the reference values are given to 12 decimals
SOLVE = 1e-6  # solved objective and geometry vs the optimum

# counts -> optimal value (docs/theory.md §17, reproduced there by a convex solver and SLSQP)
REFERENCE = {
    (6, 3, 1): 3.559026084010,
    (5, 3, 2, 1): 4.851016650427,
    (20, 1, 1): 4.696845502136,
    (1, 1, 8, 8): 5.949747468306,
    (3, 3, 3): 2 * np.sqrt(3.0),
}


def np_problem(counts):
    """(P, Y, D): centring projector, one-hot targets (K, N), diag(counts), in NumPy."""
    K = len(counts)
    Y = np.eye(K)[:, np.repeat(np.arange(K), counts)]
    return np.eye(K) - np.ones((K, K)) / K, Y, np.diag(np.asarray(counts, float))


def np_certificate(counts):
    """(dual value, dual multipliers (K, N), M): M = (P D P)^{+1/2} from a NumPy eigendecomposition
    of P D P (the zero eigenvalue dropped by a threshold), multipliers -M_{c,y_i} off the true
    class."""
    P, Y, D = np_problem(counts)
    lam, V = np.linalg.eigh(P @ D @ P)
    keep = lam > 1e-9 * lam.max()
    M = (V[:, keep] / np.sqrt(lam[keep])) @ V[:, keep].T
    nu = -(M @ Y) * (1 - Y)
    return nu.sum(), nu, M


@pytest.mark.parametrize(
    ("kw", "name"),
    [(dict(K=3, d=1), "d"), (dict(K=5, d=3), "d"), (dict(K=1), "K"), (dict(n=(2, 0, 1)), "n")],
)
def test_bad_input(kw, name):
    with pytest.raises(ValueError, match=name):
        ufm.MaxMarginUFM(**(dict(K=3, d=2, n=2) | kw))


@pytest.mark.parametrize("counts", list(REFERENCE))
def test_value_matches_reference_and_certificate(counts):
    K = len(counts)
    value = seli_value(counts)
    assert value == pytest.approx(REFERENCE[counts], rel=REF, abs=REF)
    # independent route 1: the nuclear norm of P Y from its singular values
    P, Y, D = np_problem(counts)
    assert np.linalg.svd(P @ Y, compute_uv=False).sum() == pytest.approx(value, rel=EXACT)
    # independent route 2: a dual-feasible certificate (nonnegative multipliers, ||M Y||_op = 1)
    # whose value equals the primal value of the feasible point Z = P Y
    dual, nu, M = np_certificate(counts)
    assert nu.min() >= 0 and M[~np.eye(K, dtype=bool)].max() < 0
    assert np.linalg.norm(M @ Y, 2) == pytest.approx(1.0, rel=EXACT)
    assert dual == pytest.approx(value, rel=EXACT)
    # the optimum of the model in every dimension d >= K-1
    for d in (K - 1, K + 1):
        model = ufm.MaxMarginUFM(K, d, counts)
        opt = ufm.optimum(model)
        assert opt.value == pytest.approx(value, rel=EXACT)
        assert float(model.objective(opt.params)) == pytest.approx(value, rel=EXACT)
        assert float(model.norm_cost(opt.params)) == pytest.approx(value, rel=EXACT)


def test_optimum_geometry():
    counts = (5, 3, 2, 1)
    model = ufm.MaxMarginUFM(4, 5, counts)
    opt = ufm.optimum(model)
    W, H, nu = (np.asarray(x) for x in opt.params)
    P, Y, D = np_problem(counts)
    lam, V = np.linalg.eigh(P @ D @ P)
    sqrt_PDP = (V * np.sqrt(np.maximum(lam, 0))) @ V.T
    np.testing.assert_allclose(W @ W.T, sqrt_PDP, atol=EXACT)
    np.testing.assert_allclose(W @ H, P @ Y, atol=EXACT)
    assert np.sum(W * W) == pytest.approx(np.sum(H * H), rel=EXACT)  # balanced factors
    # within-class collapse: every feature of a class is the same vector
    for cols in np.split(np.arange(sum(counts)), np.cumsum(counts)[:-1]):
        np.testing.assert_allclose(H[:, cols], H[:, cols[:1]].repeat(len(cols), 1), atol=EXACT)
    # every margin is active, and the multipliers are those of the certificate
    np.testing.assert_allclose(np.asarray(model.slack(opt.params)), 0.0, atol=EXACT)
    np.testing.assert_allclose(nu, np_certificate(counts)[1], atol=EXACT)


def test_augmented_lagrangian():
    model = ufm.MaxMarginUFM(3, 2, (2, 1, 1))
    p = model.init(jax.random.key(3))
    nu = jax.random.uniform(jax.random.key(4), p.nu.shape) * (1 - model.targets.T)
    p = p._replace(nu=nu)
    W, H, nu = (np.asarray(x) for x in p)
    Y = np.asarray(model.targets).T
    Z = W @ H
    s = (1 - (np.sum(Z * Y, 0)[None, :] - Z)) * (1 - Y)
    expected = 0.5 * (np.sum(W**2) + np.sum(H**2)) + 0.5 * np.sum(
        (np.maximum(nu + s, 0) ** 2 - nu**2) * (1 - Y)
    )
    assert float(model.objective(p)) == pytest.approx(expected, rel=1e-13)
    m = model.metrics(p)
    assert float(m["min_margin"]) == pytest.approx((1 - s)[Y == 0].min(), rel=1e-13)


@pytest.mark.parametrize(("counts", "d"), [((5, 3, 2, 1), 3), ((20, 1, 1), 4)])
def test_solve_reaches_seli(counts, d):
    model = ufm.MaxMarginUFM(len(counts), d, counts)
    opt = ufm.optimum(model)
    res = ufm.solve(model, jax.random.key(0), steps=5000, tol=1e-11, metrics=False)
    assert int(res.status) == CONVERGED
    W, H, nu = (np.asarray(x) for x in res.params)
    P, Y, _ = np_problem(counts)
    assert float(model.norm_cost(res.params)) == pytest.approx(opt.value, rel=SOLVE)
    assert float(res.objective) == pytest.approx(opt.value, rel=SOLVE)
    assert np.linalg.norm(W @ H - P @ Y) <= SOLVE * np.linalg.norm(P @ Y)
    np.testing.assert_allclose(W @ W.T, np.asarray(opt.params.W @ opt.params.W.T), atol=SOLVE)
    np.testing.assert_allclose(nu, np.asarray(opt.params.nu), atol=SOLVE)
    assert float(model.metrics(res.params)["min_margin"]) >= 1 - SOLVE
