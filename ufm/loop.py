"""The optimisation loop as a pair of pure functions, in the shape of an optax transformation:
``loop = ufm.loop.build(model, optimizer)``, ``state = loop.init(params)``, then
``state = loop.step(state)`` until ``state.status`` leaves ``RESULTS.max_steps``.

`ufm.solve` drives one loop (`iterate`), `ufm.sweep` drives many at once (vmapped, with a
running mask), and any other driver (a gradient flow, a custom schedule) can drive the same
pieces. Every function is traceable: build a loop inside `jax.jit`/`jax.vmap` freely.

    loop = ufm.loop.build(model, optax.sgd(0.1), tol=1e-9)
    state = loop.init(model.init(key))
    state = jax.lax.while_loop(
        lambda s: (s.steps < 100) & (s.status == ufm.loop.RESULTS.max_steps), loop.step, state)
    ufm.loop.RESULTS(int(state.status)).message
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import Array

__all__ = [
    "RESULTS",
    "LoopState",
    "Loop",
    "build",
    "History",
    "history_rows",
    "history_capacity",
    "start_history",
    "advance",
    "iterate",
    "stationarity",
    "tree_norm",
    "all_finite",
]


class RESULTS(enum.IntEnum):
    """How a run ended: the integer ``status`` of a `LoopState`, `ufm.Result` and `ufm.Sweep`,
    each with the message a user needs (``RESULTS(code).message``).

    converged (0): the stationarity measure reached ``tol``.
    max_steps (1): the step budget ran out first (while running, every state is ``max_steps``).
    nonfinite (2): a step produced a NaN/inf; the run was frozen at its last finite iterate.
    """

    converged = 0
    max_steps = 1
    nonfinite = 2

    @property
    def message(self) -> str:
        """What happened, and what to change."""
        return _MESSAGES[self]


_MESSAGES = {
    RESULTS.converged: "converged: the stationarity measure reached `tol`.",
    RESULTS.max_steps: "max_steps: the run took every step of its budget without reaching `tol` "
    "(without a `tol`, the normal end); to converge, increase `steps` or use another optimizer.",
    RESULTS.nonfinite: "nonfinite: a step produced a NaN or inf objective, gradient or iterate; "
    "the run is frozen at its last finite iterate. Lower the learning rate, or check the model's "
    "hyperparameters.",
}


class LoopState(NamedTuple):
    """The state of one run between optimizer steps (a pytree; a batch of runs stacks it)."""

    params: Any  # the iterate, the pytree of model.init (e.g. ufm.Params: W (K, d), H (d, N))
    opt_state: Any  # the optimizer's state at `params`
    value: Array  # () objective at params
    grad: Any  # gradient at params, the pytree of params
    stationarity: Array  # () ||P(x - g) - x|| at params; tracked step by step only with a tol
    steps: Array  # () int, optimizer steps taken
    status: Array  # () int, a RESULTS code; RESULTS.max_steps while the run goes on


class Loop(NamedTuple):
    """The pure functions of one run's loop (built by `build`).

    init(params) -> LoopState: the state at a starting point (its status is ``nonfinite``
      when the start already is, else ``converged`` or ``max_steps`` by the stopping test).
    step(state, active=True) -> LoopState: one guarded optimizer step. Where ``active`` is
      False the state is returned unchanged; where the step gives a non-finite value the state
      keeps its last finite iterate and its status becomes ``nonfinite``.
    stationarity(state) -> (): the stationarity measure at ``state.params``.
    record(state) -> dict[str, ()]: what a history stores at a record point: step, objective,
      grad_norm, and ``model.metrics`` unless built with ``metrics=False``.
    attempt(state) -> LoopState: one unguarded step: the new state, whose status is
      ``nonfinite`` (and iterate possibly not finite) when the step failed. `advance` steps
      only by attempts (no select per step) and freezes runs between them.
    """

    init: Callable[[Any], LoopState]
    step: Callable[..., LoopState]
    stationarity: Callable[[LoopState], Array]
    record: Callable[[LoopState], dict[str, Array]]
    attempt: Callable[[LoopState], LoopState]


def tree_norm(t) -> Array:
    """Euclidean norm of a pytree of arrays, sqrt(sum_i ||t_i||_F^2)."""
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(t)))


def all_finite(t) -> Array:
    """True iff every entry of every leaf is finite: sum(x * 0) is 0 for finite x and NaN as soon
    as one entry is inf or NaN (never overflows; one fused reduction per leaf, about 3x cheaper
    on CPU than all(isfinite(x)), which XLA materialises as a boolean array)."""
    total = sum(jnp.sum(x * jnp.zeros((), x.dtype)) for x in jax.tree.leaves(t))
    return jnp.isfinite(total)


def stationarity(project: Callable | None, params, grad) -> Array:
    """The stationarity measure ||P(x - g) - x|| (the projected-gradient step length, zero
    exactly at a KKT point of min f over the feasible set); ||g|| without a projection P."""
    if project is None:
        return tree_norm(grad)
    moved = project(jax.tree.map(lambda p, g: p - g, params, grad))
    return tree_norm(jax.tree.map(lambda a, p: a - p, moved, params))


def _value_in_state(opt_state) -> bool:
    """Whether a (line-search) optimizer stores the objective and gradient at its iterate."""
    return optax.tree_utils.tree_get(opt_state, "value") is not None


def _takes(fn: Callable, name: str) -> bool:
    """Whether `fn` has a parameter called `name`."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _status(ok: Array, stat: Array, tol) -> Array:
    """nonfinite where not `ok`, else converged where stat <= tol (never with tol None), else
    max_steps (the status of a run still going)."""
    going = int(RESULTS.max_steps)
    if tol is not None:
        going = jnp.where(stat <= tol, int(RESULTS.converged), going)
    return jnp.where(ok, going, int(RESULTS.nonfinite))


def build(
    model,
    optimizer: optax.GradientTransformation,
    *,
    tol: Array | float | None = None,
    metrics: bool = True,
) -> Loop:
    """The loop of `optimizer` on ``model.objective`` (traceable: `model` and `tol` may hold
    tracers).

    Gradients come from ``model.value_and_grad(params)`` where the model defines it (hand-derived
    and fused, e.g. `ufm.UFM` with CE or MSE; its contract: the value is non-finite whenever a
    parameter or gradient entry is, so a step checks only the value), else from autodiff of
    ``model.objective`` with every entry of the new parameters and gradient checked. A model with
    ``project(params)`` is kept feasible by projecting after every update; line-search optimizers
    (L-BFGS) reuse the value and gradient they computed at the accepted point when there is no
    projection, and an optimizer whose ``update`` takes ``value_and_grad_fn``
    (`ufm.optimizers.lbfgs`) line-searches with the model's own value and gradient.

    Args:
      model: a ufm model (``objective``; optionally ``value_and_grad``, ``project``, ``metrics``).
      optimizer: any optax GradientTransformation, line-search ones included.
      tol: stop once the stationarity measure is <= tol (status ``converged``); None: no
        stopping test, and no stationarity measure computed at every step (only when recorded).
      metrics: include ``model.metrics`` in `Loop.record`.

    Returns:
      A `Loop` of pure functions.
    """
    f = model.objective
    project = getattr(model, "project", None)
    own_vg = getattr(model, "value_and_grad", None)
    tx = optax.with_extra_args_support(optimizer)
    use_tol = tol is not None
    vg = own_vg if own_vg is not None else jax.value_and_grad(f)
    vg_from_state = optax.value_and_grad_from_state(f)
    # an optimizer that takes `value_and_grad_fn` (ufm.optimizers) line-searches with vg
    fused = {"value_and_grad_fn": vg} if _takes(optimizer.update, "value_and_grad_fn") else {}

    def reuses_state(opt_state) -> bool:
        # after a projection the iterate is another point than the line search's trial point
        return project is None and _value_in_state(opt_state)

    def finite(value, grad, params, opt_state):
        # the model's own value_and_grad promises a non-finite value for any non-finite entry;
        # a state's value came from it too when the optimizer line-searched with it
        if own_vg is not None and (fused or not reuses_state(opt_state)):
            return jnp.isfinite(value)
        return jnp.isfinite(value) & all_finite(grad) & all_finite(params)

    def init(params) -> LoopState:
        v0, g0 = vg(params)
        opt_state = tx.init(params)
        stat0 = stationarity(project, params, g0) if use_tol else jnp.zeros((), v0.dtype)
        ok = finite(v0, g0, params, opt_state)
        zero = jnp.zeros((), int)  # strongly typed, as after a step: one signature for a carry
        status = _status(ok, stat0, tol).astype(int)
        return LoopState(params, opt_state, v0, g0, stat0, zero, status)

    def attempt(s: LoopState) -> LoopState:
        updates, new_state = tx.update(
            s.grad, s.opt_state, s.params, value=s.value, grad=s.grad, value_fn=f, **fused
        )
        new = optax.apply_updates(s.params, updates)
        if project is not None:
            new = project(new)
        if reuses_state(new_state):
            new_value, new_grad = vg_from_state(new, state=new_state)
        else:
            new_value, new_grad = vg(new)
        ok = finite(new_value, new_grad, new, new_state)
        new_stat = stationarity(project, new, new_grad) if use_tol else s.stationarity
        steps = s.steps + jnp.ones((), s.steps.dtype)
        return LoopState(new, new_state, new_value, new_grad, new_stat, steps,
                         _status(ok, new_stat, tol).astype(s.status.dtype))  # fmt: skip

    def step(s: LoopState, active: Array | bool = True) -> LoopState:
        n = attempt(s)
        take = (n.status != int(RESULTS.nonfinite)) & active
        keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(take, x, y), a, b)  # noqa: E731
        return LoopState(
            keep(n.params, s.params),
            keep(n.opt_state, s.opt_state),
            jnp.where(take, n.value, s.value),
            keep(n.grad, s.grad),
            jnp.where(take, n.stationarity, s.stationarity),
            s.steps + take.astype(s.steps.dtype),
            jnp.where(active, n.status, s.status),
        )

    def measure(s: LoopState) -> Array:
        return s.stationarity if use_tol else stationarity(project, s.params, s.grad)

    def record(s: LoopState) -> dict[str, Array]:
        row = {"step": s.steps, "objective": s.value, "grad_norm": measure(s)}
        if metrics and hasattr(model, "metrics"):
            row.update(model.metrics(s.params))
        return row

    return Loop(init, step, measure, record, attempt)


class History(NamedTuple):
    """The rows recorded so far of one run (or a batch of runs, with leading batch axes ``...``).

    rows: name -> (..., T, *shape): `Loop.record` at steps 0, record_every, 2 record_every, ...
      and at the last step; rows not (yet) recorded are NaN (step -1).
    next: (...) int, the index of the next row to record (the row count when the run is done).
    """

    rows: dict[str, Array]
    next: Array


def history_rows(max_steps: int, record_every: int) -> int:
    """T = 1 + ceil(max_steps / record_every): the rows of a run's history."""
    return 1 + -(-max_steps // record_every)


def history_capacity(max_steps: int, record_every: int) -> int:
    """The smallest power of 2 >= `history_rows`: the static length of a compiled history, so
    that new budgets reuse one executable (the extra rows stay NaN and are trimmed)."""
    return 1 << (history_rows(max_steps, record_every) - 1).bit_length()


def start_history(record: Callable, state: LoopState, rows: int) -> History:
    """An empty history of `rows` rows (the capacity; a budget may use fewer) for the state of
    one run or of a batch of runs (``record`` acting on the whole batch)."""
    batch = state.steps.shape
    shapes = jax.eval_shape(record, state)
    empty = {
        k: jnp.full(batch + (rows,) + v.shape[len(batch) :], -1 if k == "step" else jnp.nan,
                    v.dtype)
        for k, v in shapes.items()
    }  # fmt: skip
    return History(empty, jnp.zeros(batch, jnp.int32))


def _write(rows: dict[str, Array], index: Array, due: Array, row: dict[str, Array]):
    """Row `index` of each run set to `row` where `due` (one run: in place; a batch: by mask)."""
    if index.ndim == 0:
        return {
            k: h.at[index].set(jnp.where(due, row[k], h[jnp.minimum(index, h.shape[0] - 1)]))
            for k, h in rows.items()
        }
    out = {}
    for k, h in rows.items():
        n = index.ndim
        rows_at = jnp.arange(h.shape[n]).reshape((1,) * n + (-1,))
        hit = (rows_at == index[..., None]) & due[..., None]
        hit = hit.reshape(hit.shape + (1,) * (h.ndim - n - 1))
        out[k] = jnp.where(hit, jnp.expand_dims(row[k], n), h)
    return out


def advance(
    loop,
    state: LoopState,
    history: History | None,
    stop: Array | int,
    max_steps: Array | int,
    record_every: Array | int,
) -> tuple[LoopState, History | None]:
    """Step one run, or a batch of runs, until each has taken `stop` steps or stopped (status
    other than ``max_steps``), recording its history rows on the way.

    Row b holds ``record`` after min(b record_every, max_steps) steps, or at the step where the
    run stopped (its last row; later rows stay NaN). The budget, the record interval and `stop`
    may be traced: one compiled loop serves every budget, and a run can be advanced in segments
    (stop = 100, 200, ...) with results identical to one call.

    Every run steps by ``loop.attempt``, with no select per step (a select costs a quarter of a
    small run's step), until an event: a run reaches `stop` or a record point, converges, or
    fails. A run that converged is then frozen: its state is kept aside and it goes on stepping
    unseen. A run that failed is frozen at its last finite iterate by stepping every run again
    from the previous event, the same steps with the same numbers, up to that iterate: only a
    run that fails costs steps twice, and where events fall (segments, record points) never
    changes a result. One loop body, so one copy of the optimizer's code to compile.

    Args:
      loop: a `Loop`, or an object with its ``attempt`` and ``record`` acting on a whole batch.
      state: the runs' state; a batch has leading axes on every leaf (``state.steps.shape``).
      history: from `start_history`, or None to record nothing.
      stop: step count at which to pause (<= max_steps).
      max_steps: the step budget (the last row is recorded there).
      record_every: steps between rows.

    Returns:
      (state, history).
    """
    going, failed = int(RESULTS.max_steps), int(RESULTS.nonfinite)
    record = loop.record

    def running(s, limit):
        return (s.steps < limit) & (s.status == going)

    def steps_to(s, limit):
        # Every run steps by unguarded attempts, no select per step, until an event: a run
        # reaches `limit`, its last good step, or stops (converged or failed). A run that failed
        # is given its last good step and every run goes back to the last event's state (the
        # same steps again, the same numbers); any other run at an event is frozen (its state
        # kept aside; it goes on stepping unseen). The state at the last event is kept too.
        never = jnp.full(s.steps.shape, jnp.iinfo(s.steps.dtype).max, s.steps.dtype)

        def per_run(mask, a, b):
            return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b)

        def ends(s, stopped, last):
            return ~stopped & ((s.steps >= jnp.minimum(limit, last)) | (s.status != going))

        def stretch(t):
            s, back, frozen, stopped, last = t
            s = jax.lax.while_loop(lambda s: ~jnp.any(ends(s, stopped, last)), loop.attempt, s)
            bad = ~stopped & (s.status == failed)
            again = jnp.any(bad)
            ended = ends(s, stopped, last) & ~again
            mark = s._replace(status=jnp.where(s.steps >= last, failed, s.status))
            frozen = jax.tree.map(lambda a, b: per_run(ended, a, b), mark, frozen)
            last = jnp.where(bad, s.steps - 1, last)
            s = jax.tree.map(lambda a, b: jnp.where(again, a, b), back, s)
            return s, s, frozen, stopped | ended, last

        stopped = ~running(s, limit)
        t = jax.lax.while_loop(lambda t: ~jnp.all(t[3]), stretch, (s, s, s, stopped, never))
        return jax.tree.map(lambda a, b: per_run(t[3], a, b), t[2], t[0])

    if history is None:
        return steps_to(state, stop), None
    n_rows = 1 + (max_steps + record_every - 1) // record_every

    def due(s, h):
        target = jnp.minimum(h.next * record_every, max_steps)
        return (h.next < n_rows) & ((s.steps >= target) | (s.status != going))

    def pending(t):
        s, h = t
        return jnp.any(due(s, h) | ((h.next < n_rows) & running(s, stop)))

    def phase(t):
        s, h = t
        s = steps_to(s, jnp.minimum(jnp.minimum(h.next * record_every, max_steps), stop))
        now = due(s, h)
        rows = _write(h.rows, h.next, now, record(s))
        after = jnp.where(s.status == going, h.next + 1, n_rows)
        return s, History(rows, jnp.where(now, after, h.next).astype(h.next.dtype))

    return jax.lax.while_loop(pending, phase, (state, history))


def iterate(
    loop: Loop,
    state: LoopState,
    max_steps: Array | int,
    record_every: Array | int,
    rows: int | None = None,
) -> tuple[LoopState, dict[str, Array]]:
    """Step one run until ``max_steps`` steps or a status other than ``max_steps``, recording
    `Loop.record` at steps 0, record_every, 2 record_every, ... and at the last step (`advance`).

    The record (and ``model.metrics``) is traced once, so it compiles once.

    Args:
      loop: from `build`.
      state: the starting state, ``loop.init(params)``.
      max_steps: the step budget (>= 1; may be traced).
      record_every: steps between records (>= 1; may be traced).
      rows: the history's length T (static); default (for Python ints)
        ``history_rows(max_steps, record_every)``. A larger T leaves the extra rows NaN.

    Returns:
      (final state, history): history maps each record key to a (T,) array; rows after an
      early stop are NaN (step -1).
    """
    if rows is None:
        rows = history_rows(max_steps, record_every)
    history = start_history(loop.record, state, rows)
    state, history = advance(loop, state, history, max_steps, max_steps, record_every)
    return state, history.rows
