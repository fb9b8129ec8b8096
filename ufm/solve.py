"""Solve one model: run any optax optimizer on its objective to a stationary point in one compiled
call (the loop of `ufm.loop`), recording statistics every k steps, and report how the run ended."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from ufm._static import Static
from ufm.loop import RESULTS, build, history_capacity, history_rows, iterate
from ufm.models._base import check_int
from ufm.optimizers import lbfgs
from ufm.runtime import compile_soon, once_options

__all__ = [
    "Result",
    "SolveError",
    "solve",
    "run",
    "default_optimizer",
    "RESULTS",
    "CONVERGED",
    "MAX_STEPS",
    "NONFINITE",
]

CONVERGED, MAX_STEPS, NONFINITE = (int(r) for r in RESULTS)


class Result(NamedTuple):
    """The outcome of one run (a pytree: a batch of runs is a Result of stacked arrays).

    params: final parameters (the last finite iterate if the run diverged).
    objective: final objective value.
    grad_norm: final stationarity measure ||P(x - g) - x|| (= ||g|| without constraints).
    steps: optimizer steps taken.
    status: a `ufm.loop.RESULTS` code: converged (stationarity <= tol), max_steps, or nonfinite
      (frozen at its last finite iterate).
    history: name -> (T,) array recorded at step 0, record_every, 2 record_every, ... and at the
      last step; rows after an early stop are NaN (and step = -1).
    """

    params: Any
    objective: Array
    grad_norm: Array
    steps: Array
    status: Array
    history: dict[str, Array]

    @property
    def status_name(self) -> str:
        """'converged', 'max_steps' or 'nonfinite' (a single run)."""
        return RESULTS(int(self.status)).name

    @property
    def message(self) -> str:
        """How the run ended and what to change (a single run)."""
        return RESULTS(int(self.status)).message


class SolveError(RuntimeError):
    """Raised by ``solve(..., throw=True)`` when a run did not converge; ``.result`` holds it."""

    def __init__(self, message: str, result: Result):
        super().__init__(message)
        self.result = result


def default_optimizer() -> optax.GradientTransformationExtraArgs:
    """`ufm.optimizers.lbfgs`: L-BFGS (memory 10) with a bounded backtracking line search on the
    fused value and gradient. On the smooth UFM objectives it reaches relative gaps ~1e-15 in
    float64 within a few hundred steps, and it vmaps well (no branches per run). Equal optimizers
    share one compiled loop, so a new object per call costs nothing."""
    return lbfgs()


def optimizer_for(model) -> optax.GradientTransformation:
    """The optimizer a model runs with when none is given: ``model.default_optimizer()`` where
    the model defines it (constrained models: projected gradient), else `default_optimizer()`."""
    own = getattr(model, "default_optimizer", None)
    return default_optimizer() if own is None else own()


def run(
    model,
    params0,
    optimizer: optax.GradientTransformation,
    steps: Array | int,
    record_every: Array | int,
    tol: Array | float | None = None,
    *,
    metrics: bool = True,
    rows: int | None = None,
) -> Result:
    """The pure, traceable body of `solve` (vmap it over models or starts; `solve` jits it).

    The loop of ``ufm.loop.build(model, optimizer, tol=tol, metrics=metrics)`` driven by
    `ufm.loop.iterate`: it stops at `steps`, at stationarity <= tol, or at the first non-finite
    value (then the previous iterate is kept). Metrics are evaluated only at record points.
    ``tol=None`` (static) skips the stopping test, and with it the per-step stationarity measure;
    ``metrics=False`` (static) records no ``model.metrics``. `steps` and `record_every` may be
    traced when `rows` (static, the history's length, >= 1 + ceil(steps / record_every); extra
    rows stay NaN) is given.
    """
    loop = build(model, optimizer, tol=tol, metrics=metrics)
    state, history = iterate(loop, loop.init(params0), steps, record_every, rows)
    return Result(
        state.params,
        state.value,
        loop.stationarity(state),
        state.steps,
        state.status,
        history,
    )


def check_steps(steps, record_every) -> tuple[int, int]:
    """(steps, record_every) checked (integers >= 1) with record_every None -> steps and capped
    at steps; ValueError naming the parameter otherwise."""
    steps = check_int("steps", steps, 1)
    record_every = steps if record_every is None else check_int("record_every", record_every, 1)
    return steps, min(record_every, steps)


def check_tol(tol) -> float | None:
    """A finite tolerance > 0 as a float, or None (no stopping test); ValueError otherwise."""
    if tol is None:
        return None
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise ValueError(f"tol must be a finite number > 0 or None, got tol={tol!r}") from None
    if not 0 < tol < float("inf"):
        raise ValueError(f"tol must be a finite number > 0 or None, got tol={tol!r}")
    return tol


def _shapes(tree) -> str:
    return str(jax.tree.map(lambda x: tuple(x.shape), tree))


def _check_init(model, key, init) -> None:
    """ValueError naming `init` unless it has the structure and shapes of ``model.init(key)``."""
    expected = jax.eval_shape(model.init, key)
    try:
        given = jax.eval_shape(lambda: init)
    except TypeError as e:
        raise ValueError(
            f"init must be a pytree of arrays like model.init(key), got: {e}"
        ) from None
    same = jax.tree.structure(given) == jax.tree.structure(expected) and all(
        a.shape == b.shape
        for a, b in zip(jax.tree.leaves(given), jax.tree.leaves(expected), strict=True)
    )
    if not same:
        raise ValueError(
            f"init must have the structure and shapes of model.init(key): expected "
            f"{_shapes(expected)}, got init with {_shapes(given)}"
        )


def solve(
    model,
    key: Array,
    steps: int = 500,
    optimizer: optax.GradientTransformation | None = None,
    record_every: int | None = None,
    tol: float | None = None,
    init=None,
    *,
    metrics: bool = True,
    throw: bool = False,
) -> Result:
    """Minimise ``model.objective`` from ``model.init(key)`` (or from `init`) in one compiled call.

    Args:
      model: any ufm model (a pytree with ``objective``, ``init`` and optionally ``metrics``,
        ``project``, ``value_and_grad``, ``default_optimizer``).
      key: PRNG key for the initialisation.
      steps: the step budget: at most this many optimizer steps (>= 1).
      optimizer: any optax GradientTransformation, including line-search ones that need the
        value and gradient (L-BFGS). Default: ``model.default_optimizer()`` where the model
        defines it, else `default_optimizer()`.
      record_every: record objective, stationarity and ``model.metrics`` every this many steps
        (default: only at the start and the end).
      tol: stop once the stationarity measure is <= tol (status ``converged``). None (default):
        no stopping test, every step is taken.
      init: starting parameters instead of ``model.init(key)`` (same structure and shapes).
      metrics: record ``model.metrics`` in the history (False: step, objective and grad_norm
        only, and the metrics are not compiled).
      throw: how a run that did not converge is reported. False (default): never raise; the
        `Result` carries the status (``Result.status_name``, ``Result.message``), as a sweep
        does for each of its runs. True: raise `SolveError` (a RuntimeError, its ``.result``
        the Result) with the status message when the run ended ``nonfinite``, or
        ``max_steps`` although a `tol` was given.

    Returns:
      A `Result`.
    """
    steps, record_every = check_steps(steps, record_every)
    tol = check_tol(tol)
    for name, flag in (("metrics", metrics), ("throw", throw)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {name}={flag!r}")
    if optimizer is None:
        optimizer = optimizer_for(model)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            f"optimizer must be an optax GradientTransformation, got optimizer={optimizer!r}"
        )
    if init is not None:
        _check_init(model, key, init)
    needed, rows = history_rows(steps, record_every), history_capacity(steps, record_every)
    split = metrics and needed == 2 and hasattr(model, "metrics")
    kw = dict(optimizer=Static(optimizer), metrics=metrics and not split, rows=rows)
    start, metric_rows = _once(jax.default_backend())
    _prepare(model, key, init, (steps, record_every, tol), kw, split)
    params0 = start(model, key) if init is None else init
    res = _solve_jit(model, params0, steps, record_every, tol, **kw)
    if split:  # the two rows' metrics, from their own executable
        res = res._replace(history={**res.history, **metric_rows(model, params0, res)})
    if rows > needed:  # trimmed on the host: slicing on the device would compile per length
        res = res._replace(history={k: jax.device_put(np.asarray(v)[:needed])
                                    for k, v in res.history.items()})  # fmt: skip
    if throw:
        status = RESULTS(int(res.status))
        if status == RESULTS.nonfinite or (status == RESULTS.max_steps and tol is not None):
            raise SolveError(f"solve did not converge after {int(res.steps)} steps: "
                             f"{status.message}", res)  # fmt: skip
    return res


@functools.partial(jax.jit, static_argnames=("optimizer", "metrics", "rows"))
def _solve_jit(model, params0, steps, record_every, tol, *, optimizer, metrics, rows):
    """The loop of a solve and its records, from `params0`. The budget and record interval are
    traced (a new budget reuses it), the optimizer is keyed by what it computes
    (`ufm._static.Static`)."""
    return run(model, params0, optimizer.value, steps, record_every, tol, metrics=metrics,
               rows=rows)  # fmt: skip


def _rows_body(model, params0, res: Result) -> dict[str, Array]:
    """``model.metrics`` at the start and at the end, as two history rows (the second NaN when
    the run recorded no second row: it stopped at its start)."""
    first, last = model.metrics(params0), model.metrics(res.params)
    done = res.history["step"][1] >= 0
    return {k: jnp.stack([first[k], jnp.where(done, last[k], jnp.nan)]) for k in first}


@functools.cache
def _once(platform: str) -> tuple:
    """(start, metric rows): the jitted ``model.init(key)`` and `_rows_body`, which run once per
    solve, compiled with `ufm.runtime.once_options`."""
    init = lambda model, key: model.init(key)  # noqa: E731
    start = jax.jit(init, compiler_options=once_options(platform, random=True))
    return start, jax.jit(_rows_body, compiler_options=once_options(platform, random=False))


_PREPARED: set = set()  # signatures whose executables are compiled


def _prepare(model, key, init, traced: tuple, kw: dict, split: bool) -> None:
    """The first time a signature is seen, compile its executables (the loop, the start unless
    `init` is given, the metric rows when `split`), each as soon as it is lowered
    (`ufm.runtime.compile_soon`: the loop compiles while the others are traced)."""
    avals = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), (model, key, init))
    signature = (jax.tree.structure((model, init)), str(avals), traced[2] is None, split,
                 *sorted(kw.items()))  # fmt: skip
    if signature in _PREPARED:
        return
    start, metric_rows = _once(jax.default_backend())
    params0 = jax.eval_shape(model.init, key) if init is None else init
    compiling = [compile_soon(_solve_jit.lower(model, params0, *traced, **kw))]
    if init is None:
        compiling.append(compile_soon(start.lower(model, key)))
    if split:
        res = jax.eval_shape(functools.partial(_solve_jit, **kw), model, params0, *traced)
        compiling.append(compile_soon(metric_rows.lower(model, params0, res)))
    for c in compiling:
        c.result()
    _PREPARED.add(signature)
