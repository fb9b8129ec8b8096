"""The regression UFM and neural regression collapse (docs/theory.md §18): the closed form against
an independent soft-thresholding of the centred targets in NumPy at c below, between and above
the eigenvalues of Sigma, the geometry (Gram of W, bias, H 1 = 0), the metrics NRC1-NRC3, and
solves that reach the optimum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.metrics.regression import nrc_metrics
from ufm.solve import CONVERGED
from ufm.theory.regression import regression_value, target_spectrum

EXACT = 1e-9  # closed form vs the independent NumPy computation
SOLVE = 1e-6  # solved objective and geometry vs the optimum
K, N = 3, 40


@pytest.fixture(scope="module")
def targets():
    """(K, N) targets with well separated covariance eigenvalues."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(K, N)) * np.array([[2.0], [1.0], [0.5]]) + np.array([[1.0], [-2], [0]])


def c_positions(Y):
    """Values of c = N lam_W lam_H below all eigenvalues, between each pair, and above all."""
    lam = np.sort(np.linalg.eigvalsh(np.cov(Y, bias=True)))
    return [0.5 * lam[0], 0.5 * (lam[0] + lam[1]), 0.5 * (lam[1] + lam[2]), 2 * lam[2]]


def np_optimum(Y, d, lam_W, lam_H):
    """(value, W W^T, W H, b) by the nuclear-norm reduction: the singular values of the centred
    targets soft-thresholded at N sqrt(lam_W lam_H), the d largest kept (NumPy SVD)."""
    n = Y.shape[1]
    mu = np.sqrt(lam_W * lam_H)
    ybar = Y.mean(axis=1, keepdims=True)
    U, s, Vt = np.linalg.svd(Y - ybar, full_matrices=False)
    t = np.maximum(s - n * mu, 0.0)
    t[d:] = 0.0
    Z = (U * t) @ Vt
    value = np.sum((Z - (Y - ybar)) ** 2) / (2 * n) + mu * t.sum()
    gram = np.sqrt(lam_H / lam_W) * (U * t) @ U.T
    return value, gram, Z, ybar[:, 0]


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(Y=np.ones(5)), "Y"),
        (dict(Y=np.ones((2, 3, 4))), "Y"),
        (dict(Y=np.ones((2, 1))), "Y"),
        (dict(Y=np.array([[0.0, np.nan]])), "Y"),
        (dict(Y="targets"), "Y"),
        (dict(lam_W=-1.0), "lam_W"),
        (dict(lam_H=np.inf), "lam_H"),
        (dict(d=0), "d"),
    ],
)
def test_bad_input(kw, name):
    with pytest.raises(ValueError, match=name):
        ufm.RegressionUFM(**(dict(d=2, Y=np.ones((2, 4))) | kw))


def test_targets_are_a_leaf(targets):
    m = ufm.RegressionUFM(4, targets, lam_W=0.1, lam_H=0.2)
    leaves, treedef = jax.tree.flatten(m)
    assert len(leaves) == 3 and np.array_equal(np.asarray(leaves[0]), targets)
    m2 = jax.tree.unflatten(treedef, [jnp.zeros((K, N)), 0.3, 0.4])
    assert (m2.K, m2.N, m2.d) == (K, N, 4)


@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize("lam_W", [0.1, 0.02])
@pytest.mark.parametrize("d", [3, 5, 1])
def test_optimum_matches_soft_thresholding(targets, position, lam_W, d):
    c = c_positions(targets)[position]
    lam_H = c / (N * lam_W)
    model = ufm.RegressionUFM(d, targets, lam_W=lam_W, lam_H=lam_H)
    opt = ufm.optimum(model)
    value, gram, Z, b = np_optimum(targets, d, lam_W, lam_H)
    assert opt.value == pytest.approx(value, rel=EXACT)
    assert float(model.objective(opt.params)) == pytest.approx(value, rel=EXACT)
    W, H, b_opt = (np.asarray(x) for x in opt.params)
    np.testing.assert_allclose(W @ W.T, gram, atol=EXACT)
    np.testing.assert_allclose(W @ H, Z, atol=EXACT)
    np.testing.assert_allclose(b_opt, b, atol=EXACT)
    np.testing.assert_allclose(H.sum(axis=1), 0.0, atol=EXACT)
    # the value depends on c only (both lam_W give the same number), branch by branch
    lam = np.linalg.eigvalsh(np.cov(targets, bias=True))[::-1]
    first = (lam > c) & (np.arange(K) < d)
    formula = np.sum(np.where(first, np.sqrt(c * lam) - c / 2, lam / 2))
    assert opt.value == pytest.approx(formula, rel=EXACT)
    assert regression_value(lam, c, d) == pytest.approx(formula, rel=EXACT)


def test_nrc_metrics_at_the_optimum(targets):
    lam, _, _ = target_spectrum(targets)
    c = c_positions(targets)[0]  # below every eigenvalue: all of Sigma^{1/2} - sqrt(c) survives
    model = ufm.RegressionUFM(5, targets, lam_W=0.1, lam_H=c / (N * 0.1))
    p = ufm.optimum(model).params
    m = nrc_metrics(p.H, p.W, jnp.asarray(targets))
    for k in ("nrc1", "nrc2", "nrc3"):
        assert abs(float(m[k])) < EXACT
    assert float(m["nrc3_gamma"]) == pytest.approx(c, rel=1e-6)
    # c between eigenvalues: W W^T is (Sigma^{1/2} - sqrt(c))_+, which no gamma <= lam_min fits
    model = model.replace(lam_H=c_positions(targets)[2] / (N * 0.1))
    p = ufm.optimum(model).params
    assert float(nrc_metrics(p.H, p.W, jnp.asarray(targets))["nrc3"]) > 1e-3


def test_nrc_metrics_against_numpy():
    rng = np.random.default_rng(1)
    d, n = 6, 30
    H, W, Y = rng.normal(size=(d, n)), rng.normal(size=(K, d)), rng.normal(size=(K, n))
    m = {
        k: float(v) for k, v in nrc_metrics(jnp.asarray(H), jnp.asarray(W), jnp.asarray(Y)).items()
    }
    C = H - H.mean(axis=1, keepdims=True)
    Hn = C / np.linalg.norm(C, axis=0)
    pcs = np.linalg.svd(C)[0][:, :K]  # leading principal directions
    assert m["nrc1"] == pytest.approx(np.mean(np.sum((Hn - pcs @ pcs.T @ Hn) ** 2, 0)), rel=1e-10)
    P_W = np.linalg.pinv(W) @ W  # projector onto the row space of W
    assert m["nrc2"] == pytest.approx(np.mean(np.sum((Hn - P_W @ Hn) ** 2, 0)), rel=1e-10)
    # NRC3 by a dense grid over gamma in [0, lam_min]
    lam, V = np.linalg.eigh(np.cov(Y, bias=True))
    A = W @ W.T / np.linalg.norm(W @ W.T)

    def gap(gamma):
        B = (V * (np.sqrt(lam) - np.sqrt(gamma))) @ V.T
        return np.sum((A - B / np.linalg.norm(B)) ** 2)

    grid = np.linspace(0.0, lam[0], 2001)  # a coarse grid, then a fine one around its best
    best = min(grid, key=gap)
    step = grid[1]
    best = min(np.linspace(max(best - step, 0.0), min(best + step, lam[0]), 2001), key=gap)
    assert m["nrc3"] == pytest.approx(gap(best), rel=1e-8)
    assert m["nrc3"] <= gap(best) + 1e-15


def test_solve_reaches_the_optimum(targets):
    """One compilation serves every c (Y and the decays are leaves)."""
    for c in c_positions(targets):
        model = ufm.RegressionUFM(5, targets, lam_W=0.1, lam_H=c / (N * 0.1))
        opt = ufm.optimum(model)
        res = ufm.solve(model, jax.random.key(0), steps=3000, tol=1e-12, metrics=False)
        assert int(res.status) == CONVERGED
        assert float(res.objective) == pytest.approx(opt.value, rel=SOLVE)
        W, H, b = (np.asarray(x) for x in res.params)
        Wo, Ho, bo = (np.asarray(x) for x in opt.params)
        np.testing.assert_allclose(
            W @ W.T, Wo @ Wo.T, atol=SOLVE * np.linalg.norm(Wo @ Wo.T) + 1e-9
        )
        np.testing.assert_allclose(W @ H, Wo @ Ho, atol=SOLVE * np.linalg.norm(Wo @ Ho) + 1e-9)
        np.testing.assert_allclose(b, bo, atol=SOLVE)
