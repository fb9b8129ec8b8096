"""The compiled loop: any optax optimizer, recording, early stop at tolerance, divergence marked
and frozen (never raised), vmap over models, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ufm
from ufm.solve import CONVERGED, MAX_STEPS, NONFINITE, run

MODEL = ufm.UFM(K=3, d=4, n=2, lam_W=1e-2, lam_H=1e-2, lam_b=1e-2)


def test_sgd_matches_a_python_gradient_descent_loop(key):
    """20 steps of optax.sgd inside the compiled loop equal 20 hand-written GD steps."""
    lr, steps = 0.3, 20
    res = ufm.solve(MODEL, key, steps=steps, optimizer=optax.sgd(lr), record_every=5)
    p = MODEL.init(key)
    grad = jax.jit(jax.grad(MODEL.objective))
    for _ in range(steps):
        p = jax.tree.map(lambda x, g: x - lr * g, p, grad(p))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), res.params, p
    )
    np.testing.assert_allclose(res.objective, MODEL.objective(p), rtol=1e-12)
    assert int(res.steps) == steps and int(res.status) == MAX_STEPS
    np.testing.assert_array_equal(res.history["step"], [0, 5, 10, 15, 20])
    np.testing.assert_allclose(res.history["objective"][-1], res.objective, rtol=1e-14)
    assert res.history["objective"][0] == pytest.approx(float(MODEL.objective(MODEL.init(key))))
    assert {"nc1", "nc2", "nc3", "nc4", "grad_norm"} <= set(res.history)


def test_record_every_not_dividing_steps_records_the_last_step(key):
    res = ufm.solve(MODEL, key, steps=7, optimizer=optax.sgd(0.1), record_every=3)
    np.testing.assert_array_equal(res.history["step"], [0, 3, 6, 7])


def test_tolerance_stops_early_and_pads_history(key):
    res = ufm.solve(MODEL, key, steps=500, record_every=10, tol=1e-9)
    assert int(res.status) == CONVERGED and res.status_name == "converged"
    assert float(res.grad_norm) <= 1e-9
    assert int(res.steps) < 500
    steps = np.asarray(res.history["step"])
    filled = steps >= 0
    assert steps[filled][-1] == int(res.steps)  # the stopping step is recorded
    assert np.all(np.isnan(np.asarray(res.history["objective"])[~filled]))
    # the gradient really is small: compare with an independent evaluation
    g = jax.grad(MODEL.objective)(res.params)
    assert float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))) <= 1e-9


@pytest.mark.parametrize(
    "optimizer", [optax.adam(1e-2), optax.chain(optax.clip(1.0), optax.sgd(0.1))]
)
def test_any_optax_transformation_decreases_the_objective(optimizer, key):
    res = ufm.solve(MODEL, key, steps=200, optimizer=optimizer)
    assert float(res.objective) < float(MODEL.objective(MODEL.init(key)))


def test_divergence_is_frozen_and_marked(key):
    """A learning rate far beyond 2/L makes GD blow up: the run stops at the last finite iterate
    with status NONFINITE instead of raising or returning NaN parameters."""
    res = ufm.solve(MODEL, key, steps=300, optimizer=optax.sgd(1e3), record_every=300)
    assert int(res.status) == NONFINITE and res.status_name == "nonfinite"
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(res.params))
    assert np.isfinite(float(res.objective)) and int(res.steps) < 300


def test_init_argument_starts_from_given_parameters():
    opt = ufm.optimum(MODEL)
    res = ufm.solve(MODEL, jax.random.key(0), steps=3, optimizer=optax.sgd(0.1), init=opt.params)
    assert float(res.history["grad_norm"][0]) < 1e-10
    np.testing.assert_allclose(res.objective, opt.value, rtol=1e-12)


def test_run_vmaps_over_hyperparameters_and_starts():
    """vmap(run) over three lam_W values and starts equals three separate solves."""
    lams = jnp.array([1e-3, 1e-2, 5e-2])
    batch = ufm.UFM(K=3, d=4, n=2, lam_W=lams)
    axes = jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, batch)
    keys = jax.random.split(jax.random.key(3), 3)
    opt = optax.sgd(0.5)

    def one(m, k):
        return run(m, m.init(k), opt, 50, 50)

    out = jax.jit(jax.vmap(one, in_axes=(axes, 0)))(batch, keys)
    for i, lam in enumerate(lams):
        m = ufm.UFM(K=3, d=4, n=2, lam_W=float(lam))
        single = ufm.solve(m, keys[i], steps=50, optimizer=opt)
        np.testing.assert_allclose(out.objective[i], single.objective, rtol=1e-12)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(steps=10, record_every=0), "record_every"),
        (dict(steps=10, tol=-1.0), "tol"),
        (dict(steps=10, optimizer="sgd"), "optimizer"),
    ],
)
def test_bad_input(kw, name, key):
    with pytest.raises(ValueError, match=name):
        ufm.solve(MODEL, key, **kw)
