"""L-BFGS with a backtracking line search that batches well: one evaluation per trial step and a
loop of at most ``max_backtracks`` trials with no branches inside, so that `jax.vmap` over many
runs costs the longest run's trials and nothing more.

Each step takes the quasi-Newton direction p = -H_k g_k of memory m (initial scaling
gamma_k = s'y / y'y of the newest pair; on the first step, and after a reset,
gamma = min(1, 1/||g||)), then the first step length t that gives sufficient decrease among
t_0 = 1 and t_{k+1} = the minimiser of the quadratic through f(x), g'p and f(x + t_k p), kept in
[0.1 t_k, 0.5 t_k] (safeguarded interpolation: one or two trials where halving takes several),

    f(x + t p) <= f(x) + c1 t g'p                                   (Armijo), or
    f(x + t p) <= f(x) + eps_f  and  g(x + t p)'p <= (2 c1 - 1) g'p   (approximate Armijo),

the second (Hager & Zhang 2005) judged by the slope at the trial point, which stays accurate
where f differences drown in rounding (eps_f = max(1e-6, 1000 eps) |f(x)|, their default in
float64): near the optimum, and in float32 above all, the search keeps finding steps instead of
backtracking forever. A pair (s, y) enters
the memory only when s'y > eps ||s|| ||y||; when no trial is accepted the step is zero and the
memory is cleared (the next step is a scaled gradient step), and the run counts as stalled: its
next search tries the unit step only, until one succeeds. A run at its floor of rounding so
costs one evaluation per step, which matters in a batch, where every step costs the longest
search of the batch. The value and gradient at the
accepted point are kept in the state (``value``, ``grad``), for `optax.value_and_grad_from_state`
and `ufm.loop`, which then never evaluate twice.

The two-loop recursion runs on coefficients (vector-free L-BFGS): with the base vectors
b = (s_0..s_{m-1}, y_0..y_{m-1}, g) (pair 0 the newest) and their dot products B_ij = b_i'b_j
kept up to date, the recursion acts on (2m+1)-vectors delta through B, and p = -sum_j delta_j b_j
takes one pass over the memory; B is updated with one more pass (the dot products of the new
gradient with the memory), so a step reads the memory twice instead of 4m times. The small
arrays are kept in order of age (shifted by one when a pair enters), the large memory in slots
that are overwritten in turn (``slots`` maps ages to slots): no step indexes an array at a
position that differs between runs, which `jax.vmap` would turn into slow gathers and scatters.

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

_RISE = 1e-6  # the approximate condition allows f to rise by _RISE |f(x)| (Hager & Zhang's eps)
_SLACK = 1e3  # ... or by _SLACK eps |f(x)| where that is more (float32)


class LbfgsState(NamedTuple):
    """The state of `lbfgs` at the iterate x_k. The memory holds the parameters raveled into one
    vector of length P (`jax.flatten_util.ravel_pytree`); the pair of age j (0: the newest) is
    in rows slots[j] and m + slots[j]; the small arrays are in order of age."""

    pairs: Array  # () int, pairs stored since the last reset (at most m)
    slots: Array  # (m,) int, the memory slot of the pair of each age
    memory: Array  # (2m, P): steps s = x_{i+1} - x_i in rows 0..m-1, gradient changes y below
    rho: Array  # (m,) 1 / s_j'y_j by age, 0 where there is no pair
    dots: Array  # (2m, 2m) dot products of (s_0..s_{m-1}, y_0..y_{m-1}), by age
    gdots: Array  # (2m,) their dot products with the gradient at x_k
    stalled: Array  # () bool, the last search found no step: the next tries the unit step only
    value: Array  # () f(x_k)
    grad: Any  # gradient at x_k, pytree like params


def _shorter(t: Array, rise: Array, slope: Array) -> Array:
    """The next trial step length after t failed: the minimiser t^2 |slope| / (2 (rise - slope t))
    of the quadratic with value 0 and slope `slope` at 0 and `rise` = f(x + t p) - f(x) at t,
    kept in [0.1 t, 0.5 t] (0.1 t when f was not finite)."""
    curvature = rise - slope * t  # > 0 after a failed sufficient-decrease test
    quad = -slope * t * t / (2 * jnp.where(curvature > 0, curvature, 1.0))
    return jnp.where(
        jnp.isfinite(quad) & (curvature > 0), jnp.clip(quad, 0.1 * t, 0.5 * t), 0.1 * t
    )


def _capped_inverse_norm(gg: Array) -> Array:
    """min(1, 1/||g||) from ||g||^2: the first step's scale (a step of length at most 1)."""
    return jnp.minimum(1.0, 1.0 / jnp.sqrt(jnp.maximum(gg, jnp.finfo(gg.dtype).tiny)))


def _coefficients(state: LbfgsState, B: Array, m: int) -> Array:
    """delta (2m + 1) with H g = sum_j delta_j b_j, b = (s by age, y by age, g), by the
    two-loop recursion on coefficients through B_ij = b_i'b_j (pairs without one have rho 0)."""
    delta = jnp.zeros(2 * m + 1, B.dtype).at[2 * m].set(1.0)  # q = g

    def first(j, carry):  # newest first
        delta, alphas = carry
        a = state.rho[j] * jnp.dot(B[j], delta)  # s_j'q
        return delta.at[m + j].add(-a), alphas.at[j].set(a)  # q -= a y_j

    delta, alphas = jax.lax.fori_loop(0, m, first, (delta, jnp.zeros(m, B.dtype)))
    yy = B[m, m]
    gamma = jnp.where(
        state.pairs > 0, B[0, m] / jnp.where(yy > 0, yy, 1.0), _capped_inverse_norm(B[-1, -1])
    )

    def second(k, delta):  # oldest first
        j = m - 1 - k
        b = state.rho[j] * jnp.dot(B[m + j], delta)  # y_j'r
        return delta.at[j].add(alphas[j] - b)  # r += (alpha_j - b) s_j

    return jax.lax.fori_loop(0, m, second, gamma * delta)


def _by_age(state: LbfgsState, m: int) -> Array:
    """(m, m) one-hot: row j marks the slot of the pair of age j."""
    return (state.slots[:, None] == jnp.arange(m)[None, :]).astype(state.memory.dtype)


def _direction(state: LbfgsState, g: Array, m: int) -> tuple[Array, Array, Array]:
    """(p, g'p, (s, y by age) . p) for the quasi-Newton direction p = -H g, or the scaled
    gradient step where rounding makes that no descent direction."""
    gg = jnp.vdot(g, g)
    B = jnp.block([[state.dots, state.gdots[:, None]], [state.gdots[None, :], gg[None, None]]])
    delta = _coefficients(state, B, m)
    Bp = -(B @ delta)  # b_j'p
    descent = Bp[2 * m] < 0
    fallback = jnp.zeros_like(delta).at[2 * m].set(_capped_inverse_norm(gg))
    delta = jnp.where(descent, delta, fallback)
    Bp = jnp.where(descent, Bp, -(B @ fallback))
    onehot = _by_age(state, m)
    in_slots = jnp.concatenate([delta[:m] @ onehot, delta[m : 2 * m] @ onehot])
    p = -(in_slots @ state.memory + delta[2 * m] * g)
    return p, Bp[2 * m], Bp[: 2 * m]


_DENSE = 8192  # up to this many parameters, the memory is written through a mask


def _shift(v: Array, new_s: Array, new_y: Array, m: int) -> Array:
    """A (2m, ...) array by age, one age older: new_s and new_y take age 0, the oldest leave."""
    return jnp.concatenate([new_s[None], v[: m - 1], new_y[None], v[m : 2 * m - 1]])


def _remember(state: LbfgsState, u, y, g_new, rows_u, new_gdots, ok, m: int):
    """The memory after the step u = s = x_new - x with gradient change y and new gradient
    g_new, given the old pairs' dot products (by age) with u (`rows_u`) and with g_new
    (`new_gdots`): the pair (u, y) enters as age 0 in the oldest pair's slot where `ok` and
    s'y > eps ||s|| ||y||, the memory is cleared where not `ok`. Up to `_DENSE` parameters the
    memory is written through a mask (no scatter when vmapped), beyond that two rows are
    written in place."""
    ss, sy, yy = jnp.vdot(u, u), jnp.vdot(u, y), jnp.vdot(y, y)
    keep = ok & (sy > jnp.finfo(sy.dtype).eps * jnp.sqrt(ss * yy))
    rows_y = new_gdots - state.gdots  # old pairs . y, y = g_new - g
    rows = _shift(state.dots, rows_u, rows_y, m)  # rows by new age, columns by old age
    col_u = _shift(rows_u, ss, sy, m)
    col_y = _shift(rows_y, sy, yy, m)
    dots = _shift(rows.T, col_u, col_y, m).T
    gdots = _shift(new_gdots, jnp.vdot(u, g_new), jnp.vdot(y, g_new), m)
    slot = state.slots[m - 1]  # the oldest pair's slot takes the new pair
    if u.shape[0] <= _DENSE:
        at = (jnp.arange(2 * m) == slot)[:, None], (jnp.arange(2 * m) == m + slot)[:, None]
        rows_new = jnp.where(at[0], u[None, :], jnp.where(at[1], y[None, :], state.memory))
        memory = jnp.where(keep, rows_new, state.memory)
    else:
        put = lambda M, i, v: M.at[i].set(jnp.where(keep, v, M[i]))  # noqa: E731 - in place
        memory = put(put(state.memory, slot, u), m + slot, y)
    older = lambda old, new: jnp.where(keep, new, old)  # noqa: E731
    rho = older(state.rho, jnp.concatenate([(1 / sy)[None], state.rho[: m - 1]]))
    return state._replace(
        pairs=jnp.where(ok, jnp.minimum(state.pairs + keep.astype(state.pairs.dtype), m), 0),
        slots=older(state.slots, jnp.concatenate([slot[None], state.slots[: m - 1]])),
        memory=memory,
        rho=jnp.where(ok, rho, 0.0),
        dots=older(state.dots, dots),
        gdots=older(new_gdots, gdots),
    )


def lbfgs(
    memory_size: int = 10,
    max_backtracks: int = 10,
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
      max_backtracks: trial steps per update beyond the unit step (>= 0), each shorter than
        the one before by a factor in [0.1, 0.5].
      c1: sufficient-decrease constant, in (0, 1/2).

    Returns:
      An optax GradientTransformationExtraArgs whose state is a `LbfgsState`.
    """
    for name, value, ok, allowed in (
        ("memory_size", memory_size, isinstance(memory_size, int) and memory_size >= 1,
         "an integer >= 1"),
        ("max_backtracks", max_backtracks, isinstance(max_backtracks, int) and max_backtracks >= 0,
         "an integer >= 0"),
        ("c1", c1, isinstance(c1, float) and 0 < c1 < 0.5, "a float in (0, 1/2)"),
    ):  # fmt: skip
        if not ok or isinstance(value, bool):
            raise ValueError(f"lbfgs: {name} has an invalid value {name}={value!r}; "
                             f"it must be {allowed}")  # fmt: skip
    m = memory_size

    def init(params) -> LbfgsState:
        flat, _ = ravel_pytree(params)
        return LbfgsState(
            pairs=jnp.zeros((), jnp.int32),
            slots=jnp.arange(m, dtype=jnp.int32),
            memory=jnp.zeros((2 * m,) + flat.shape, flat.dtype),
            rho=jnp.zeros((m,), flat.dtype),
            dots=jnp.zeros((2 * m, 2 * m), flat.dtype),
            gdots=jnp.zeros((2 * m,), flat.dtype),
            stalled=jnp.zeros((), bool),
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
        slack = max(_RISE, _SLACK * float(jnp.finfo(p.dtype).eps)) * jnp.abs(value)

        def search(c):  # one evaluation site: trial step lengths 1, then interpolated
            k, t, v, *_ = c
            t = jnp.where(k == 0, 1.0, _shorter(t, v - value, slope)).astype(p.dtype)
            v, g = vg(optax.apply_updates(params, unravel(t * p)))
            armijo = v <= value + c1 * t * slope  # False for NaN
            curved = jnp.vdot(ravel_pytree(g)[0], p) <= (2 * c1 - 1) * slope
            return k + 1, t, v, g, armijo | ((v <= value + slack) & curved)

        start = (0, jnp.ones((), p.dtype), value, grad, jnp.zeros((), bool))
        trials = jnp.where(state.stalled, 0, max_backtracks)  # at its floor: no backtracking
        _, t, v, g, ok = jax.lax.while_loop(lambda c: (c[0] <= trials) & ~c[4], search, start)
        t = jnp.where(ok, t, 0.0)
        u = t * p
        g = jax.tree.map(lambda a, b: jnp.where(ok, a, b), g, grad)
        g_new = ravel_pytree(g)[0]
        y = g_new - g0
        new_gdots = _by_age(state, m) @ (state.memory @ g_new).reshape(2, m).T  # (m, 2) by age
        new_gdots = new_gdots.T.reshape(2 * m)
        new = _remember(state, u, y, g_new, t * rows_p, new_gdots, ok, m)
        return unravel(u), new._replace(stalled=~ok, value=jnp.where(ok, v, value), grad=g)

    return optax.GradientTransformationExtraArgs(init, update)
