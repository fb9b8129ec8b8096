"""L-BFGS with a backtracking (Armijo) line search that batches well: one evaluation per trial
step, a loop of at most ``max_backtracks`` trials with no branches inside, so that `jax.vmap`
over many runs costs the longest run's trials and nothing more.

Each step takes the quasi-Newton direction p = -H_k g_k of the two-loop recursion (memory m,
initial scaling gamma_k = s'y / y'y of the newest pair; on the first step, and after a reset,
gamma = min(1, 1/||g||)), then the first step length t in 1, c, c^2, ... (c = ``shrink``) with

    f(x + t p) <= f(x) + c1 t g'p + eps_f,    eps_f = 8 eps |f(x)|,

where eps_f absorbs rounding, so that a run at its optimum in float32 keeps stepping instead of
backtracking forever. A pair (s, y) enters the memory only when s'y > eps ||s|| ||y||; when no
trial is accepted the step is zero and the memory is cleared (the next step is a scaled
gradient step). The value and gradient at the accepted point are kept in the state (``value``,
``grad``), for `optax.value_and_grad_from_state` and `ufm.loop`, which then never evaluate twice.

Reference: Nocedal & Wright, *Numerical Optimization* (2006), Algorithms 3.1 and 7.4.
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
    """The state of `lbfgs` at the iterate x_k (the memory holds the parameters raveled into one
    vector of length P, `jax.flatten_util.ravel_pytree`)."""

    pairs: Array  # () int, pairs stored so far (the newest at (pairs - 1) % m)
    s: Array  # (m, P) steps x_{i+1} - x_i
    y: Array  # (m, P) gradient changes g_{i+1} - g_i
    rho: Array  # (m,) 1 / s_i'y_i, 0 for empty slots
    value: Array  # () f(x_k)
    grad: Any  # gradient at x_k, pytree like params


def _direction(state: LbfgsState, g: Array, m: int) -> Array:
    """-H g (g raveled) by the two-loop recursion over the stored pairs, newest first."""
    newest = (state.pairs - 1) % m

    def first(j, carry):
        q, alphas = carry
        i = (newest - j) % m
        a = state.rho[i] * jnp.vdot(state.s[i], q)
        return q - a * state.y[i], alphas.at[i].set(a)

    q, alphas = jax.lax.fori_loop(0, m, first, (g, jnp.zeros_like(state.rho)))
    s_new, y_new = state.s[newest], state.y[newest]
    yy = jnp.vdot(y_new, y_new)
    gamma = jnp.where(
        state.pairs > 0,
        jnp.vdot(s_new, y_new) / jnp.where(yy > 0, yy, 1.0),
        _capped_inverse_norm(g),
    )

    def second(j, r):
        i = (newest - (m - 1 - j)) % m
        return r + (alphas[i] - state.rho[i] * jnp.vdot(state.y[i], r)) * state.s[i]

    return -jax.lax.fori_loop(0, m, second, gamma * q)


def _capped_inverse_norm(g: Array) -> Array:
    """min(1, 1/||g||): the first step's scale (a step of length at most 1)."""
    return jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.linalg.norm(g), jnp.finfo(g.dtype).tiny))


def lbfgs(
    memory_size: int = 10,
    max_backtracks: int = 12,
    shrink: float = 0.5,
    c1: float = 1e-4,
) -> optax.GradientTransformationExtraArgs:
    """L-BFGS with a bounded backtracking line search (Armijo), batch-friendly (module docstring).

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
      c1: sufficient-decrease constant of the Armijo condition, in (0, 1).

    Returns:
      An optax GradientTransformationExtraArgs whose state is a `LbfgsState`.
    """
    for name, value, ok in (
        ("memory_size", memory_size, isinstance(memory_size, int) and memory_size >= 1),
        ("max_backtracks", max_backtracks, isinstance(max_backtracks, int) and max_backtracks >= 0),
        ("shrink", shrink, isinstance(shrink, float) and 0 < shrink < 1),
        ("c1", c1, isinstance(c1, float) and 0 < c1 < 1),
    ):
        if not ok or isinstance(value, bool):
            raise ValueError(f"lbfgs: {name} has an invalid value {name}={value!r}")
    m = memory_size

    def init(params) -> LbfgsState:
        flat, _ = ravel_pytree(params)
        return LbfgsState(
            pairs=jnp.zeros((), jnp.int32),
            s=jnp.zeros((m,) + flat.shape, flat.dtype),
            y=jnp.zeros((m,) + flat.shape, flat.dtype),
            rho=jnp.zeros((m,), flat.dtype),
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
        p = _direction(state, g0, m)
        slope = jnp.vdot(g0, p)
        descent = slope < 0  # else (rounding) fall back to the scaled gradient
        p = jnp.where(descent, p, -_capped_inverse_norm(g0) * g0)
        slope = jnp.vdot(g0, p)
        slack = _SLACK * jnp.finfo(p.dtype).eps * jnp.abs(value)
        shape = jax.tree.map(jnp.zeros_like, grad)

        def search(c):  # one evaluation site: trial step lengths 1, shrink, shrink^2, ...
            k, t, *_ = c
            t = jnp.where(k == 0, 1.0, t * shrink).astype(p.dtype)
            v, g = vg(optax.apply_updates(params, unravel(t * p)))
            flat = ravel_pytree(g)[0]
            armijo = v <= value + c1 * t * slope  # False for NaN
            approximate = (v <= value + slack) & (jnp.vdot(flat, p) <= (2 * c1 - 1) * slope)
            return k + 1, t, v, g, armijo | approximate

        start = (0, jnp.ones((), p.dtype), value, shape, jnp.zeros((), bool))
        _, t, v, g, ok = jax.lax.while_loop(
            lambda c: (c[0] <= max_backtracks) & ~c[4], search, start
        )
        t = jnp.where(ok, t, 0.0)
        u = t * p
        v = jnp.where(ok, v, value)
        g = jax.tree.map(lambda a, b: jnp.where(ok, a, b), g, grad)
        y = ravel_pytree(g)[0] - g0
        sy = jnp.vdot(u, y)
        keep = ok & (sy > jnp.finfo(sy.dtype).eps * jnp.linalg.norm(u) * jnp.linalg.norm(y))
        slot = state.pairs % m
        new = LbfgsState(
            pairs=jnp.where(ok, state.pairs + keep.astype(state.pairs.dtype), 0),
            s=state.s.at[slot].set(jnp.where(keep, u, state.s[slot])),
            y=state.y.at[slot].set(jnp.where(keep, y, state.y[slot])),
            rho=jnp.where(ok, jnp.where(keep, state.rho.at[slot].set(1 / sy), state.rho), 0.0),
            value=v,
            grad=g,
        )
        return unravel(u), new

    return optax.GradientTransformationExtraArgs(init, update)
