"""ufm.dynamics against theory (docs/theory.md §13.9 and §14.4): every asserted number is a closed
form, an independent computation (scipy) or a stated statistical bound, never a previous run."""

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import integrate, optimize, special  # noqa: E402

import ufm  # noqa: E402
from ufm import dynamics as dyn  # noqa: E402
from ufm import plot as uplot  # noqa: E402
from ufm.dynamics import flows, le_sde  # noqa: E402

EXACT = 1e-12  # float64 closed forms: (1 + h lam)^m, invariant subspaces, estimator round trips


def _u(K):
    """Rows u_k = e_k - 1/K."""
    return np.eye(K) - 1.0 / K


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(K=1), "K"),
        (dict(n=0), "n"),
        (dict(p=0), "p"),
        (dict(surrogate="X"), "surrogate"),
        (dict(surrogate="L", p=4), "p"),
        (dict(sigma=-1.0), "sigma"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(beta="a"), "beta"),
        (dict(r=-1.0), "r"),
        (dict(t0=0.0), "t0"),
        (dict(surrogate="CE", center=True), "center"),
        (dict(center=1), "center"),
    ],
)
def test_lesde_rejects_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        dyn.LESDE(**kwargs)


def test_bad_arguments_name_the_parameter(key):
    cfg = dyn.LESDE(K=3, n=2)
    for kwargs, name in [
        (dict(steps=0, h=0.1), "steps"),
        (dict(steps=10, h=0.1, record_every=3), "steps"),
        (dict(steps=10, h=0.1, record_every=0), "record_every"),
        (dict(steps=10, h=0.0), "h"),
        (dict(steps=10, h=0.1, x0=jnp.zeros((3, 2, 2))), "x0"),
    ]:
        with pytest.raises(ValueError, match=name):
            dyn.simulate(cfg, key, **kwargs)
    with pytest.raises(ValueError, match="cfg"):
        dyn.simulate("I", key, 10, 0.1)
    with pytest.raises(ValueError, match="trials"):
        dyn.le_sweep(cfg, key, [0.1], [0.2], trials=0, steps=10, h=0.1)
    mse = ufm.UFM(3, 4, 2, loss="mse", lam_W=0.0, lam_H=0.0, lam_b=0.0)
    ce = ufm.UFM(3, 4, 2, loss="ce", lam_W=0.0, lam_H=0.0, bias=False)
    p0 = mse.init(key)
    for kwargs, name in [
        (dict(t=1.0, dt=0.1, method="midpoint"), "method"),
        (dict(t=1.0, dt=0.0), "dt"),
        (dict(t=-1.0, dt=0.1), "t"),
        (dict(t=1.0, dt=0.3), "t"),
        (dict(t=1.0, dt=0.1, record_every=3), "steps"),
    ]:
        with pytest.raises(ValueError, match=name):
            dyn.gradient_flow(mse, p0, **kwargs)
    with pytest.raises(ValueError, match="model"):
        dyn.gradient_flow(object(), p0, 1.0, 0.1)
    with pytest.raises(ValueError, match="model"):
        dyn.mixon_init(ce, key)
    with pytest.raises(ValueError, match="model"):
        dyn.ulpm_etf_init(mse, 1.0)
    with pytest.raises(ValueError, match="q0"):
        dyn.ulpm_etf_init(ce, 0.0)


# ------------------------------------------------------------------------------------------------
# §13.9 (1, 5): I-model, sigma = 0: discrete closed forms and the estimator round trip
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, beta", [(0.5, 0.2), (0.1, 0.3), (-0.2, 0.4)])
def test_i_model_sigma0_matches_euler_closed_form(key, alpha, beta):
    K, n, p, h, steps, every = 3, 4, 5, 0.1, 60, 20
    cfg = dyn.LESDE(K=K, n=n, p=p, surrogate="I", alpha=alpha, beta=beta, sigma=0.0, center=False)
    x0 = jax.random.normal(jax.random.key(1), (K, n, p))
    res = dyn.simulate(cfg, key, steps, h, every, x0)
    m = np.arange(1, steps // every + 1) * every
    rates = dyn.mode_rates(cfg)
    fc = dyn.euler_factor(rates["centered"], h, m)[:, None, None]
    fg = dyn.euler_factor(rates["global"], h, m)[:, None]
    means0 = np.asarray(x0).mean(1)
    gmean0, D0 = means0.mean(0), means0 - means0.mean(0)
    means = np.asarray(res.history["means"])
    assert _rel(means.mean(1), fg * gmean0[None, :]) < EXACT
    assert _rel(means - means.mean(1, keepdims=True), fc * D0[None]) < EXACT
    dev0 = x0 - x0.mean(1, keepdims=True)  # within-class deviations are frozen when sigma = 0
    assert np.max(np.abs(res.x - res.x.mean(1, keepdims=True) - dev0)) < EXACT
    np.testing.assert_allclose(res.history["t"], m * h, rtol=EXACT)

    # Estimators (§13.4) invert the closed form; on Euler trajectories: the discrete exponents.
    A_hat, B_hat = dyn.estimate_impacts(res.history["means"], means0)
    lg, lc = np.log1p(h * rates["global"]), np.log1p(h * rates["centered"])
    np.testing.assert_allclose(A_hat, m * (lg + (K - 1) * lc), rtol=EXACT, atol=EXACT)
    np.testing.assert_allclose(B_hat, m * (lg - lc), rtol=EXACT, atol=EXACT)


def test_simulate_under_vmap_matches_single_runs(key):
    cfg = dyn.LESDE(K=3, n=4, p=5, alpha=0.5, beta=0.2, sigma=0.3, center=False)
    x0 = jax.random.normal(jax.random.key(1), (3, 4, 5))
    keys = jax.random.split(key, 2)
    batched = jax.vmap(lambda k: dyn.simulate(cfg, k, 60, 0.1, 20, x0))(keys)
    for i in range(2):
        single = dyn.simulate(cfg, keys[i], 60, 0.1, 20, x0)
        np.testing.assert_allclose(batched.x[i], single.x, rtol=EXACT, atol=EXACT)
    assert not np.allclose(batched.x[0], batched.x[1])  # the keys give different noise


def test_estimators_invert_the_closed_form_with_power_law_impacts():
    K, p = 3, 2
    rng = np.random.default_rng(0)
    means0 = rng.normal(size=(K, p)) + 1.0
    t = np.linspace(0.5, 20.0, 40)
    for r in (0.0, 0.5, 1.0, 1.7):
        cfg = dyn.LESDE(K=K, p=p, alpha=0.7, beta=-0.3, r=r, t0=2.0)
        A, B = (np.asarray(v) for v in dyn.impact_integrals(cfg, jnp.asarray(t)))
        for ti, Ai in zip(t[::13], A[::13], strict=True):  # independent quadrature
            f = lambda s, r=r: 0.7 * (s + 2.0) ** (-r)  # noqa: E731
            quad = integrate.quad(f, 0.0, ti, epsabs=1e-13)[0]
            assert abs(Ai - quad) < 1e-10
        np.testing.assert_allclose(B, -3.0 / 7.0 * A, rtol=EXACT)
        c0, ck = means0.mean(0), means0 - means0.mean(0)
        means = (
            c0 * np.exp((A + (K - 1) * B) / K)[:, None, None]
            + ck[None] * np.exp((A - B) / K)[:, None, None]
        )
        A_hat, B_hat = dyn.estimate_impacts(jnp.asarray(means), jnp.asarray(means0))
        np.testing.assert_allclose(A_hat, A, rtol=EXACT, atol=EXACT)
        np.testing.assert_allclose(B_hat, B, rtol=EXACT, atol=EXACT)


# ------------------------------------------------------------------------------------------------
# §13.9 (2): L-model modes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, beta", [(0.6, 0.3), (0.5, -0.2)])
def test_l_model_modes_match_euler_closed_form(key, alpha, beta):
    K, n, h, steps, every = 4, 3, 0.1, 60, 20
    cfg = dyn.LESDE(K=K, n=n, surrogate="L", alpha=alpha, beta=beta, sigma=0.0)
    x0 = jax.random.normal(jax.random.key(2), (K, n, K))
    res = dyn.simulate(cfg, key, steps, h, every, x0)
    m = np.arange(1, steps // every + 1) * every
    rates = dyn.mode_rates(cfg)

    def coeffs(means):  # s_k = u_k . mean_k / ||u_k||^2
        return (_u(K) * means).sum(-1) * K / (K - 1)

    s0, s = coeffs(np.asarray(x0).mean(1)), coeffs(np.asarray(res.history["means"]))
    sym = dyn.euler_factor(rates["centered"], h, m) * s0.mean()
    anti = dyn.euler_factor(rates["antisymmetric"], h, m)[:, None] * (s0 - s0.mean())[None]
    assert _rel(s.mean(1), sym) < EXACT
    assert _rel(s - s.mean(1, keepdims=True), anti) < EXACT
    np.testing.assert_allclose(res.history["etf_mode"], s.mean(1), rtol=EXACT)


# ------------------------------------------------------------------------------------------------
# §13.9 (3): CE surrogate on the ETF manifold
# ------------------------------------------------------------------------------------------------


def test_ce_model_on_etf_manifold_follows_margin_law(key):
    K, n, alpha, beta, s0, T = 3, 2, 1.0, 0.2, 0.5, 20.0
    cfg = dyn.LESDE(K=K, n=n, surrogate="CE", alpha=alpha, beta=beta, sigma=0.0)
    x0 = dyn.le_etf_init(cfg, s0)

    def exact(t):  # independent: root of e^s + (K-1) s = (alpha - beta) t + e^s0 + (K-1) s0
        y = (alpha - beta) * t + np.exp(s0) + (K - 1) * s0
        return optimize.brentq(lambda s: np.exp(s) + (K - 1) * s - y, -50.0, 50.0, xtol=1e-14)

    errors = []
    for h in (0.1, 0.05):
        steps = int(round(T / h))
        res = dyn.simulate(cfg, key, steps, h, steps // 4, x0)
        t, s = np.asarray(res.history["t"]), np.asarray(res.history["margin"])
        s_exact = np.array([exact(ti) for ti in t])
        np.testing.assert_allclose(dyn.le_ce_margin(cfg, s0, jnp.asarray(t)), s_exact, rtol=1e-12)
        # the manifold is invariant: X_k^i = s u_k with s the margin (= the ETF mode)
        np.testing.assert_allclose(res.history["etf_mode"], s, rtol=EXACT)
        assert np.max(np.abs(res.x - s[-1] * _u(K)[:, None, :])) < EXACT
        errors.append(np.max(np.abs(s - s_exact)))
    # Euler on ds/dt = f(s), f decreasing: the global error is at most the summed local errors,
    # (h/2) int |f'| f dt = (h/2) (f(s0) - f(s_T)) <= (h/2) f(s0); we allow a factor 2.
    f0 = (alpha - beta) / (np.exp(s0) + K - 1)
    assert errors[0] <= 0.1 * f0 and errors[1] <= 0.05 * f0
    assert 1.8 < errors[0] / errors[1] < 2.2  # first order: halving h halves the error


# ------------------------------------------------------------------------------------------------
# §13.9 (7): within-class variance sigma^2 t (1 - 1/n) for every surrogate
# ------------------------------------------------------------------------------------------------


def _check_within(within, t, sigma, K, n, p, trials):
    # Per run, class and coordinate, sum_i (x_i - x̄)^2 ~ sigma^2 t chi^2_{n-1} exactly (the drift
    # is the same for every sample of a class), so the average of `within` over runs has mean
    # sigma^2 t (1 - 1/n) and relative s.d. sqrt(2 / ((n-1) K p trials)); we allow 5 s.d.
    ratio = np.asarray(within).mean(0) / (sigma**2 * np.asarray(t) * (1 - 1 / n))
    sd = np.sqrt(2.0 / ((n - 1) * K * p * trials))
    assert np.all(np.abs(ratio - 1.0) < 5 * sd), (ratio, sd)


@pytest.mark.parametrize("surrogate", ["L", "CE"])  # "I": test_within_class_variance_i_model
def test_within_class_variance_is_brownian(key, surrogate):
    K, n, sigma, h, steps, every, trials = 3, 50, 0.7, 0.1, 100, 25, 64
    cfg = dyn.LESDE(K=K, n=n, surrogate=surrogate, alpha=0.5, beta=0.2, sigma=sigma)
    keys = jax.random.split(key, trials)
    hist = jax.vmap(lambda k: dyn.simulate(cfg, k, steps, h, every).history)(keys)
    _check_within(hist["within"], hist["t"][0], sigma, K, n, K, trials)  # rel. s.d. 0.0084


# ------------------------------------------------------------------------------------------------
# §13.5, §13.9 (4, 6): the phase transition at alpha = beta, NC1 decay
# ------------------------------------------------------------------------------------------------

PT = dict(K=3, n=50, sigma=1.0, beta=0.2, h=0.1, steps=1000, every=50, trials=16)
PT_GAPS = np.array([-0.2, 0.0, 0.3])  # alpha - beta


@pytest.fixture(scope="module")
def sweep():
    cfg = dyn.LESDE(K=PT["K"], n=PT["n"], sigma=PT["sigma"], beta=PT["beta"])
    return dyn.le_sweep(
        cfg,
        jax.random.key(0),
        PT["beta"] + PT_GAPS,
        PT["beta"],
        trials=PT["trials"],
        steps=PT["steps"],
        h=PT["h"],
        record_every=PT["every"],
    )


def test_phase_transition_at_alpha_equals_beta(sweep):
    K, n, sigma, h, m = PT["K"], PT["n"], PT["sigma"], PT["h"], PT["steps"]
    hist = sweep.history
    assert hist["ncc_acc"].shape == (3, PT["trials"], PT["steps"] // PT["every"])
    assert not np.any(sweep.diverged)
    p_sep = np.mean(hist["ncc_acc"][..., -1] == 1, 1)
    np.testing.assert_array_equal(p_sep, [0.0, 0.0, 1.0])  # separable iff alpha > beta
    final = jax.vmap(jax.vmap(dyn.separable))(sweep.x)
    np.testing.assert_array_equal(final, np.repeat(PT_GAPS[:, None] > 0, PT["trials"], 1))
    # Independent prediction of between/within at T (Euler, exact in expectation): centred class
    # means D^{m+1} = (1 + h lam) D^m + sigma sqrt(h) (noise mean over n, minus the class average),
    # so E[between] = sigma^2 (1 - 1/K)/n * h sum_{j<m} (1 + h lam)^{2j}, lam = (alpha - beta)/K;
    # E[within] = sigma^2 t (1 - 1/n). 16 trials x (K-1) p = 96 degrees of freedom give a
    # relative s.d. of 0.14 for the average between (skewed right, chi^2); we allow a factor 2
    # either way (-3.5 and +7 s.d.).
    lam = PT_GAPS / K
    g2 = (1 + h * lam) ** 2
    sums = np.where(lam == 0, m, (g2**m - 1) / np.where(lam == 0, 1.0, g2 - 1))
    between = sigma**2 * (1 - 1 / K) / n * h * sums
    within = sigma**2 * (m * h) * (1 - 1 / n)
    ratio = np.mean(hist["between"][..., -1], 1) / np.mean(hist["within"][..., -1], 1)
    assert np.all(np.abs(np.log(ratio / (between / within))) < np.log(2.0))
    # separation ratio: ~600 above the transition, 0.12 at it and 0.03 below (§13.5)
    sep = np.sqrt(hist["between"][..., -1] / hist["within"][..., -1])
    assert np.all(sep[2] > 100) and np.all(sep[:2] < 0.5)


def test_within_class_variance_i_model(sweep):
    # grid points share their keys (and the I-model deviations never see the drift): 16 trials
    hist = sweep.history
    _check_within(hist["within"][0], hist["t"][0, 0], PT["sigma"], PT["K"], PT["n"], PT["K"], 16)
    np.testing.assert_allclose(hist["within"][0], hist["within"][2], rtol=1e-10)


def test_sweep_compiles_once_for_all_impact_values(sweep):
    cfg = dyn.LESDE(K=PT["K"], n=PT["n"], sigma=0.5, beta=PT["beta"])
    before = le_sde._le_sweep._cache_size()
    res = dyn.le_sweep(  # new impacts, sigma, h and record_every; the same number of records
        cfg,
        jax.random.key(1),
        jnp.array([0.1, 0.25, 0.7]),
        jnp.array([0.3, 0.1, -0.1]),
        trials=PT["trials"],
        steps=2 * PT["steps"],
        h=PT["h"] / 2,
        record_every=2 * PT["every"],
    )
    assert le_sde._le_sweep._cache_size() == before
    np.testing.assert_allclose(res.history["t"][0, 0], sweep.history["t"][0, 0], rtol=EXACT)


def test_nc1_decays_at_twice_the_centred_rate(sweep):
    # NC1 = tr(Sigma_W Sigma_B^+)/K ~ t (1 + h lam)^{-2m} (§13.6): slope of log(NC1/t) in t is
    # -2 log(1 + h lam)/h = -0.1990 for lam = 0.1, h = 0.1. Sigma_W fluctuates by a few percent
    # about sigma^2 t I; over t in [40, 100] that moves the slope by < 1e-3; we allow 5e-3.
    h, lam = PT["h"], PT_GAPS[2] / PT["K"]
    t = np.asarray(sweep.history["t"][2, 0])
    y = np.mean(np.log(np.asarray(sweep.history["nc1"][2]) / t), 0)
    keep = t >= 40
    slope = np.polyfit(t[keep], y[keep], 1)[0]
    assert abs(slope - (-2 * np.log1p(h * lam) / h)) < 5e-3


def test_le_separation_plot(sweep):
    results = {
        f"alpha-beta={g:+.1f}": jax.tree.map(lambda a, i=i: a[i], sweep.history)
        for i, g in enumerate(PT_GAPS)
    }
    fig = uplot.le_separation(results)
    assert isinstance(fig, Figure)
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].lines) == 3
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# §14.1: Mixon et al., MSE with free bias, invariant subspace, logistic eigenvalues
# ------------------------------------------------------------------------------------------------


def _eig_stats(model, params, params0):
    return {"eig": jnp.linalg.eigvalsh(params.W @ params.W.T)}


def test_mixon_logistic_eigenvalues_at_the_integrator_order_and_under_vmap(key):
    K, d, n, T = 3, 4, 5, 20.0
    model = ufm.UFM(K, d, n, loss="mse", lam_W=0.0, lam_H=0.0, lam_b=0.0)
    keys = jax.random.split(key, 2)
    p0 = dyn.mixon_init(model, keys[0], scale=0.3)
    eig0 = jnp.linalg.eigvalsh(p0.W @ p0.W.T)
    errors, runs = {}, {}
    for method, dts in (("euler", (0.1, 0.05)), ("rk4", (0.5, 0.25))):
        for dt in dts:
            res = dyn.gradient_flow(
                model, p0, T, dt, record_every=int(round(1 / dt)), method=method, stats=_eig_stats
            )
            if dt == dts[0]:
                compiled = flows._flow._cache_size()
            assert flows._flow._cache_size() == compiled  # halving dt does not recompile
            t = res.history["t"]
            lam = dyn.mixon_eigenvalues(eig0[None, :], t[:, None], n, K)
            errors[method, dt] = float(jnp.max(jnp.abs(res.history["eig"] - lam)))
            runs[method, dt] = res
            # S is invariant: h_{k,i} = w_k / sqrt(n), b = 1/K, 1^T W = 0
            W, H, b = res.params
            np.testing.assert_allclose(H, jnp.repeat(W.T, n, axis=1) / np.sqrt(n), atol=EXACT)
            np.testing.assert_allclose(b, 1.0 / K, atol=EXACT)
            assert float(jnp.max(jnp.abs(W.sum(0)))) < EXACT
            if method == "rk4":  # on S the loss is (1/(2K)) sum_j (lam_j/sqrt(n) - 1)^2
                loss = jnp.sum((lam[:, 1:] / np.sqrt(n) - 1) ** 2, 1) / (2 * K)
                np.testing.assert_allclose(res.history["objective"], loss, atol=1e-6)
    assert 1.8 < errors["euler", 0.1] / errors["euler", 0.05] < 2.2  # O(dt)
    assert 14.0 < errors["rk4", 0.5] / errors["rk4", 0.25] < 18.0  # O(dt^4)
    # under vmap over two starts, the first reproduces the single run
    p0s = jax.vmap(lambda k: dyn.mixon_init(model, k, 0.3))(keys)
    batched = jax.vmap(lambda p: dyn.gradient_flow(model, p, T, 0.1, 10, stats=_eig_stats))(p0s)
    single = runs["euler", 0.1]
    np.testing.assert_allclose(batched.history["eig"][0], single.history["eig"], atol=EXACT)
    np.testing.assert_allclose(batched.params.W[0], single.params.W, atol=EXACT)
    assert not np.allclose(batched.params.W[1], single.params.W)
    # the 1-direction (eigenvalue 0) stays at 0, in the closed form and in the flow
    final = dyn.mixon_eigenvalues(eig0, T, n, K)
    assert abs(float(final[0])) < EXACT and np.all(np.abs(res.history["eig"][:, 0]) < EXACT)


# ------------------------------------------------------------------------------------------------
# §14.3: unregularised CE without bias (Ji et al.)
# ------------------------------------------------------------------------------------------------


def test_ulpm_margin_law_on_etf_manifold():
    K, d, n, q0, T = 3, 3, 4, 0.5, 200.0
    model = ufm.UFM(K, d, n, loss="ce", lam_W=0.0, lam_H=0.0, bias=False)
    p0 = dyn.ulpm_etf_init(model, q0)
    gamma = dyn.ulpm_max_normalized_margin(n, K)
    residual = {}
    for dt in (0.5, 0.25):
        res = dyn.gradient_flow(model, p0, T, dt, record_every=int(round(20 / dt)), method="rk4")
        h = {k: np.asarray(v) for k, v in res.history.items()}
        law = dyn.ulpm_margin_law(h["margin"], n, K) - 2 * h["t"] / np.sqrt(n)
        residual[dt] = np.max(np.abs(law - dyn.ulpm_margin_law(q0, n, K)))
        # the manifold is invariant: collapse and a simplex ETF, and the normalised margin is gamma*
        assert np.all(h["nc1"] < EXACT) and np.all(h["nc2_W"] < 1e-10) and np.all(h["nc2"] < 1e-10)
        np.testing.assert_allclose(h["normalized_margin"], gamma, rtol=1e-10)
        np.testing.assert_allclose(h["loss"], np.log1p((K - 1) * np.exp(-h["margin"])), rtol=1e-10)
    assert 12.0 < residual[0.5] / residual[0.25] < 20.0  # the law holds up to the O(dt^4) error
    # independent inversion of the law (scipy) against the library's and the flow's margin
    y = special.expi(q0) + (K - 1) * np.log(q0) + 2 * h["t"] / np.sqrt(n)
    q = np.array([optimize.brentq(lambda x, yi=yi: special.expi(x) + (K - 1) * np.log(x) - yi,
                                  q0, 100.0, xtol=1e-14) for yi in y])  # fmt: skip
    np.testing.assert_allclose(dyn.ulpm_margin(jnp.asarray(h["t"]), q0, n, K), q, rtol=1e-12)
    np.testing.assert_allclose(h["margin"], q, rtol=1e-6)


CE_RANDOM = dict(K=3, d=6, n=4, T=5000.0, dt=1.0, every=250)


@pytest.fixture(scope="module")
def ce_random():
    c = CE_RANDOM
    model = ufm.UFM(c["K"], c["d"], c["n"], loss="ce", lam_W=0.0, lam_H=0.0, bias=False)
    p0 = model.init(jax.random.key(3))
    return dyn.gradient_flow(model, p0, c["T"], c["dt"], record_every=c["every"])


def test_ulpm_random_start_converges_in_direction_to_the_etf(ce_random):
    K, n = CE_RANDOM["K"], CE_RANDOM["n"]
    h = {k: np.asarray(v) for k, v in ce_random.history.items()}
    sep = np.flatnonzero(h["margin"] > 0)
    assert sep.size and sep[0] < 4  # separates early, then stays separated
    assert np.all(h["margin"][sep[0] :] > 0)
    after = slice(sep[0], None)
    # gradient descent with a small step: the loss decreases; after separation the normalised
    # margin increases towards, and never exceeds, gamma* = 1/((K-1) sqrt(n)) (Lyu-Li, Ji et al.)
    assert np.all(np.diff(h["loss"]) < 0)
    gn = h["normalized_margin"][after]
    assert np.all(np.diff(gn) > 0) and np.all(gn <= dyn.ulpm_max_normalized_margin(n, K))
    for k in ("nc1", "nc2", "nc2_W", "nc3"):  # direction convergence to collapse and an ETF
        assert np.all(np.diff(h[k][after]) < 0), k
    # margin ~ log t + log log t + O(1): slope in log t over [t1, t2] is
    # 1 + log(log t2 / log t1) / log(t2 / t1) (1.13 for [1000, 5000]); the O(1/log t) direction
    # error of a random start moves it by less than 0.1.
    i1, i2 = np.searchsorted(h["t"], 1000.0), len(h["t"]) - 1
    t1, t2 = h["t"][i1], h["t"][i2]
    slope = (h["margin"][i2] - h["margin"][i1]) / np.log(t2 / t1)
    assert abs(slope - (1 + np.log(np.log(t2) / np.log(t1)) / np.log(t2 / t1))) < 0.1


def test_ulpm_conserves_wtw_minus_hht(key):
    model = ufm.UFM(3, 6, 4, loss="ce", lam_W=0.0, lam_H=0.0, bias=False)
    p0 = model.init(key)
    C0 = np.linalg.norm(p0.W.T @ p0.W - p0.H @ p0.H.T)
    # Exact for the flow; Euler and RK4 break it at their order: O(dt) and O(dt^4) at fixed t.
    # 20 records, like the ce_random fixture: one compiled loop per method.
    drift = {
        (method, dt): float(
            dyn.gradient_flow(model, p0, 50.0, dt, int(2.5 / dt), method).history["balance_drift"][
                -1
            ]
        )
        for method, dt in [("euler", 0.5), ("euler", 0.25), ("rk4", 0.5), ("rk4", 0.25)]
    }
    assert 1.8 < drift["euler", 0.5] / drift["euler", 0.25] < 2.2
    assert 12.0 < drift["rk4", 0.5] / drift["rk4", 0.25] < 20.0
    assert drift["rk4", 0.25] < 1e-6 * C0


def test_flow_curves_plot(ce_random):
    K, n = CE_RANDOM["K"], CE_RANDOM["n"]
    t, q = ce_random.history["t"], ce_random.history["margin"]
    fig = uplot.flow_curves(  # theory from the first record on, as if on the ETF manifold
        ce_random.history,
        margin_theory=(t[::2], dyn.ulpm_margin(t[::2] - t[0], q[0], n, K)),
        gamma_star=dyn.ulpm_max_normalized_margin(n, K),
    )
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and len(ax.lines) == 4
    plt.close(fig)
