"""Label smoothing and focal loss: the loss functions against loop implementations, their UFM optima
(Zhou et al. 2022, docs/theory.md §6) against an independent 1-D minimisation and against free
L-BFGS runs, and the trends a sweep over alpha / gamma must show."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize_scalar

import ufm
from ufm.losses import cross_entropy, focal, label_smoothing
from ufm.solve import run

EXACT = 1e-12  # float64 agreement of closed forms and independent computations
GAP = 1e-9  # relative objective gap a converged L-BFGS run must reach
SHAPE = 1e-5  # Gram/metric tolerance (parameters are accurate to ~sqrt(gap))
OPT = optax.lbfgs()
K, D, N_PER = 4, 3, 2  # d = K-1: the smallest dimension with an ETF optimum


@jax.jit
def _solve(model, key):
    """L-BFGS from model.init(key); one compilation serves every value of the model's leaves
    (vmapping the line search compiles far more slowly than a loop of calls)."""
    return run(model, model.init(key), OPT, 2000, 2000, 1e-12, metrics=False)


def _nc_gaps(model, params):
    """(ETF Gram gap of W, ETF Gram gap of the class means, within-class spread), in NumPy."""
    W, H = np.asarray(params.W), np.asarray(params.H)
    Kc = model.K
    E = (np.eye(Kc) - 1 / Kc) / np.sqrt(Kc - 1)
    means = H.reshape(H.shape[0], Kc, -1).mean(axis=2)  # columns are grouped class by class
    spread = np.linalg.norm(H - np.repeat(means, H.shape[1] // Kc, axis=1)) / np.linalg.norm(H)
    G_W, G_H = W @ W.T, means.T @ means
    return (
        np.linalg.norm(G_W / np.linalg.norm(G_W) - E),
        np.linalg.norm(G_H / np.linalg.norm(G_H) - E),
        spread,
    )


def _softmax_np(z):
    e = np.exp(z - z.max())
    return e / e.sum()


# --- the loss functions -----------------------------------------------------------------------
def test_label_smoothing_and_focal_match_loops(key):
    z = np.asarray(jax.random.normal(key, (6, 5)) * 3)
    y = np.eye(5)[[0, 1, 2, 3, 4, 0]]
    alpha, gamma = 0.2, 1.7
    ls_ref = np.mean(
        [
            -sum(
                ((1 - alpha) * y[i, k] + alpha / 5) * np.log(_softmax_np(z[i])[k]) for k in range(5)
            )
            for i in range(6)
        ]
    )
    fl_ref = np.mean(
        [
            -sum(
                y[i, k] * (1 - _softmax_np(z[i])[k]) ** gamma * np.log(_softmax_np(z[i])[k])
                for k in range(5)
            )
            for i in range(6)
        ]
    )
    assert abs(float(label_smoothing(z, y, alpha)) - ls_ref) <= EXACT * abs(ls_ref)
    assert abs(float(focal(z, y, gamma)) - fl_ref) <= EXACT * abs(fl_ref)
    # alpha = 0 and gamma = 0 are plain CE
    ce = float(cross_entropy(z, y))
    assert abs(float(label_smoothing(z, y, 0.0)) - ce) <= EXACT * ce
    assert abs(float(focal(z, y, 0.0)) - ce) <= EXACT * ce


_focal_grad = jax.jit(jax.grad(focal))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradient_finite_when_saturated(gamma):
    z = jnp.array([[800.0, 0.0, 0.0], [0.0, 1.0, 2.0]])  # row 0: p_0 rounds to exactly 1
    y = jnp.eye(3)[jnp.array([0, 2])]
    g = _focal_grad(z, y, gamma)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_model_validates_alpha_and_gamma():
    with pytest.raises(ValueError, match="alpha"):
        ufm.UFM(K=3, d=2, loss="ls", alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        ufm.UFM(K=3, d=2, loss="ls", alpha=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        ufm.UFM(K=3, d=2, loss="focal", gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        ufm.UFM(K=3, d=2, loss="ce", alpha=0.1)
    with pytest.raises(ValueError, match="gamma"):
        ufm.UFM(K=3, d=2, loss="ls", gamma=2.0)
    m = ufm.UFM(K=3, d=2, loss="focal", gamma=2.0)
    assert m.lam_W == 5e-4 and m.alpha == 0.0 and "gamma" in m._leaves and "alpha" in m._leaves


# --- the optima: 1-D reductions against independent computations -----------------------------
@jax.jit
def _etf_curve(model, scales):
    """The model's objective at the NC configuration of each scale t (<w_k, h_k> = t, W and H of
    equal per-vector norms), evaluated by the model itself."""
    M = ufm.geometry.simplex_etf(model.K, model.d)  # (d, K) unit ETF

    def f(t):
        W = jnp.sqrt(t) * M.T
        H = jnp.repeat(jnp.sqrt(t) * M, model.n, axis=1)
        b = jnp.zeros(model.K) if model.bias else None
        return model.objective(ufm.Params(W, H, b))

    return jax.vmap(f)(scales)


def _etf_objective(model, t):
    return float(_etf_curve(model, jnp.array([t]))[0])


@pytest.mark.parametrize(
    ("loss", "kw", "lam"),
    [
        ("ls", {"alpha": 0.05}, 1e-2),
        ("ls", {"alpha": 0.3}, 3e-2),
        ("focal", {"gamma": 1.0}, 1e-2),
        ("focal", {"gamma": 3.0}, 2e-2),
        ("focal", {"gamma": 2.0}, 1e-1),
    ],
)
def test_optimum_equals_independent_1d_minimisation(loss, kw, lam):
    # balanced features and classifier (lam_W = lam_H, n = 1): the objective on a unit ETF scaled
    # so that <w_k, h_k> = t is a function of t alone; minimise it numerically (bounded Brent on
    # a fine grid's best bracket), independently of ufm.theory.
    model = ufm.UFM(K=K, d=D, n=1, loss=loss, lam_W=lam, lam_H=lam, bias=False, **kw)
    ts = np.linspace(0.0, 20.0, 4001)
    vals = np.asarray(_etf_curve(model, jnp.asarray(ts)))
    i = int(np.argmin(vals))
    lo, hi = ts[max(i - 1, 0)], ts[min(i + 1, len(ts) - 1)]
    best = (
        vals[i]
        if i == 0
        else minimize_scalar(
            lambda t: _etf_objective(model, t),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-12},
        ).fun
    )
    opt = ufm.optimum(model)
    assert abs(opt.value - best) <= 1e-11 * abs(best)
    assert abs(float(model.objective(opt.params)) - opt.value) <= EXACT * abs(opt.value)


def test_label_smoothing_is_ce_with_shifted_constant():
    # docs/theory.md §6: LS with alpha acts as CE with Kc -> Kc + alpha; independent check through
    # the CE closed form (Zhu et al.) of a model whose c is chosen so that Kc_ce = Kc_ls + alpha.
    n, lam, alpha = 3, 0.01, 0.12
    c = math.sqrt(n) * lam
    ls = ufm.optimum(ufm.UFM(K=5, d=4, n=n, loss="ls", alpha=alpha, lam_W=lam, lam_H=lam))
    lam_ce = (c + alpha / 5) / math.sqrt(n)
    ce = ufm.optimum(ufm.UFM(K=5, d=4, n=n, loss="ce", lam_W=lam_ce, lam_H=lam_ce))
    G_ls, G_ce = ls.params.W @ ls.params.H, ce.params.W @ ce.params.H  # logits: same margin
    np.testing.assert_allclose(np.asarray(G_ls), np.asarray(G_ce), rtol=0, atol=EXACT)


# --- free optimisation and the trends of a sweep ------------------------------------------------
def test_label_smoothing_sweep_matches_optimum_and_zero_threshold(key):
    # Kc = 0.4 (n = 2, lam = 0.1/sqrt(2)): the zero solution appears at alpha >= 1 - Kc = 0.6.
    lam = 0.1 / math.sqrt(N_PER)
    Kc = K * math.sqrt(N_PER) * lam
    alphas = [0.0, 0.1, 0.3, 0.5, 0.65, 0.9]
    norms = []
    for a, k in zip(alphas, jax.random.split(key, len(alphas)), strict=True):
        m = ufm.UFM(K=K, d=D, n=N_PER, loss="ls", lam_W=lam, lam_H=lam, lam_b=0.1, alpha=a)
        res = _solve(m, k)
        params = res.params
        opt = ufm.optimum(m)
        assert abs(float(res.objective) - opt.value) <= GAP * opt.value
        norms.append(float(jnp.linalg.norm(params.W)))
        if Kc + a >= 1:
            assert abs(opt.value - math.log(K)) <= EXACT and norms[-1] < SHAPE
        else:
            assert max(_nc_gaps(m, params)) < SHAPE
    assert all(
        x > y for x, y in zip(norms[:4], norms[1:5], strict=True)
    )  # margin shrinks with alpha


def test_focal_sweep_matches_optimum_and_margin_trend(key):
    lam = 0.05
    gammas = [0.0, 1.0, 2.0, 3.0, 5.0]
    rho, objectives = [], []
    for g, k in zip(gammas, jax.random.split(key, len(gammas)), strict=True):
        m = ufm.UFM(K=K, d=D, n=N_PER, loss="focal", lam_W=lam, lam_H=lam, bias=False, gamma=g)
        res = _solve(m, k)
        params = res.params
        opt = ufm.optimum(m)
        objectives.append(float(res.objective))
        assert abs(objectives[-1] - opt.value) <= GAP * opt.value
        assert max(_nc_gaps(m, params)) < SHAPE
        # rho = <w_k, h_k>, measured on the free solution
        rho.append(float(jnp.mean(jnp.sum(params.W[m.labels] * params.H.T, axis=1))))
    assert all(x > y for x, y in zip(rho, rho[1:], strict=False))  # focusing lowers the margin
    # gamma = 0 is CE: the free solution matches Zhu et al.'s closed form
    ce = ufm.optimum(ufm.UFM(K=K, d=D, n=N_PER, lam_W=lam, lam_H=lam, bias=False))
    assert abs(objectives[0] - ce.value) <= GAP * ce.value


def test_focal_zero_solution_slope_condition():
    # docs/theory.md §6: s = 0 is a local minimum of the reduced problem iff
    # Kc >= ((K-1)/K)^(gamma-1) (gamma log K / K + (K-1)/K); check the slope of the reduced
    # objective (evaluated through ufm's own model objective) on both sides of that value.
    Kc_, g, n = 5, 2.0, 1
    thr = ((Kc_ - 1) / Kc_) ** (g - 1) * (g * math.log(Kc_) / Kc_ + (Kc_ - 1) / Kc_)
    for factor, sign in ((0.98, -1), (1.02, 1)):
        lam = factor * thr / Kc_  # c = lam (n = 1), so Kc = factor * thr
        m = ufm.UFM(K=Kc_, d=Kc_ - 1, n=n, loss="focal", gamma=g, lam_W=lam, lam_H=lam, bias=False)
        slope = (_etf_objective(m, 1e-6) - _etf_objective(m, 0.0)) / 1e-6
        assert np.sign(slope) == sign
