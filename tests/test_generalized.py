"""More classes than dimensions (K > d+1): the metrics of ufm.generalized against exact values and
an independent QP, and the K-gon optima of ufm.theory.generalized against free optimisation from
several starts (docs/theory.md §7)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize

import ufm
from ufm.generalized import (
    gnc_metrics,
    hyperspherical_energy,
    min_pairwise_distance,
    one_vs_rest_distances,
)
from ufm.solve import run
from ufm.theory.generalized import cross_polytope, polygon, polygon_ufm_scale

EXACT = 1e-12
GAP = 1e-10  # relative objective agreement of the best start
SHAPE = 1e-5  # geometry of a converged run (parameters ~ sqrt(gap))
OPT = optax.lbfgs()
STARTS = 4


@jax.jit
def _solve(model, key):
    return run(model, model.init(key), OPT, 5000, 5000, 1e-11, metrics=False)


def _best_of(model, key, starts=STARTS):
    runs = [_solve(model, k) for k in jax.random.split(key, starts)]
    values = [float(r.objective) for r in runs]
    return runs[int(np.argmin(values))], values


# --- metrics --------------------------------------------------------------------------------------
def _hull_distance_qp(x, X):
    """dist(x, conv(rows of X)) by SLSQP over the simplex (independent of ufm)."""
    m = X.shape[0]
    res = minimize(
        lambda lam: np.sum((X.T @ lam - x) ** 2),
        np.full(m, 1 / m),
        jac=lambda lam: 2 * X @ (X.T @ lam - x),
        bounds=[(0, 1)] * m,
        constraints=[{"type": "eq", "fun": lambda lam: lam.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    return math.sqrt(max(res.fun, 0.0))


def test_one_vs_rest_distance_exact_frames_and_qp(key):
    d = np.asarray(one_vs_rest_distances(jnp.asarray(polygon(7))))
    np.testing.assert_allclose(d, 1 - math.cos(2 * math.pi / 7), atol=EXACT)
    np.testing.assert_allclose(one_vs_rest_distances(jnp.asarray(cross_polytope(3))), 1, atol=EXACT)
    M = np.asarray(ufm.geometry.simplex_etf(4, 3)).T
    np.testing.assert_allclose(one_vs_rest_distances(jnp.asarray(M)), 4 / 3, atol=EXACT)
    W = np.asarray(jax.random.normal(key, (7, 2)))  # same shape as the 7-gon: no recompilation
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    ref = [_hull_distance_qp(U[k], np.delete(U, k, axis=0)) for k in range(7)]
    np.testing.assert_allclose(one_vs_rest_distances(jnp.asarray(W)), ref, atol=1e-7)
    W3 = np.asarray(jax.random.normal(key, (6, 3)))  # the cross-polytope's shape
    U3 = W3 / np.linalg.norm(W3, axis=1, keepdims=True)
    ref3 = [_hull_distance_qp(U3[k], np.delete(U3, k, axis=0)) for k in range(6)]
    np.testing.assert_allclose(one_vs_rest_distances(jnp.asarray(W3)), ref3, atol=1e-7)


def test_energy_and_pairwise_distance_exact():
    K = 6
    ref = np.mean([1 / (2 * math.sin(math.pi * m / K)) for m in range(1, K)])
    assert abs(float(hyperspherical_energy(jnp.asarray(polygon(K)))) - ref) < EXACT
    log_ref = np.mean([-math.log(2 * math.sin(math.pi * m / K)) for m in range(1, K)])
    assert abs(float(hyperspherical_energy(jnp.asarray(polygon(K)), s=0)) - log_ref) < EXACT
    assert abs(float(min_pairwise_distance(jnp.asarray(polygon(K)))) - 1.0) < EXACT  # 2 sin(pi/6)
    assert abs(float(min_pairwise_distance(jnp.asarray(cross_polytope(4)))) - math.sqrt(2)) < EXACT
    with pytest.raises(ValueError, match="s"):
        hyperspherical_energy(jnp.asarray(polygon(K)), s=-1)


# --- the regularised CE-UFM with d = 2 ------------------------------------------------------------
def test_polygon_scale_is_the_1d_minimum():
    # independent: minimise the K-gon objective over the scale by a dense grid + Brent
    K, c = 5, 0.03
    cos1 = np.cos(2 * np.pi * np.arange(K) / K) - 1

    def phi(rho):
        return float(np.log(np.sum(np.exp(rho * cos1)))) + K * c * rho

    from scipy.optimize import minimize_scalar

    ref = minimize_scalar(phi, bounds=(0, 50), method="bounded", options={"xatol": 1e-12})
    rho, value = polygon_ufm_scale(K, c)
    assert abs(value - ref.fun) < 1e-13 and abs(rho - ref.x) < 1e-5
    assert polygon_ufm_scale(5, 0.2) == (0.0, math.log(5))  # Kc >= 1: the zero solution


def test_polygon_optimum_against_free_optimisation_and_trend_in_K(key):
    # no bias: the regular K-gon is the best of several starts for K = 5, 6 in d = 2 (never
    # beaten), and the one-vs-rest distance of the free solution follows 1 - cos(2 pi/K)
    lam, n = 5e-3, 2
    distances = []
    for K, k in zip((5, 6), jax.random.split(key, 2), strict=True):
        m = ufm.UFM(K=K, d=2, n=n, lam_W=lam, lam_H=lam, bias=False)
        opt = ufm.optimum(m)
        best, values = _best_of(m, k)
        assert min(values) >= opt.value * (1 - GAP)  # no start beats the K-gon
        assert abs(min(values) - opt.value) <= GAP * opt.value
        W, H = best.params.W, best.params.H
        g = gnc_metrics(H, m.labels, W)
        assert abs(float(g["one_vs_rest"]) - (1 - math.cos(2 * math.pi / K))) < SHAPE
        energy = np.mean([1 / (2 * math.sin(math.pi * j / K)) for j in range(1, K)])
        assert abs(float(g["energy"]) - energy) < SHAPE
        assert float(g["nc1_normalized"]) < SHAPE and float(g["self_duality"]) < SHAPE
        # the K-gon's scale: ||w_k||^2 = rho* sqrt(n lam_H/lam_W)
        rho, _ = polygon_ufm_scale(K, math.sqrt(n) * lam)
        np.testing.assert_allclose(
            np.sum(np.asarray(W) ** 2, axis=1), rho * math.sqrt(n), rtol=SHAPE
        )
        distances.append(float(g["one_vs_rest"]))
    assert distances[0] > distances[1]
    # the optimum's own parameters attain its value
    assert abs(float(m.objective(opt.params)) - opt.value) < EXACT * opt.value


def test_with_a_bias_the_polygon_is_beaten(key):
    # d < K-1 with a bias: no closed form, and free optimisation goes below the K-gon value
    m = ufm.UFM(K=6, d=2, n=2, lam_W=5e-3, lam_H=5e-3, lam_b=5e-3, bias=True)
    with pytest.raises(ufm.NoClosedForm, match="bias"):
        ufm.optimum(m)
    polygon_value = ufm.optimum(ufm.UFM(K=6, d=2, n=2, lam_W=5e-3, lam_H=5e-3, bias=False)).value
    _, values = _best_of(m, key, starts=2)
    assert min(values) < 0.99 * polygon_value


@pytest.mark.parametrize(("K", "d"), [(6, 3), (5, 1), (8, 3)])
def test_no_closed_form_beyond_the_known_cases(K, d):
    with pytest.raises(ufm.NoClosedForm, match="no closed form is known"):
        ufm.optimum(ufm.UFM(K=K, d=d, n=1))


# --- the sphere (ufm.NormalizedUFM) ------------------------------------------------------------
@pytest.mark.parametrize(("K", "d"), [(5, 2), (6, 3)])
def test_sphere_polygon_and_cross_polytope_against_free_optimisation(key, K, d):
    # d = 2: the regular K-gon; K = 2d: the cross-polytope. The best of several starts reaches
    # the configuration's value (and none goes below it) at two temperatures (tau is a leaf).
    for tau, k in zip((0.25, 1.0), jax.random.split(key), strict=True):
        m = ufm.NormalizedUFM(K=K, d=d, n=2, tau=tau)
        opt = ufm.optimum(m)
        # independent value of the configuration: logits <w_j, w_k>/tau of the unit frame
        U = polygon(K) if d == 2 else cross_polytope(d)
        G = U @ U.T / tau
        ref = np.mean([np.log(np.sum(np.exp(G[k_] - G[k_, k_]))) for k_ in range(K)])
        assert abs(opt.value - ref) < EXACT * ref
        best, values = _best_of(m, k)
        assert min(values) >= opt.value * (1 - GAP) and abs(min(values) - opt.value) <= GAP * ref
        W = m.project(best.params).W
        dist = float(jnp.min(one_vs_rest_distances(W)))
        assert abs(dist - (1 - math.cos(2 * math.pi / K) if d == 2 else 1.0)) < SHAPE
    # the ETF value is only a lower bound here (docs/theory.md §7)
    etf = math.log1p((K - 1) * math.exp(-K / ((K - 1) * 1.0)))
    assert opt.value > etf


def test_sphere_no_closed_form_names_what_is_known():
    with pytest.raises(ufm.NoClosedForm, match="K > d\\+1"):
        ufm.optimum(ufm.NormalizedUFM(K=5, d=3, n=1, tau=0.5))
