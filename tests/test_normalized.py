"""The normalized-feature UFM on the oblique manifold (docs/theory.md §3 and §7): the exact value
against NumPy, the retraction objective (its gradient on the manifold is the Riemannian one),
solves that stay on the manifold at every iterate, and what `optimum` says for K > d+1."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.solve import CONVERGED
from ufm.theory import NoClosedForm

GAP = 1e-8  # relative objective gap the solver must reach
GEOM = 1e-6  # Gram / alignment tolerance: parameters are accurate to ~sqrt(gap) (docs/theory.md §8)
FEAS = 1e-10  # distance from the manifold allowed at any iterate


def np_ce(W, H, labels, tau):
    """Mean cross-entropy of the logits W H / tau in NumPy (log-sum-exp)."""
    Z = (W @ H).T / tau
    zmax = Z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(Z - zmax).sum(axis=1))
    return float(np.mean(lse - Z[np.arange(len(labels)), labels]))


def np_etf(K):
    """(K-1, K) simplex ETF with unit columns from the eigenvectors of I - 11^T/K (NumPy)."""
    lam, V = np.linalg.eigh(np.eye(K) - np.ones((K, K)) / K)
    return math.sqrt(K / (K - 1)) * V[:, lam > 0.5].T


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(tau=0.0), "tau"),
        (dict(tau=-0.5), "tau"),
        (dict(tau=float("nan")), "tau"),
        (dict(r_W=0.0), "r_W"),
        (dict(r_H=-1.0), "r_H"),
        (dict(loss="focal"), "loss"),
        (dict(K=1), "K"),
        (dict(d=0), "d"),
        (dict(n=0), "n"),
    ],
)
def test_bad_input(kw, name):
    with pytest.raises(ValueError, match=name):
        ufm.NormalizedUFM(**(dict(K=3, d=3, n=2) | kw))


def test_hyperparameters_are_leaves():
    m = ufm.NormalizedUFM(3, 2, 4, tau=0.3, r_W=2.0, r_H=0.5)
    leaves, treedef = jax.tree.flatten(m)
    assert leaves == [0.3, 2.0, 0.5]
    m2 = jax.tree.unflatten(treedef, [jnp.asarray(0.7), jnp.asarray(1.0), jnp.asarray(1.0)])
    assert (m2.K, m2.d, m2.n, m2.loss) == (3, 2, 4, "ce") and float(m2.tau) == 0.7


@pytest.mark.parametrize(("K", "d"), [(4, 3), (5, 8), (10, 12)])
@pytest.mark.parametrize(("tau", "r_W", "r_H"), [(1.0, 1.0, 1.0), (0.2, 1.0, 1.0), (0.5, 2.0, 0.3)])
def test_optimum_matches_numpy_etf(K, d, tau, r_W, r_H):
    n = 2
    m = ufm.NormalizedUFM(K, d, n, tau=tau, r_W=r_W, r_H=r_H)
    opt = ufm.optimum(m)
    M = np_etf(K)
    W, H = r_W * M.T, np.repeat(r_H * M, n, axis=1)
    assert opt.value == pytest.approx(np_ce(W, H, np.repeat(np.arange(K), n), tau), rel=1e-12)
    assert float(m.objective(opt.params)) == pytest.approx(opt.value, rel=1e-12)
    Wo, Ho = np.asarray(opt.params.W), np.asarray(opt.params.H)
    np.testing.assert_allclose(Wo @ Wo.T, r_W**2 * K / (K - 1) * (np.eye(K) - 1 / K), atol=1e-13)
    np.testing.assert_allclose(Ho, np.repeat(r_H / r_W * Wo.T, n, axis=1), atol=1e-13)
    # the layer-peeled model with sqrt(E_W E_H) = r_W r_H / tau has the same value (§4 of
    # docs/theory.md)
    lpm = ufm.LayerPeeled(K, d, n, E_W=(r_W / tau) ** 2, E_H=r_H**2)
    assert ufm.optimum(lpm).value == pytest.approx(opt.value, rel=1e-13)


def test_gradient_on_the_manifold_is_riemannian(key):
    """At a point of the manifold the gradient of the retraction objective is the Euclidean
    gradient of the loss with its normal components removed; at the optimum it vanishes (and
    so does the solver's stationarity ||project(x - g) - x||), while the raw gradient does not."""
    m = ufm.NormalizedUFM(4, 5, 3, tau=0.5, r_W=1.5, r_H=0.8)
    p = m.init(key)
    g = jax.grad(m.objective)(p)

    def raw(W, H):
        return ufm.losses.cross_entropy(H.T @ W.T / m.tau, m.targets)

    gW, gH = jax.grad(raw, argnums=(0, 1))(p.W, p.H)
    W, H = p.W / m.r_W, p.H / m.r_H  # unit rows / columns
    np.testing.assert_allclose(g.W, gW - np.sum(gW * W, 1, keepdims=True) * W, atol=1e-14)
    np.testing.assert_allclose(g.H, gH - np.sum(gH * H, 0, keepdims=True) * H, atol=1e-14)
    opt = ufm.optimum(m)
    g = jax.grad(m.objective)(opt.params)
    assert max(float(jnp.abs(g.W).max()), float(jnp.abs(g.H).max())) <= 1e-14
    moved = m.project(jax.tree.map(lambda a, b: a - b, opt.params, g))
    assert float(jnp.abs(moved.W - opt.params.W).max()) <= 1e-14
    gW, _ = jax.grad(raw, argnums=(0, 1))(opt.params.W, opt.params.H)
    assert float(jnp.abs(gW).max()) > 1e-2  # the raw loss still pulls outwards


def test_solve_stays_on_manifold_and_reaches_optimum():
    """The default L-BFGS with the retraction after every update, from 3 random starts, for three
    temperatures and radii (one compilation): every iterate is on the manifold to 1e-10, and
    every start reaches f* with the ETF geometry (the landscape is benign, docs/theory.md §3)."""
    K, d, n = 4, 5, 3
    models = [
        ufm.NormalizedUFM(K, d, n, tau=tau, r_W=r_W, r_H=r_H)
        for tau, r_W, r_H in [(1.0, 1.0, 1.0), (0.3, 1.0, 1.0), (0.5, 2.0, 0.3)]
    ]
    for m in models:
        opt = ufm.optimum(m)
        for s in range(3):
            res = ufm.solve(m, jax.random.key(s), steps=400, tol=1e-13, record_every=1)
            rows = np.asarray(res.history["step"]) >= 0
            assert rows.sum() == int(res.steps) + 1  # every iterate is recorded
            for name in ("sphere_W", "sphere_H"):
                assert np.all(np.asarray(res.history[name])[rows] <= FEAS), name
            gap = (float(res.objective) - opt.value) / opt.value
            assert -1e-12 <= gap <= GAP, (m, gap)
            assert int(res.status) == CONVERGED
            p = res.params
            rep = ufm.check(m, p, opt)
            assert rep.metrics["nc1"] <= 1e-10
            assert rep.gram_gap_W <= GEOM and rep.gram_gap_H <= GEOM
            W, H = np.asarray(p.W), np.asarray(p.H)
            etf = m.r_W**2 * K / (K - 1) * (np.eye(K) - 1 / K)
            np.testing.assert_allclose(W @ W.T, etf, atol=GEOM)
            np.testing.assert_allclose(H, np.repeat(m.r_H / m.r_W * W.T, n, axis=1), atol=GEOM)


def test_more_classes_than_dimensions_says_what_is_known():
    """K > d+1: the ETF value is only a strict lower bound (docs/theory.md §7). Where no
    configuration is known (d = 3, K = 5: the optimal shape depends on tau) `optimum` raises with
    the bound in its message; the regular K-gon at d = 2 (numerically optimal, §7) has the value
    log sum_j exp((cos(2 pi j/K) - 1)/tau), strictly above the bound (0.2539 against 0.1893 at
    K = 4, tau = 0.5)."""
    tau = 0.5
    bound5 = math.log1p(4 * math.exp(-5 / (4 * tau)))
    with pytest.raises(NoClosedForm, match="strict lower bound") as err:
        ufm.optimum(ufm.NormalizedUFM(5, 3, 2, tau=tau))
    assert f"{bound5:.6g}" in str(err.value) and "depends on" in str(err.value)
    K = 4
    m = ufm.NormalizedUFM(K, 2, 3, tau=tau)
    bound = math.log1p((K - 1) * math.exp(-K / ((K - 1) * tau)))
    angles = 2 * np.pi * np.arange(K) / K
    W = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    p = ufm.Params(jnp.asarray(W), jnp.asarray(np.repeat(W.T, 3, axis=1)), None)
    polygon = math.log(np.sum(np.exp((np.cos(angles) - 1) / tau)))
    assert float(m.objective(p)) == pytest.approx(polygon, rel=1e-13)
    assert polygon == pytest.approx(0.2539, abs=1e-4) and bound == pytest.approx(0.1893, abs=1e-4)


def test_no_closed_form_for_imbalance_or_mse():
    with pytest.raises(NoClosedForm, match="balanced"):
        ufm.optimum(ufm.NormalizedUFM(3, 3, (4, 2, 1)))
    with pytest.raises(NoClosedForm, match="loss='ce'"):
        ufm.optimum(ufm.NormalizedUFM(3, 3, 2, loss="mse"))
