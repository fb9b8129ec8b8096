"""Gradient flow dθ/dt = -∇f(θ) on any model with ``objective(params)``, integrated by Euler or
classical RK4 in one compiled loop, with the statistics of docs/theory.md §14 recorded on the way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array, lax

from ufm.dynamics.le_sde import check_blocks, strong
from ufm.loop import RESULTS, build
from ufm.metrics.dynamics import flow_metrics
from ufm.models._base import check_choice, check_real

__all__ = ["FlowResult", "flow_stats", "gradient_flow", "rk4", "increment", "integrate", "METHODS"]

METHODS = ("euler", "rk4")


class FlowResult(NamedTuple):
    """Output of `gradient_flow`: final params, history dict name -> (T, ...) arrays (with "t" and
    "objective" always), and diverged: True when a step gave a non-finite objective, gradient or
    iterate (status `ufm.loop.RESULTS.nonfinite`); params are then the last finite iterate."""

    params: Any
    history: dict[str, Array]
    diverged: Array


def flow_stats(model, params, params0=None) -> dict[str, Array]:
    """Default statistics of `gradient_flow` for models with W (K, d), H (d, N) and labels.

    Returns dict (empty for models without W, H, labels) with "loss" (model.data_loss(params),
    when the model has it) and the keys of `ufm.metrics.dynamics.flow_metrics` on the model's
    logits: margin, normalized_margin, nc1, nc2, nc2_W, nc3 and, from params0, balance_drift.
    """
    out = {}
    if hasattr(model, "data_loss"):
        out["loss"] = model.data_loss(params)
    W, H = getattr(params, "W", None), getattr(params, "H", None)
    if W is None or H is None or not hasattr(model, "labels"):
        return out
    logits = model.logits(params) if hasattr(model, "logits") else None
    W0, H0 = (None, None) if params0 is None else (params0.W, params0.H)
    return {**out, **flow_metrics(W, H, model.labels, logits, W0, H0)}


def _negative(tree):
    return jax.tree.map(jnp.negative, tree)


def _axpy(y, a, k):
    return jax.tree.map(lambda x, v: x + a * v, y, k)


def increment(f: Callable, y, dt, method: str, k1=None):
    """The step of dy/dt = f(y) on a pytree y: Euler dt k1, or classical RK4
    (dt/6)(k1 + 2 k2 + 2 k3 + k4) (local error O(dt^5), global O(dt^4)), where k1 = f(y) unless
    given and k2 = f(y + (dt/2) k1), k3 = f(y + (dt/2) k2), k4 = f(y + dt k3)."""
    k1 = f(y) if k1 is None else k1
    if method == "euler":
        return jax.tree.map(lambda a: dt * a, k1)
    k2 = f(_axpy(y, dt / 2, k1))
    k3 = f(_axpy(y, dt / 2, k2))
    k4 = f(_axpy(y, dt, k3))
    return jax.tree.map(lambda a, b, c, d: (dt / 6) * (a + 2 * b + 2 * c + d), k1, k2, k3, k4)


def _blocks(step: Callable, y0, dt, n_records: int, record_every, record: Callable):
    """y <- step(y) (traceable): a `lax.scan` over n_records blocks, each a `fori_loop` of
    record_every steps (traced: changing it recompiles nothing), recording ``record(y, t)``
    (t = dt * steps so far) after each block. Returns (y at the end, history of stacked records)."""

    def block(carry, _):
        y, m = carry
        y = lax.fori_loop(0, record_every, lambda _, y: step(y), y)
        m = m + record_every
        return (y, m), record(y, dt * m)

    (y, _), history = lax.scan(block, (y0, jnp.zeros((), int)), None, n_records)
    return y, history


def integrate(f: Callable, y0, dt, n_records: int, record_every, method: str, record: Callable):
    """Fixed-step integration of dy/dt = f(y) (traceable) by `increment`, in the record blocks of
    `_blocks`. Returns (y at the end, history of stacked ``record(y, t)``)."""

    def step(y):
        return _axpy(y, 1, increment(f, y, dt, method))

    return _blocks(step, y0, dt, n_records, record_every, record)


def rk4(dt) -> optax.GradientTransformationExtraArgs:
    """Classical RK4 for the gradient flow dθ/dt = -∇f(θ), as an optax transformation.

    The update is -(dt/6)(k1 + 2 k2 + 2 k3 + k4) with k1 the gradient it is given and k2, k3, k4
    the gradients of ``value_fn`` (f, passed by `ufm.loop`) at the stages θ - (dt/2) k1,
    θ - (dt/2) k2, θ - dt k3: global error O(dt^4). Euler is ``optax.sgd(dt)``.
    """

    def init(params):
        return optax.EmptyState()

    def update(grads, state, params=None, *, value_fn, **extra):
        grad = jax.grad(value_fn)
        return increment(lambda p: _negative(grad(p)), params, dt, "rk4", _negative(grads)), state

    return optax.GradientTransformationExtraArgs(init, update)


@partial(jax.jit, static_argnames=("n_records", "method", "stats"))
def _flow(model, params0, dt, n_records, record_every, method, stats):
    step = optax.sgd(dt) if method == "euler" else rk4(dt)
    loop = build(model, step, metrics=False)
    going = int(RESULTS.max_steps)

    def advance(s):
        return loop.step(s, s.status == going)

    def record(s, t):
        return {"t": t, "objective": s.value, **stats(model, s.params, params0)}

    s, history = _blocks(advance, loop.init(params0), dt, n_records, record_every, record)
    return FlowResult(s.params, history, s.status == int(RESULTS.nonfinite))


def time_grid(t, dt, record_every) -> tuple[Array, int, Array]:
    """Check t = steps * dt; returns (dt, n_records, record_every) as strongly typed scalars and
    the number of records, ValueError naming t, dt, steps or record_every otherwise."""
    dt = float(check_real("dt", dt, strict=True))
    t = float(check_real("t", t, strict=True))
    steps = int(round(t / dt))
    if steps < 1 or abs(steps * dt - t) > 1e-9 * t:
        raise ValueError(f"t must be a positive multiple of dt={dt}, got t={t}")
    check_blocks(steps, record_every)
    return strong(dt), steps // record_every, strong(record_every)


def gradient_flow(
    model,
    params0,
    t: float,
    dt: float,
    record_every: int = 1,
    method: str = "euler",
    stats: Callable | None = None,
) -> FlowResult:
    """Integrate the gradient flow dθ/dt = -∇ model.objective(θ) from params0 up to time t.

    Euler (θ <- θ - dt ∇f, i.e. full-batch gradient descent with learning rate dt, `optax.sgd`;
    error O(dt)) or classical RK4 (`rk4`; error O(dt^4)), stepped by the loop of `ufm.loop` (the
    model's own value_and_grad where it has one, non-finite steps frozen): a `lax.scan` over
    record blocks, each a `fori_loop` of record_every steps, so only the number of records is
    compiled in. Works for any model with
    `objective(params)` on a params pytree; jitted, and vmappable over params0 and model leaves.
    Time is that of the model's objective: ufm's losses are means over N = sum_k n_k samples, so a
    flow stated for a summed loss runs N times slower here (docs/theory.md §14).

    Args:
      model: e.g. `ufm.UFM(K, d, n, loss="mse", lam_W=0., lam_H=0., lam_b=0.)`.
      params0: initial parameters (a pytree; `ufm.Params` for the UFM).
      t: final time (> 0), a multiple of dt.
      dt: step (> 0).
      record_every: statistics are recorded every `record_every` steps (not at t = 0).
      method: "euler" or "rk4".
      stats: `stats(model, params, params0) -> dict` of arrays to record; `flow_stats` by default.
        Must be hashable (a module-level function): it is a static argument of the compiled loop.
    Returns:
      FlowResult(params, history, diverged); history holds "t", "objective" and the stats.
    """
    if not hasattr(model, "objective"):
        raise ValueError(f"model must have an objective(params) method, got model={model!r}")
    check_choice("method", method, METHODS)
    dt, n_records, every = time_grid(t, dt, record_every)
    return _flow(model, params0, dt, n_records, every, method, stats or flow_stats)
