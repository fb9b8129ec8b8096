"""Label noise: flipping labels from a key, the memorisation report against hand-placed features,
and the exact optimum of the symmetric layout (ufm.label_noise) against free L-BFGS runs, over a
sweep of the memorisation cost and of the noise rate."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ufm
from ufm.label_noise import NoisyUFM, flip_labels, memorization_report, symmetric_noise
from ufm.solve import run
from ufm.theory.regularized import ce_value

GAP = 1e-10  # relative objective agreement
SHAPE = 1e-5  # report quantities of a converged run (parameters ~ sqrt(gap))
OPT = optax.lbfgs()
K = 4
LAM = 1e-2


@jax.jit
def _solve(model, key):
    return run(model, model.init(key), OPT, 5000, 5000, 1e-11, metrics=False)


_report = jax.jit(memorization_report)


def test_flip_labels_is_exact_and_deterministic(key):
    labels = np.repeat(np.arange(5), 20)
    noisy = np.asarray(flip_labels(key, labels, 5, 0.3))
    assert np.sum(noisy != labels) == 30  # exactly round(rate N), never to the same class
    assert np.all((noisy >= 0) & (noisy < 5))
    assert flip_labels(key, labels, 5, 0.3) == tuple(noisy)  # deterministic from the key
    assert flip_labels(jax.random.key(1), labels, 5, 0.3) != tuple(noisy)
    assert flip_labels(key, labels, 5, 0.0) == tuple(labels)
    with pytest.raises(ValueError, match="rate"):
        flip_labels(key, labels, 5, 1.5)
    m = NoisyUFM.with_rate(K=5, d=4, n=20, rate=0.3, key=key)
    assert m.noisy == tuple(noisy) and int(m.is_noisy.sum()) == 30
    with pytest.raises(ValueError, match="noisy"):
        NoisyUFM(K=3, d=2, n=2, noisy=(0, 1))
    with pytest.raises(ValueError, match="lam_M"):
        NoisyUFM(K=3, d=2, n=1, noisy=(0, 1, 2), lam_M=0.0)


def test_report_on_hand_placed_features():
    # true classes at the vertices of a square; each noisy sample placed a known fraction t of
    # the way from its true class's clean mean towards its label's clean mean
    n, noisy = symmetric_noise(K, 2, 1)
    m = NoisyUFM(K=K, d=2, n=n, noisy=noisy, bias=False)
    V = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    true = np.repeat(np.arange(K), n)
    ts = np.linspace(0.1, 0.9, int(m.is_noisy.sum()))
    H = V[true].copy()
    for t, i in zip(ts, np.flatnonzero(m.is_noisy), strict=True):
        H[i] = (1 - t) * V[true[i]] + t * V[noisy[i]]
    rep = _report(m, ufm.Params(jnp.asarray(V), jnp.asarray(H.T), None))
    np.testing.assert_allclose(rep["memorization"], ts, atol=1e-12)
    np.testing.assert_allclose(rep["dist_true"], ts, atol=1e-12)
    np.testing.assert_allclose(rep["dist_label"], 1 - ts, atol=1e-12)
    np.testing.assert_array_equal(rep["fitted"], ts > 0.5)  # logits <v_j, h>: nearer vertex wins
    assert float(rep["clean_spread"]) == 0.0 and float(rep["dilation"]) > 0


def test_plain_ufm_memorises_perfectly(key):
    # lam_M = lam_H is the plain UFM: balanced in the noisy labels (n per label), so its optimum is
    # Zhu et al.'s ETF with respect to the noisy labels: every noisy sample sits exactly at its
    # label's class mean, and the value is the balanced CE closed form.
    n, noisy = symmetric_noise(K, 7, 1)
    m = NoisyUFM(K=K, d=K, n=n, noisy=noisy, lam_W=LAM, lam_H=LAM, lam_M=LAM, bias=False)
    res = _solve(m, key)
    expected = ce_value(K, math.sqrt(n) * LAM)
    assert abs(float(res.objective) - expected) <= GAP * expected
    assert abs(ufm.optimum(m).value - expected) <= 1e-13 * expected
    rep = _report(m, res.params)
    np.testing.assert_allclose(rep["memorization"], 1.0, atol=SHAPE)
    np.testing.assert_allclose(rep["dist_label"], 0.0, atol=SHAPE)
    assert float(rep["fraction_fitted"]) == 1.0


def test_memorisation_cost_sweep_against_the_exact_optimum(key):
    # one compilation (lam_M is a leaf): value, memorisation and dilation of the free runs equal
    # the reduction's at every lam_M, and both fall as memorising gets dearer
    n, noisy = symmetric_noise(K, 7, 1)
    lam_Ms = [2e-2, 5e-2, 0.2, 1.0]
    mem, dil, fitted = [], [], []
    for lam_M, k in zip(lam_Ms, jax.random.split(key, len(lam_Ms)), strict=True):
        m = NoisyUFM(K=K, d=K, n=n, noisy=noisy, lam_W=LAM, lam_H=LAM, lam_M=lam_M, bias=False)
        opt = ufm.optimum(m)
        assert abs(float(m.objective(opt.params)) - opt.value) < 1e-12 * opt.value
        res = _solve(m, k)
        assert abs(float(res.objective) - opt.value) <= GAP * opt.value
        r_free, r_opt = _report(m, res.params), _report(m, opt.params)
        for name in ("memorization", "dist_true", "dist_label"):
            np.testing.assert_allclose(r_free[name], r_opt[name], atol=SHAPE)
        assert abs(float(r_free["dilation"]) - float(r_opt["dilation"])) < SHAPE
        assert float(r_free["clean_spread"]) < SHAPE  # clean samples still collapse
        mem.append(float(r_opt["mean_memorization"]))
        dil.append(float(r_opt["dilation"]))
        fitted.append(float(r_free["fraction_fitted"]))
    assert all(a > b for a, b in zip(mem, mem[1:], strict=False))
    assert all(a > b for a, b in zip(dil, dil[1:], strict=False))
    assert fitted[0] == 1.0 and fitted[-1] == 0.0  # expensive memorisation: noisy labels unfit


def test_noise_rate_sweep_dilates_the_true_classes(key):
    # fixed class size n = 10 and lam_M = 5 lam_H; noise rate 0.3 then 0.6: the free runs match
    # the exact optimum, and the true classes dilate more at the higher rate, as predicted
    dil_free, dil_opt = [], []
    for (n_c, r), k in zip(((7, 1), (4, 2)), jax.random.split(key), strict=True):
        n, noisy = symmetric_noise(K, n_c, r)
        m = NoisyUFM(K=K, d=K, n=n, noisy=noisy, lam_W=LAM, lam_H=LAM, lam_M=5 * LAM, bias=False)
        opt = ufm.optimum(m)
        res = _solve(m, k)
        assert abs(float(res.objective) - opt.value) <= GAP * opt.value
        dil_free.append(float(_report(m, res.params)["dilation"]))
        dil_opt.append(float(_report(m, opt.params)["dilation"]))
    np.testing.assert_allclose(dil_free, dil_opt, atol=SHAPE)
    assert dil_opt[1] > dil_opt[0]
