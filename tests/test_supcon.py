"""The supervised contrastive UFM on the sphere (docs/theory.md §20): the loss against a direct
NumPy evaluation, the optimum log((n-1) + (N-n) e^{-K/((K-1) tau)}) against the loss of a NumPy
simplex ETF and as a lower bound at random configurations, and solves on the sphere that reach
it with the collapsed ETF Gram."""

import math

import jax
import numpy as np
import pytest

import ufm
from ufm.solve import CONVERGED
from ufm.theory import NoClosedForm
from ufm.theory.supcon import supcon_value

EXACT = 1e-9  # closed form vs the independent NumPy evaluation (observed ~1e-15)
SOLVE = 1e-6  # solved loss and Gram vs the optimum


def np_supcon(Z, labels, tau):
    """The full-batch SupCon loss of the unit columns of Z, anchor by anchor (NumPy loops)."""
    N = Z.shape[1]
    S = Z.T @ Z / tau
    total = 0.0
    for i in range(N):
        others = [a for a in range(N) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        lse = np.log(np.sum(np.exp(S[i, others] - S[i, others].max()))) + S[i, others].max()
        total += np.mean([lse - S[i, p] for p in positives])
    return total / N


def np_etf_features(K, d, n):
    """(d, K n): every feature of class k equal to vertex k of a unit simplex ETF (NumPy)."""
    lam, V = np.linalg.eigh(np.eye(K) - np.ones((K, K)) / K)
    M = math.sqrt(K / (K - 1)) * V[:, lam > 0.5].T  # (K-1, K)
    return np.repeat(np.vstack([M, np.zeros((d - K + 1, K))]), n, axis=1)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(tau=0.0), "tau"),
        (dict(tau=-1.0), "tau"),
        (dict(tau=float("nan")), "tau"),
        (dict(n=1), "n"),
        (dict(n=(2, 1, 3)), "n"),
        (dict(K=1), "K"),
    ],
)
def test_bad_input(kw, name):
    with pytest.raises(ValueError, match=name):
        ufm.SupConUFM(**(dict(K=3, d=2, n=2) | kw))


def test_loss_matches_numpy(key):
    model = ufm.SupConUFM(3, 4, (2, 3, 4), tau=0.7)
    H = model.init(key)
    labels = np.asarray(model.labels)
    assert float(model.objective(H)) == pytest.approx(np_supcon(np.asarray(H), labels, 0.7), 1e-13)
    # the objective is taken at the retraction: rescaling a column changes nothing
    assert float(model.objective(H * 3.0)) == pytest.approx(float(model.objective(H)), rel=1e-13)


@pytest.mark.parametrize(("K", "n"), [(3, 2), (4, 3), (5, 2)])
@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0, 5.0])
def test_optimum_value(K, n, tau):
    N = K * n
    value = supcon_value(K, n, tau)
    floor = 20 * np.finfo(float).eps / tau  # cancellation in lse - s for logits of size 1/tau
    assert value == pytest.approx(math.log((n - 1) + (N - n) * math.exp(-K / ((K - 1) * tau))))
    for d in (K - 1, K + 1):
        model = ufm.SupConUFM(K, d, n, tau=tau)
        opt = ufm.optimum(model)
        labels = np.asarray(model.labels)
        etf = np_supcon(np_etf_features(K, d, n), labels, tau)
        assert opt.value == pytest.approx(etf, rel=EXACT, abs=floor)
        assert float(model.objective(opt.params)) == pytest.approx(opt.value, rel=EXACT, abs=floor)
    # a lower bound: random unit features never do better
    rng = np.random.default_rng(K * n)
    for _ in range(5):
        Z = rng.normal(size=(K + 1, N))
        Z /= np.linalg.norm(Z, axis=0)
        assert np_supcon(Z, labels, tau) > value


def test_no_closed_form():
    with pytest.raises(NoClosedForm, match="balanced"):
        ufm.optimum(ufm.SupConUFM(3, 2, (2, 2, 3)))
    with pytest.raises(NoClosedForm, match="d >= K-1"):
        ufm.optimum(ufm.SupConUFM(4, 2, 2))


@pytest.mark.parametrize(("K", "d", "n"), [(3, 2, 3), (4, 5, 2)])
def test_solve_collapses_to_the_etf(K, d, n):
    """One compilation per structure serves every tau (a leaf)."""
    for tau in (0.3, 1.0):
        model = ufm.SupConUFM(K, d, n, tau=tau)
        opt = ufm.optimum(model)
        res = ufm.solve(model, jax.random.key(1), steps=1000, tol=1e-11, metrics=False)
        assert int(res.status) == CONVERGED
        assert float(res.objective) == pytest.approx(opt.value, rel=SOLVE)
        Z = np.asarray(model.project(res.params))
        labels = np.asarray(model.labels)
        gram = np.where(labels[:, None] == labels[None, :], 1.0, -1.0 / (K - 1))
        np.testing.assert_allclose(Z.T @ Z, gram, atol=SOLVE)
