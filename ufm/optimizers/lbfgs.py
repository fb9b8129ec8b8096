"""L-BFGS with a backtracking line search that batches well: one evaluation per trial step and a
loop of at most ``max_backtracks`` trials with no branches inside, so that `jax.vmap` over many
runs costs the longest run's trials and nothing more.

Each step takes the quasi-Newton direction p = -H_k g_k of memory m (initial scaling
gamma_k = s'y / y'y of the newest pair; on the first step, and after a reset,
gamma = min(1, 1/||g||)), then the first step length t in 1, c, c^2, ... (c = ``shrink``) that
gives sufficient decrease,

    f(x + t p) <= f(x) + c1 t g'p                                   (Armijo), or
    f(x + t p) <= f(x) + eps_f  and  g(x + t p)'p <= (2 c1 - 1) g'p   (approximate Armijo),

the second (Hager & Zhang 2005) judged by the slope at the trial point, which stays accurate
where f differences drown in rounding (eps_f = 1000 eps |f(x)|): near the optimum, in float32
above all, the search keeps finding steps instead of backtracking forever. A pair (s, y) enters
the memory only when s'y > eps ||s|| ||y||; when no trial is accepted the step is zero and the
memory is cleared (the next step is a scaled gradient step). The value and gradient at the
accepted point are kept in the state (``value``, ``grad``), for `optax.value_and_grad_from_state`
and `ufm.loop`, which then never evaluate twice.

The two-loop recursion runs on coefficients (vector-free L-BFGS): with the base vectors
b = (s_1..s_m, y_1..y_m, g) and their dot products B_ij = b_i'b_j kept up to date, the
recursion acts on (2m+1)-vectors delta through B, and p = -sum_j delta_j b_j takes one pass over
the memory; B is updated with one more pass (the dot products of the new gradient with the
memory), so a step reads the memory twice instead of 4m times.

References: Nocedal & Wright, *Numerical Optimization* (2006), Algorithms 3.1 and 7.4; Hager &
Zhang, SIAM J. Optim. 16 (2005), the approximate Wolfe conditions; Chen, Wang, Zhou & Chen,
NeurIPS 2014, vector-free L-BFGS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array
from jax.flatten_util import ravel_pytree

__all__ = ["LbfgsState", "lbfgs"]

_SLACK = 1e3  # the approximate condition allows f to rise by _SLACK eps |f(x)| (rounding)


class LbfgsState(NamedTuple):
    """The state of `lbfgs` at the iterate x_k. The memory holds the parameters raveled into one
    vector of length P (`jax.flatten_util.ravel_pytree`); pair i is rows i and m + i."""

    pairs: Array  # () int, pairs stored since the last reset (the newest at (pairs - 1) % m)
    memory: Array  # (2m, P): steps s_i = x_{i+1} - x_i, then gradient changes y_i
    rho: Array  # (m,) 1 / s_i'y_i, 0 for empty slots
    dots: Array  # (2m, 2m) dot products of the memory's rows
    gdots: Array  # (2m,) dot products of the memory's rows with the gradient at x_k
    value: Array  # () f(x_k)
    grad: Any  # gradient at x_k, pytree like params


def _capped_inverse_norm(gg: Array) -> Array:
    """min(1, 1/||g||) from ||g||^2: the first step's scale (a step of length at most 1)."""
    return jnp.minimum(1.0, 1.0 / jnp.sqrt(jnp.maximum(gg, jnp.finfo(gg.dtype).tiny)))


def _coefficients(state: LbfgsState, B: Array, m: int) -> Array:
    """delta (2m + 1) with H g = sum_j delta_j b_j, b = (memory rows, g), by the two-loop
    recursion on coefficients through B_ij = b_i'b_j."""
    newest = (state.pairs - 1) % m
    delta = jnp.zeros(2 * m + 1, B.dtype).at[2 * m].set(1.0)  # q = g

    def first(j, carry):
        delta, alphas = carry
        i = (newest - j) % m
        a = state.rho[i] * jnp.dot(B[i], delta)  # s_i'q
        return delta.at[m + i].add(-a), alphas.at[i].set(a)  # q -= a y_i

    delta, alphas = jax.lax.fori_loop(0, m, first, (delta, jnp.zeros(m, B.dtype)))
    yy = B[m + newest, m + newest]
    gamma = jnp.where(
        state.pairs > 0,
        B[newest, m + newest] / jnp.where(yy > 0, yy, 1.0),
        _capped_inverse_norm(B[2 * m, 2 * m]),
    )

    def second(j, delta):
        i = (newest - (m - 1 - j)) % m
        b = state.rho[i] * jnp.dot(B[m + i], delta)  # y_i'r
        return delta.at[i].add(alphas[i] - b)  # r += (alpha_i - b) s_i

    return jax.lax.fori_loop(0, m, second, gamma * delta)


def _direction(state: LbfgsState, g: Array, m: int) -> tuple[Array, Array, Array]:
    """(p, g'p, memory rows . p) for the quasi-Newton direction p = -H g, or the scaled
    gradient step where rounding makes that no descent direction."""
    gg = jnp.vdot(g, g)
    B = jnp.block([[state.dots, state.gdots[:, None]], [state.gdots[None, :], gg[None, None]]])
    delta = _coefficients(state, B, m)
    Bp = -(B @ delta)  # b_j'p
    descent = Bp[2 * m] < 0
    fallback = jnp.zeros_like(delta).at[2 * m].set(_capped_inverse_norm(gg))
    delta = jnp.where(descent, delta, fallback)
    Bp = jnp.where(descent, Bp, -(B @ fallback))
    p = -(state.memory.T @ delta[: 2 * m] + delta[2 * m] * g)
    return p, Bp[2 * m], Bp[: 2 * m]


def _remember(state: LbfgsState, u, y, g_new, rows_u, new_gdots, keep, ok, m: int):
    """The memory after the step u = s = x_new - x with gradient change y and new gradient
    g_new, given the old rows' dot products with u (`rows_u`) and with g_new (`new_gdots`):
    the pair (u, y) stored in slot pairs % m where `keep`, the memory cleared where not `ok`."""
    slot = state.pairs % m
    ss, sy, yy = jnp.vdot(u, u), jnp.vdot(u, y), jnp.vdot(y, y)
    rows = jnp.stack([rows_u, new_gdots - state.gdots])  # old rows . (u, y): y = g_new - g
    rows = rows.at[:, slot].set(jnp.array([ss, sy])).at[:, m + slot].set(jnp.array([sy, yy]))
    dots = state.dots.at[slot].set(rows[0]).at[m + slot].set(rows[1])
    dots = dots.at[:, slot].set(rows[0]).at[:, m + slot].set(rows[1])
    gdots = new_gdots.at[slot].set(jnp.vdot(u, g_new)).at[m + slot].set(jnp.vdot(y, g_new))
    put = lambda M, i, v: M.at[i].set(jnp.where(keep, v, M[i]))  # noqa: E731 - in place
    rho = jnp.where(keep, state.rho.at[slot].set(1 / sy), state.rho)
    return state._replace(
        pairs=jnp.where(ok, state.pairs + keep.astype(state.pairs.dtype), 0),
        memory=put(put(state.memory, slot, u), m + slot, y),
        rho=jnp.where(ok, rho, 0.0),
        dots=jnp.where(keep, dots, state.dots),
        gdots=jnp.where(keep, gdots, new_gdots),
    )


def lbfgs(
    memory_size: int = 10,
    max_backtracks: int = 12,
    shrink: float = 0.5,
    c1: float = 1e-4,
) -> optax.GradientTransformationExtraArgs:
    """L-BFGS with a bounded backtracking line search, batch-friendly (module docstring).

    ``update(updates, state, params, *, value, grad, value_fn=None, value_and_grad_fn=None)``:
    `value` and `grad` are f and its gradient at `params` (as in `optax.lbfgs`), and the line
    search evaluates ``value_and_grad_fn`` (default: ``jax.value_and_grad(value_fn)``) at its
    trial points; the returned update is t p, and the state holds f and its gradient at
    ``params + t p``.

    Args:
      memory_size: pairs (s, y) kept (m >= 1).
      max_backtracks: trial steps per update beyond the unit step (>= 0): step lengths 1,
        shrink, ..., shrink^max_backtracks.
      shrink: factor between trial step lengths, in (0, 1).
      c1: sufficient-decrease constant, in (0, 1/2).

    Returns:
      An optax GradientTransformationExtraArgs whose state is a `LbfgsState`.
    """
    for name, value, ok in (
        ("memory_size", memory_size, isinstance(memory_size, int) and memory_size >= 1),
        ("max_backtracks", max_backtracks, isinstance(max_backtracks, int) and max_backtracks >= 0),
        ("shrink", shrink, isinstance(shrink, float) and 0 < shrink < 1),
        ("c1", c1, isinstance(c1, float) and 0 < c1 < 0.5),
    ):
        if not ok or isinstance(value, bool):
            raise ValueError(f"lbfgs: {name} has an invalid value {name}={value!r}")
    m = memory_size

    def init(params) -> LbfgsState:
        flat, _ = ravel_pytree(params)
        return LbfgsState(
            pairs=jnp.zeros((), jnp.int32),
            memory=jnp.zeros((2 * m,) + flat.shape, flat.dtype),
            rho=jnp.zeros((m,), flat.dtype),
            dots=jnp.zeros((2 * m, 2 * m), flat.dtype),
            gdots=jnp.zeros((2 * m,), flat.dtype),
            value=jnp.full((), jnp.inf, flat.dtype),
            grad=jax.tree.map(jnp.zeros_like, params),
        )

    def update(
        updates,
        state: LbfgsState,
        params,
        *,
        value: Array,
        grad,
        value_fn: Callable | None = None,
        value_and_grad_fn: Callable | None = None,
        **extra_args,
    ):
        del updates, extra_args  # the direction comes from `grad` and the memory
        vg = value_and_grad_fn if value_and_grad_fn is not None else jax.value_and_grad(value_fn)
        g0, unravel = ravel_pytree(grad)
        p, slope, rows_p = _direction(state, g0, m)
        slack = _SLACK * jnp.finfo(p.dtype).eps * jnp.abs(value)

        def search(c):  # one evaluation site: trial step lengths 1, shrink, shrink^2, ...
            k, t, *_ = c
            t = jnp.where(k == 0, 1.0, t * shrink).astype(p.dtype)
            v, g = vg(optax.apply_updates(params, unravel(t * p)))
            armijo = v <= value + c1 * t * slope  # False for NaN
            curved = jnp.vdot(ravel_pytree(g)[0], p) <= (2 * c1 - 1) * slope
            return k + 1, t, v, g, armijo | ((v <= value + slack) & curved)

        start = (0, jnp.ones((), p.dtype), value, grad, jnp.zeros((), bool))
        _, t, v, g, ok = jax.lax.while_loop(
            lambda c: (c[0] <= max_backtracks) & ~c[4], search, start
        )
        t = jnp.where(ok, t, 0.0)
        u = t * p
        g = jax.tree.map(lambda a, b: jnp.where(ok, a, b), g, grad)
        g_new = ravel_pytree(g)[0]
        y = g_new - g0
        sy = jnp.vdot(u, y)
        keep = ok & (sy > jnp.finfo(sy.dtype).eps * jnp.sqrt(jnp.vdot(u, u) * jnp.vdot(y, y)))
        new = _remember(state, u, y, g_new, t * rows_p, state.memory @ g_new, keep, ok, m)
        return unravel(u), new._replace(value=jnp.where(ok, v, value), grad=g)

    return optax.GradientTransformationExtraArgs(init, update)
