"""ufm.dynamics.central_path against the closed forms of docs/theory.md §14.2 (Han, Papyan &
Donoho): the loss on the path, the law F(omega_j(t)) = F(omega_j(0)) + t/(K^2 n (1 + lam_W)), its
invariants, the NC1 asymptote, and the decomposition of the MSE loss along plain gradient descent.
Every asserted number comes from a closed form or an independent numpy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm import dynamics as dyn
from ufm.metrics.dynamics import snr_singular_values

EXACT = 1e-12  # identities evaluated in float64
LAW = 1e-7  # RK4 against the inverted law, at the step sizes used below


def _model(K=3, d=4, n=4, lam_W=0.0):
    return ufm.UFM(K, d, n, loss="mse", lam_W=lam_W, lam_H=0.0, lam_b=0.0)


def _features(model, spread=0.5, seed=1):
    """Class means N(0, 1) plus within-class noise N(0, spread^2)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    means = jax.random.normal(k1, (model.d, model.K))
    noise = spread * jax.random.normal(k2, (model.d, model.N))
    return jnp.repeat(means, model.n, axis=1) + noise


def _ridge_numpy(H, labels, K, lam):
    """Independent ridge with free bias: the normal equations of [W b] on [H; 1]."""
    H = np.asarray(H)
    d, N = H.shape
    A = np.vstack([H, np.ones(N)])  # (d+1, N)
    Y = np.eye(K)[np.asarray(labels)].T  # (K, N)
    G = A @ A.T / N + np.diag([lam] * d + [0.0])
    Wb = np.linalg.solve(G, A @ Y.T / N).T
    return Wb[:, :d], Wb[:, d]


def _objective_numpy(W, H, b, labels, K, lam):
    Y = np.eye(K)[np.asarray(labels)].T
    R = np.asarray(W) @ np.asarray(H) + np.asarray(b)[:, None] - Y
    return 0.5 * np.sum(R**2) / R.shape[1] + 0.5 * lam * np.sum(np.asarray(W) ** 2)


def _within_cov(H, labels, K):
    H = np.asarray(H)
    Y = np.eye(K)[np.asarray(labels)]
    R = H - (H @ Y / Y.sum(0)) @ Y.T
    return R @ R.T / H.shape[1]


@pytest.mark.parametrize("lam_W", [0.0, 0.3])
def test_loss_on_the_path_is_a_function_of_the_snr(lam_W):
    model = _model(lam_W=lam_W)
    K, labels = model.K, model.labels
    H = _features(model)
    W, b = dyn.ridge_classifier(H, labels, K, lam_W)
    W_np, b_np = _ridge_numpy(H, labels, K, lam_W)
    np.testing.assert_allclose(W, W_np, atol=EXACT)
    np.testing.assert_allclose(b, b_np, atol=EXACT)
    omega = snr_singular_values(H, labels, K, lam_W)
    value = model.objective(ufm.Params(W, H, b))
    np.testing.assert_allclose(value, _objective_numpy(W_np, H, b_np, labels, K, lam_W), rtol=EXACT)
    np.testing.assert_allclose(value, dyn.central_path_loss(omega, K), rtol=EXACT)
    # the renormalised features: identity within-class covariance, zero mean
    X = dyn.renormalize(H, labels, K)
    np.testing.assert_allclose(_within_cov(X, labels, K), np.eye(model.d), atol=EXACT)
    np.testing.assert_allclose(np.asarray(X).mean(1), 0.0, atol=EXACT)
    if lam_W == 0.0:  # without ridge, the SNR (hence the loss) is invariant under affine maps
        A = np.asarray(jax.random.normal(jax.random.key(5), (model.d, model.d)))
        moved = A @ np.asarray(H) + 3.0
        np.testing.assert_allclose(
            snr_singular_values(jnp.asarray(moved), labels, K), omega, rtol=1e-10
        )
        np.testing.assert_allclose(snr_singular_values(X, labels, K), omega, rtol=1e-10)


@pytest.mark.parametrize("lam_W", [0.0, 0.25])
def test_path_follows_the_law_with_its_invariants(lam_W):
    model = _model(lam_W=lam_W)
    K, n, labels = model.K, model.n, model.labels
    H0 = _features(model)
    X0 = dyn.renormalize(H0, labels, K)
    omega0 = snr_singular_values(X0, labels, K, lam_W)
    rate = 1.0 / (K**2 * n * (1 + lam_W))
    errors = {}
    for dt in (8.0, 4.0):
        res = dyn.central_path(model, H0, 800.0, dt, record_every=int(80 / dt))
        h = {k: np.asarray(v) for k, v in res.history.items()}
        law = dyn.central_path_omega(h["t"][:, None], omega0[None, :], K, n, lam_W)
        errors[dt] = np.max(np.abs(h["omega"] / law - 1))
        # F(omega_j(t)) - rate t is conserved
        F = dyn.central_path_law(h["omega"]) - rate * h["t"][:, None]
        np.testing.assert_allclose(F, np.broadcast_to(dyn.central_path_law(omega0), F.shape),
                                   rtol=10 * errors[dt])  # fmt: skip
        # the objective is the SNR loss, NC1 is (1/K) sum_j 1/((1 + lam_W) omega_j^2)
        np.testing.assert_allclose(h["objective"], dyn.central_path_loss(h["omega"], K), rtol=EXACT)
        nc1 = np.sum(1.0 / ((1 + lam_W) * h["omega"] ** 2), 1) / K
        np.testing.assert_allclose(h["nc1"], nc1, rtol=1e-10)
        # Sigma_W = I and the global mean 0 are frozen; the SNR singular vectors do not turn
        H = np.asarray(res.H)
        np.testing.assert_allclose(_within_cov(H, labels, K), np.eye(model.d), atol=EXACT)
        np.testing.assert_allclose(H.mean(1), 0.0, atol=EXACT)
        Y = np.eye(K)[np.asarray(labels)]
        U, _, Vt = np.linalg.svd(np.asarray(X0) @ Y / n)  # centred class means (d, K)
        Z = U.T @ (H @ Y / n) @ Vt.T  # diagonal while the singular vectors stay
        assert np.max(np.abs(Z * (1 - np.eye(*Z.shape)))) < 1e-10 * np.max(np.abs(Z))
    assert errors[4.0] < LAW
    assert 12.0 < errors[8.0] / errors[4.0] < 40.0  # RK4: O(dt^4) at least


def test_nc1_asymptote_and_equalisation():
    # Simulated NC1 equals the law's to LAW (checked above and here at tau = 1e4); the law gives
    # omega_j^2 = x_j with x_j = 2 (sqrt(tau + c_j) - 1), c_j = F(omega_j(0)) + 1 - log(x_j)/2,
    # exactly, so NC1 / ((K-1) sqrt(n) / (2 sqrt((1 + lam_W) t))) = mean_j 2 sqrt(tau)/x_j
    # = 1 + 1/sqrt(tau) + O((1 + |c|)/tau), and max/min omega - 1 = |Δ F(omega(0))| / (4 tau)
    # (1 + O(1/sqrt(tau))).
    model = _model(K=3, d=2, n=2)
    K, n, labels = model.K, model.n, model.labels
    H0 = _features(model, spread=1.0, seed=7)
    omega0 = snr_singular_values(dyn.renormalize(H0, labels, K), labels, K)
    rate = 1.0 / (K**2 * n)
    T = 1e4 / rate
    res = dyn.central_path(model, H0, T, 10.0, record_every=int(T / 10.0 / 10))
    t, omega = np.asarray(res.history["t"]), np.asarray(res.history["omega"])
    nc1 = np.asarray(res.history["nc1"])
    law = np.asarray(dyn.central_path_omega(t[:, None], omega0[None, :], K, n))
    np.testing.assert_allclose(omega, law, rtol=LAW)
    tau = rate * t[-1]
    a = np.asarray(dyn.central_path_law(omega0))
    c = a + 1 - np.log(law[-1] ** 2) / 2
    asymptote = (K - 1) * np.sqrt(n) / (2 * np.sqrt(t[-1]))
    remainder = (1 + np.max(np.abs(c))) / tau
    assert abs(nc1[-1] / asymptote - 1 - 1 / np.sqrt(tau)) < remainder
    ratio = omega[-1].max() / omega[-1].min() - 1
    assert abs(ratio * 4 * tau / abs(a[0] - a[1]) - 1) < 3 / np.sqrt(tau)
    # the law alone, far out: NC1 sqrt(t) -> (K-1) sqrt(n)/2 at rate 1/sqrt(tau)
    for tau in (1e6, 1e8):
        w = np.asarray(dyn.central_path_omega(tau / rate, omega0, K, n))
        r = np.sum(1 / w**2) / K / ((K - 1) * np.sqrt(n) / (2 * np.sqrt(tau / rate)))
        c = a + 1 - np.log(w**2) / 2
        assert abs((r - 1) * np.sqrt(tau) - 1) < 2 * (1 + np.max(np.abs(c))) / np.sqrt(tau)


def test_gradient_descent_distance_from_the_path_decomposes_the_loss():
    lam_W = 0.25
    model = _model(lam_W=lam_W)
    K, labels = model.K, model.labels
    res = dyn.central_path(model, _features(model), 40.0, 4.0, record_every=2, gd_dt=0.1)
    g = {k: np.asarray(v) for k, v in res.gd.history.items()}
    np.testing.assert_allclose(g["t"], res.history["t"], rtol=EXACT)
    assert not bool(res.gd.diverged) and np.all(g["ls_gap"] >= 0)
    # f(W, H, b) = L_LS(H) + gap, with L_LS(H) from the SNR of gradient descent's own features
    np.testing.assert_allclose(
        g["objective"], dyn.central_path_loss(g["omega"], K) + g["ls_gap"], rtol=EXACT
    )
    # the gap and the classifier distance at the end, independently (numpy normal equations)
    W, H, b = (np.asarray(x) for x in res.gd.params)
    W_ls, b_ls = _ridge_numpy(H, labels, K, lam_W)
    f = _objective_numpy(W, H, b, labels, K, lam_W)
    f_ls = _objective_numpy(W_ls, H, b_ls, labels, K, lam_W)
    np.testing.assert_allclose(g["ls_gap"][-1], f - f_ls, rtol=1e-6)
    dist = np.linalg.norm(W - W_ls) / np.linalg.norm(W_ls)
    np.testing.assert_allclose(g["classifier_gap"][-1], dist, rtol=1e-8)


def test_bad_input_names_the_parameter():
    model = _model()
    H0 = _features(model)
    for bad, name in [
        (ufm.UFM(3, 4, 4, loss="ce", lam_W=0.0, lam_H=0.0, lam_b=0.0), "model"),
        (ufm.UFM(3, 4, 4, loss="mse", bias=False, lam_W=0.0, lam_H=0.0), "model"),
        (ufm.UFM(3, 4, (4, 4, 5), loss="mse", lam_W=0.0, lam_H=0.0, lam_b=0.0), "model"),
        (ufm.UFM(3, 4, 4, loss="mse", lam_W=0.0, lam_H=0.1, lam_b=0.0), "lam_H"),
        (ufm.UFM(3, 4, 4, loss="mse", lam_W=0.0, lam_H=0.0, lam_b=0.1), "lam_b"),
        (ufm.UFM(3, 10, 4, loss="mse", lam_W=0.0, lam_H=0.0, lam_b=0.0), "d"),
    ]:
        with pytest.raises(ValueError, match=name):
            dyn.central_path(bad, H0, 1.0, 0.5)
    for kwargs, name in [
        (dict(H0=H0[:, :5]), "H0"),
        (dict(H0=jnp.repeat(H0[:, ::4], 4, axis=1)), "H0"),  # no within-class spread
        (dict(method="midpoint"), "method"),
        (dict(dt=0.3), "t"),
        (dict(gd_dt=0.3), "gd_dt"),
        (dict(gd_dt=0.0), "gd_dt"),
    ]:
        args = dict(H0=H0, t=1.0, dt=0.5) | kwargs
        with pytest.raises(ValueError, match=name):
            dyn.central_path(model, **args)
