"""The compiled loop: any optax optimizer, recording, early stop at tolerance, divergence marked
and frozen (or raised with throw=True), the public loop pieces of `ufm.loop` under jit and vmap,
vmap over models, no compilation for new values, budgets or equal optimizers, validation (a
start of the wrong shape is named)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compiles import count_compiles

import ufm
from ufm.loop import RESULTS
from ufm.solve import CONVERGED, MAX_STEPS, NONFINITE, SolveError, run

MODEL = ufm.UFM(K=3, d=4, n=2, lam_W=1e-2, lam_H=1e-2, lam_b=1e-2)
SGD = optax.sgd(0.1)  # one object: the solves below that use it share compilations
BLOWUP = optax.sgd(1e3)  # far beyond 2/L: gradient descent diverges


def test_sgd_matches_a_python_gradient_descent_loop(key):
    """20 steps of optax.sgd inside the compiled loop equal 20 hand-written GD steps."""
    lr, steps = 0.3, 20
    res = ufm.solve(MODEL, key, steps=steps, optimizer=optax.sgd(lr), record_every=5)
    p = _gd(MODEL, key, lr, steps)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), res.params, p
    )
    np.testing.assert_allclose(res.objective, MODEL.objective(p), rtol=1e-12)
    assert int(res.steps) == steps and int(res.status) == MAX_STEPS
    np.testing.assert_array_equal(res.history["step"], [0, 5, 10, 15, 20])
    np.testing.assert_allclose(res.history["objective"][-1], res.objective, rtol=1e-14)
    assert res.history["objective"][0] == pytest.approx(float(MODEL.objective(MODEL.init(key))))
    assert {"nc1", "nc2", "nc3", "nc4", "grad_norm"} <= set(res.history)


def _gd(model, key, lr, steps):
    """`steps` hand-written gradient descent steps from model.init(key)."""
    p = model.init(key)
    grad = jax.jit(jax.grad(model.objective))
    for _ in range(steps):
        p = jax.tree.map(lambda x, g: x - lr * g, p, grad(p))
    return p


def test_new_values_budgets_and_equal_optimizers_compile_nothing(key):
    """A second solve with new hyperparameter values, a new key, a new step budget (with and
    without record_every) and a new optimizer object equal to the first: no backend
    compilation, and the numbers of a hand-written loop."""
    ufm.solve(MODEL, key, steps=20, optimizer=optax.sgd(0.3), record_every=5)
    ufm.solve(MODEL, key, steps=20, optimizer=optax.sgd(0.3))
    ufm.solve(MODEL, key, steps=20, tol=1e-9)
    model, key2 = dataclasses.replace(MODEL, lam_W=3e-2, lam_H=2e-3), jax.random.key(7)
    with count_compiles() as compiles:
        res = ufm.solve(model, key2, steps=27, optimizer=optax.sgd(0.3), record_every=6)
        plain = ufm.solve(model, key2, steps=33, optimizer=optax.sgd(0.3))
        default = ufm.solve(model, key2, steps=400, tol=1e-9)
    assert compiles == []
    np.testing.assert_array_equal(res.history["step"], [0, 6, 12, 18, 24, 27])
    p = _gd(model, key2, 0.3, 27)
    np.testing.assert_allclose(res.objective, model.objective(p), rtol=1e-12)
    np.testing.assert_allclose(plain.objective, model.objective(_gd(model, key2, 0.3, 33)),
                               rtol=1e-12)  # fmt: skip
    assert plain.history["step"].tolist() == [0, 33]
    assert default.status_name == "converged" and float(default.grad_norm) <= 1e-9
    np.testing.assert_allclose(default.objective, ufm.optimum(model).value, rtol=1e-12)


def test_record_every_not_dividing_steps_records_the_last_step(key):
    res = ufm.solve(MODEL, key, steps=7, optimizer=SGD, record_every=3)
    np.testing.assert_array_equal(res.history["step"], [0, 3, 6, 7])


def test_metrics_false_records_no_metrics(key):
    """metrics=False: the same run, its history without model.metrics."""
    full = ufm.solve(MODEL, key, steps=7, optimizer=SGD, record_every=3)
    plain = ufm.solve(MODEL, key, steps=7, optimizer=SGD, record_every=3, metrics=False)
    assert set(plain.history) == {"step", "objective", "grad_norm"}
    for k in plain.history:
        np.testing.assert_array_equal(plain.history[k], full.history[k])
    np.testing.assert_array_equal(plain.objective, full.objective)


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
    res = ufm.solve(MODEL, key, steps=300, optimizer=BLOWUP, record_every=300)
    assert int(res.status) == NONFINITE and res.status_name == "nonfinite"
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(res.params))
    assert np.isfinite(float(res.objective)) and int(res.steps) < 300
    assert res.message == RESULTS.nonfinite.message and "learning rate" in res.message


def test_throw_raises_with_the_status_message(key):
    """throw=True raises SolveError (carrying the Result) for a diverged run and for a budget
    spent before `tol`; a run without `tol` that takes every step, or one that converges, is
    returned."""
    with pytest.raises(SolveError, match="nonfinite: .*frozen at its last finite") as e:
        ufm.solve(MODEL, key, steps=300, optimizer=BLOWUP, record_every=300, throw=True)
    assert int(e.value.result.status) == NONFINITE
    with pytest.raises(SolveError, match=r"after 7 steps: max_steps: .*increase `steps`"):
        ufm.solve(MODEL, key, steps=7, optimizer=SGD, tol=1e-12, throw=True)
    res = ufm.solve(MODEL, key, steps=7, optimizer=SGD, record_every=3, throw=True)
    assert res.status_name == "max_steps"
    res = ufm.solve(MODEL, key, steps=500, record_every=10, tol=1e-9, throw=True)
    assert res.status_name == "converged" and res.message.startswith("converged")


def test_results_carry_their_messages():
    assert [int(r) for r in RESULTS] == [CONVERGED, MAX_STEPS, NONFINITE] == [0, 1, 2]
    for r in RESULTS:
        assert r.message.startswith(f"{r.name}: ")
    assert "`tol`" in RESULTS.converged.message and "`steps`" in RESULTS.max_steps.message


def test_loop_pieces_under_jit_and_vmap(key):
    """ufm.loop.build's init/step, stepped by hand under jit, give the run of `solve`; vmapped
    over two starts they give each start's run."""
    loop = ufm.loop.build(MODEL, SGD)
    step = jax.jit(loop.step)
    state = jax.jit(loop.init)(MODEL.init(key))
    for _ in range(7):
        state = step(state)
    res = ufm.solve(MODEL, key, steps=7, optimizer=SGD, record_every=3)
    assert int(state.steps) == 7 and int(state.status) == MAX_STEPS
    np.testing.assert_allclose(state.value, res.objective, rtol=1e-13)
    np.testing.assert_allclose(loop.stationarity(state), res.grad_norm, rtol=1e-12)
    assert set(loop.record(state)) == set(res.history)
    keys = jax.random.split(key, 2)
    starts = jax.vmap(MODEL.init)(keys)
    batch = jax.jit(jax.vmap(lambda p: ufm.loop.iterate(loop, loop.init(p), 7, 7)[0]))(starts)
    for i in range(2):
        one = ufm.solve(MODEL, keys[i], steps=7, optimizer=SGD, metrics=False)
        np.testing.assert_allclose(batch.value[i], one.objective, rtol=1e-12)


def test_init_argument_starts_from_given_parameters():
    opt = ufm.optimum(MODEL)
    res = ufm.solve(MODEL, jax.random.key(0), steps=3, optimizer=SGD, init=opt.params)
    assert float(res.history["grad_norm"][0]) < 1e-10
    np.testing.assert_allclose(res.objective, opt.value, rtol=1e-12)


def test_init_of_the_wrong_shape_names_init(key):
    """A start that is not shaped like model.init(key) is refused before tracing, naming init
    with the expected and the given shapes."""
    p = MODEL.init(key)
    wrong = p._replace(W=p.W.T)  # (4, 3) instead of (3, 4)
    with pytest.raises(ValueError, match=r"init must .*expected .*W=\(3, 4\).*got .*W=\(4, 3\)"):
        ufm.solve(MODEL, key, steps=3, optimizer=SGD, init=wrong)
    with pytest.raises(ValueError, match=r"init must have the structure .*got init with \(3, 4\)"):
        ufm.solve(MODEL, key, steps=3, optimizer=SGD, init=p.W)


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
        (dict(steps=10, metrics="no"), "metrics must be True or False"),
        (dict(steps=10, throw=1), "throw must be True or False"),
    ],
)
def test_bad_input(kw, name, key):
    with pytest.raises(ValueError, match=name):
        ufm.solve(MODEL, key, **kw)
