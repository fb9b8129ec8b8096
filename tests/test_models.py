"""The UFM objective against an independent NumPy computation, its gradient against finite
differences, its pytree behaviour under jit/vmap, and its validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm

RTOL = 1e-12


def numpy_objective(m, W, H, b):
    """f = (1/N) sum_i loss(W h_i + b, y_i) + penalties, written with loops over samples."""
    K, N = m.K, H.shape[1]
    y = np.repeat(np.arange(K), m.counts)
    total = 0.0
    for i in range(N):
        z = W @ H[:, i] + (0 if b is None else b)
        if m.loss == "ce":
            total += math.log(np.exp(z - z.max()).sum()) + z.max() - z[y[i]]
        else:
            e = np.zeros(K)
            e[y[i]] = 1
            total += 0.5 * ((z - e) ** 2).sum()
    pen = m.lam_W / 2 * (W**2).sum() + m.lam_H / 2 * (H**2).sum()
    if b is not None:
        pen += m.lam_b / 2 * (b**2).sum()
    return total / N + pen


CASES = [
    dict(K=3, d=4, n=5, loss="ce"),
    dict(K=4, d=2, n=[3, 1, 2, 5], loss="ce", lam_b=0.0),
    dict(K=3, d=5, n=2, loss="ce", bias=False, lam_W=1e-2, lam_H=3e-3),
    dict(K=5, d=3, n=[2, 2, 1, 4, 3], loss="mse", lam_b=0.1),
    dict(K=3, d=4, n=3, loss="mse", bias=False),
]


@pytest.mark.parametrize("kw", CASES)
def test_objective_matches_numpy(kw, key):
    m = ufm.UFM(**kw)
    p = m.init(key, scale=2.0)
    if p.b is not None:
        p = p._replace(b=jax.random.normal(jax.random.key(7), (m.K,)))
    W, H = np.asarray(p.W), np.asarray(p.H)
    b = None if p.b is None else np.asarray(p.b)
    expected = numpy_objective(m, W, H, b)
    np.testing.assert_allclose(float(m.objective(p)), expected, rtol=RTOL)
    np.testing.assert_allclose(float(jax.jit(type(m).objective)(m, p)), expected, rtol=RTOL)


@pytest.mark.parametrize("kw", CASES)
def test_gradient_matches_finite_differences(kw, key):
    m = ufm.UFM(**kw)
    p = m.init(key, scale=1.0)
    g = jax.grad(m.objective)(p)
    eps = 1e-6
    for j in range(3):
        k = jax.random.key(100 + j)
        v = jax.tree.map(lambda x, k=k: jax.random.normal(k, x.shape), p)
        plus = jax.tree.map(lambda x, y: x + eps * y, p, v)
        minus = jax.tree.map(lambda x, y: x - eps * y, p, v)
        fd = (numpy_objective(m, *map(_np, plus)) - numpy_objective(m, *map(_np, minus))) / (
            2 * eps
        )
        directional = sum(
            float(jnp.vdot(a, b))
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v), strict=True)
        )
        np.testing.assert_allclose(directional, fd, rtol=1e-7, atol=1e-9)


def _np(x):
    return None if x is None else np.asarray(x)


def test_labels_targets_and_counts():
    m = ufm.UFM(K=3, d=2, n=[2, 1, 3])
    np.testing.assert_array_equal(m.labels, [0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(m.targets, np.eye(3)[[0, 0, 1, 2, 2, 2]])
    assert m.N == 6 and m.counts == (2, 1, 3) and not m.balanced
    assert ufm.UFM(K=3, d=2, n=[4, 4, 4]).n == 4  # equal counts are stored as balanced


def test_hyperparameters_are_leaves_and_vmap(key):
    m = ufm.UFM(K=3, d=4, n=2, lam_W=1e-3)
    assert jax.tree.leaves(m) == [1e-3, 5e-4, 5e-4, 0.0, 0.0]  # lam_W, lam_H, lam_b, alpha, gamma
    p = m.init(key)
    lams = jnp.array([1e-3, 1e-2, 1e-1])
    mb = ufm.UFM(K=3, d=4, n=2, lam_W=lams)  # a batch of models: only lam_W varies
    axes = jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, mb)
    out = jax.jit(jax.vmap(lambda mm: mm.objective(p), in_axes=(axes,)))(mb)
    expected = [float(ufm.UFM(K=3, d=4, n=2, lam_W=float(x)).objective(p)) for x in lams]
    np.testing.assert_allclose(out, expected, rtol=RTOL)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(K=1, d=3), "K"),
        (dict(K=2.5, d=3), "K"),
        (dict(K=True, d=3), "K"),
        (dict(K=3, d=0), "d"),
        (dict(K=3, d=2, n=0), "n"),
        (dict(K=3, d=2, n=[1, 2]), "n"),
        (dict(K=3, d=2, n=[1, 0, 2]), "n"),
        (dict(K=3, d=2, n=[1, 2.5, 2]), "n"),
        (dict(K=3, d=2, lam_W=-1e-3), "lam_W"),
        (dict(K=3, d=2, lam_H=float("nan")), "lam_H"),
        (dict(K=3, d=2, lam_b=float("inf")), "lam_b"),
        (dict(K=3, d=2, loss="hinge"), "loss"),
        (dict(K=3, d=2, bias=1), "bias"),
    ],
)
def test_bad_input(kw, name):
    with pytest.raises(ValueError, match=name):
        ufm.UFM(**kw)
