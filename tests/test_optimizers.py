"""ufm.optimizers.lbfgs: its direction is the two-loop recursion's, it minimises a quadratic and
the UFM to their closed forms, used alone the optax way or in `ufm.solve`, ill-conditioned runs
to a tight tolerance; vmapped runs equal single runs; in float32 a run at its optimum keeps
stepping, finite; bad settings are named."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ufm
from ufm.optimizers import lbfgs
from ufm.optimizers.lbfgs import _direction
from ufm.solve import run

MODEL = ufm.UFM(K=3, d=4, n=2, lam_W=1e-2, lam_H=2e-2, lam_b=3e-2)
ROUNDING = 1e-12  # float64 agreement of two routes to the same numbers
GAP = 1e-12  # relative gap to a closed-form optimum after convergence


def _two_loop(S, Y, g):
    """-H g by the classic two-loop recursion (Nocedal & Wright, Algorithm 7.4), pairs oldest
    first, H_0 = (s'y / y'y) I from the newest pair."""
    q, alphas = g.copy(), []
    for s, y in zip(S[::-1], Y[::-1], strict=True):
        a = (s @ q) / (s @ y)
        q -= a * y
        alphas.append(a)
    r = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) * q
    for s, y, a in zip(S, Y, alphas[::-1], strict=True):
        r += s * (a - (y @ r) / (s @ y))
    return -r


@pytest.mark.parametrize("stored", [2, 4, 7])
def test_direction_is_the_two_loop_recursion(stored):
    """The coefficient recursion through the Gram matrix (memory 4, pairs in shuffled slots,
    the oldest dropped once more than 4 were stored) gives the two-loop direction of the newest
    pairs, and its dot products with them."""
    m, P = 4, 9
    rng = np.random.default_rng(stored)
    S = rng.standard_normal((stored, P))
    Y = S @ np.diag(rng.uniform(0.5, 2.0, P)) + 0.1 * rng.standard_normal((stored, P))
    g = rng.standard_normal(P)
    n = min(stored, m)
    slots = np.array([2, 0, 3, 1])  # the slot of the pair of each age (0: the newest)
    memory, rho = np.zeros((2 * m, P)), np.zeros(m)
    by_age = np.zeros((2 * m, P))
    for j in range(n):  # age j is pair stored - 1 - j
        s, y = S[stored - 1 - j], Y[stored - 1 - j]
        memory[slots[j]], memory[m + slots[j]], rho[j] = s, y, 1 / (s @ y)
        by_age[j], by_age[m + j] = s, y
    state = ufm.optimizers.LbfgsState(
        pairs=jnp.asarray(n, jnp.int32),
        slots=jnp.asarray(slots, jnp.int32),
        memory=jnp.asarray(memory),
        rho=jnp.asarray(rho),
        dots=jnp.asarray(by_age @ by_age.T),
        gdots=jnp.asarray(by_age @ g),
        stalled=jnp.zeros((), bool),
        value=jnp.zeros(()),
        grad=None,
    )
    p, slope, rows = _direction(state, jnp.asarray(g), m)
    keep = slice(stored - n, stored)
    expected = _two_loop(S[keep], Y[keep], g)
    np.testing.assert_allclose(p, expected, rtol=ROUNDING, atol=ROUNDING)
    np.testing.assert_allclose(slope, g @ expected, rtol=ROUNDING)
    np.testing.assert_allclose(rows, by_age @ expected, rtol=1e-10, atol=ROUNDING)


def test_minimises_a_quadratic_the_optax_way():
    """Used as any optax line-search optimizer (value_fn, optax.value_and_grad_from_state), it
    reaches the minimiser A^-1 b of 1/2 x'Ax - b'x."""
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((6, 6))
    A, b = jnp.asarray(Q @ Q.T + 0.5 * np.eye(6)), jnp.asarray(rng.standard_normal(6))
    f = lambda x: 0.5 * x @ A @ x - b @ x  # noqa: E731
    opt = lbfgs()
    x = jnp.zeros(6)
    state = opt.init(x)
    vg = optax.value_and_grad_from_state(f)

    @jax.jit
    def step(x, state):
        value, grad = vg(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(x, updates), state

    for _ in range(30):
        x, state = step(x, state)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-10, atol=1e-12)


def test_solve_reaches_the_closed_form(key):
    res = ufm.solve(MODEL, key, steps=300, optimizer=lbfgs(memory_size=5), tol=1e-11)
    assert res.status_name == "converged"
    np.testing.assert_allclose(res.objective, ufm.optimum(MODEL).value, rtol=GAP)


def test_ill_conditioned_run_reaches_a_tight_tolerance(key):
    """lambda = 1e-6, imbalanced, no bias: f is small and its rounding far above eps |f|, yet
    the search keeps finding steps down to a stationarity of 1e-14 (no stall at 1e-10)."""
    m = ufm.UFM(K=3, d=3, n=(6, 3, 1), loss="ce", bias=False, lam_W=1e-6, lam_H=1e-6)
    res = ufm.solve(m, key, steps=400, tol=1e-14)
    assert res.status_name == "converged" and float(res.grad_norm) <= 1e-14


def test_vmapped_runs_equal_single_runs():
    """Four runs (two weight decays x two starts) stepped in one vmapped loop equal the four
    runs stepped alone: the line search has no branch that couples them."""
    lams = jnp.array([1e-3, 1e-3, 5e-2, 5e-2])
    keys = jax.random.split(jax.random.key(1), 4)
    opt = lbfgs()
    batch = ufm.UFM(K=3, d=4, n=2, lam_W=lams)
    axes = jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, batch)

    def body(m, k):
        return run(m, m.init(k), opt, 60, 60)

    out = jax.jit(jax.vmap(body, in_axes=(axes, 0)))(batch, keys)
    for i in range(4):
        single = ufm.solve(ufm.UFM(K=3, d=4, n=2, lam_W=float(lams[i])), keys[i], steps=60,
                           optimizer=opt)  # fmt: skip
        np.testing.assert_allclose(out.objective[i], single.objective, rtol=ROUNDING)
        assert int(out.steps[i]) == int(single.steps) == 60


def test_float32_run_at_its_optimum_keeps_stepping_finite(key):
    """float32, 400 steps on a tiny problem: the run reaches the optimum to float32 rounding and
    stays there, every step taken, nothing non-finite (the approximate sufficient decrease keeps
    the search from backtracking forever where f differences are rounding)."""
    m = ufm.UFM(K=4, d=5, n=3, lam_W=1e-2, lam_H=1e-2)
    params = jax.tree.map(lambda x: x.astype(jnp.float32), m.init(key))
    res = ufm.solve(m, key, steps=400, init=params, record_every=100)
    assert res.status_name == "max_steps" and int(res.steps) == 400
    assert res.objective.dtype == jnp.float32 and np.isfinite(res.history["objective"]).all()
    np.testing.assert_allclose(res.objective, ufm.optimum(m).value, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(memory_size=0), "memory_size"),
        (dict(max_backtracks=-1), "max_backtracks"),
        (dict(c1=0.5), "c1"),
        (dict(memory_size=True), "memory_size"),
    ],
)
def test_bad_settings_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"lbfgs: {name} has an invalid value {name}="):
        lbfgs(**kwargs)
