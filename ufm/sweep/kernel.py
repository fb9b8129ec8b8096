"""The compiled chunk of a sweep: every device runs its shard of the runs, in groups stepped
together through the loop of `ufm.loop` (init, guarded steps, records), with progress reported
between segments of steps, and the final metrics in a second executable."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ufm.loop import RESULTS, Loop, LoopState, build
from ufm.sweep.progress import report

__all__ = ["RUN_AXIS", "Static", "compiled_chunk", "compiled_metrics", "call_memory"]

RUN_AXIS = "runs"  # the mesh axis the runs are sharded over
_REPORTS_PER_CHUNK = 50  # progress callbacks per chunk (each costs a few microseconds)
_GOING = int(RESULTS.max_steps)


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything that changes the compiled code (hashable: the key of the compilation cache)."""

    treedef: Any
    optimizer: Any
    is_factory: bool
    hparam_names: tuple[str, ...]
    max_steps: int
    record_every: int | None
    use_tol: bool
    keep_params: bool
    group: int
    vmap_init: bool
    progress: bool  # host callbacks make a CPU call synchronous: compiled in only when asked
    split_metrics: bool  # final metrics in a second executable (no history kept)
    mesh: Mesh


def _chunk_body(st: Static, leaves, hparams, seeds, token, *tol):
    """The runs of one device's shard: (R_local, ...) inputs -> dict of (R_local, ...) outputs.

    The runs are split into groups of ``st.group`` runs stepped together in one vmapped loop;
    the groups run one after another (`lax.map`). One run per group (the CPU default) keeps a
    run's arrays in cache and uses unbatched matrix products. `tol` is given iff ``use_tol``.
    """
    local = seeds.shape[0]
    g = st.group
    n_groups = local // g
    grouped = jax.tree.map(
        lambda x: x.reshape((n_groups, g) + x.shape[1:]), (leaves, hparams, seeds)
    )
    fn = functools.partial(_group_body, st, tol[0] if tol else None, token, n_groups)
    if n_groups == 1:
        out = fn((0, jax.tree.map(lambda x: x[0], grouped)))
        return jax.tree.map(lambda x: x.reshape((local,) + x.shape[1:]), out)
    out = jax.lax.map(fn, (jnp.arange(n_groups), grouped))
    return jax.tree.map(lambda x: x.reshape((local,) + x.shape[2:]), out)


class _Group:
    """One group's runs and their loops: each method acts on every run of the group (vmapped,
    or directly on a single run's arrays)."""

    def __init__(self, st: Static, tol, leaves, hparams):
        self.st, self.tol, self.leaves, self.hparams = st, tol, leaves, hparams
        self.single = st.group == 1
        self.batched = (lambda f: f) if self.single else jax.vmap

    def model_loop(self, lv, hp) -> tuple[Any, Loop]:
        """One run's model and loop, from its leaves and optimizer hyperparameters."""
        model = jax.tree_util.tree_unflatten(self.st.treedef, lv)
        tx = self.st.optimizer(**hp) if self.st.is_factory else self.st.optimizer
        return model, build(model, tx, tol=self.tol)

    def start(self, seeds) -> LoopState:
        def init(lv, seed):
            return jax.tree_util.tree_unflatten(self.st.treedef, lv).init(jax.random.key(seed))

        if not self.single and not self.st.vmap_init:  # the batched PRNG compiles slowly on CPU
            params0 = jax.lax.map(lambda a: init(*a), (self.leaves, seeds))
        else:
            params0 = self.batched(init)(self.leaves, seeds)
        start = lambda lv, hp, p: self.model_loop(lv, hp)[1].init(p)  # noqa: E731
        return self.batched(start)(self.leaves, self.hparams, params0)

    def step(self, s: LoopState, active) -> LoopState:
        step = lambda lv, hp, s, a: self.model_loop(lv, hp)[1].step(s, a)  # noqa: E731
        return self.batched(step)(self.leaves, self.hparams, s, active)

    def running(self, s: LoopState, stop) -> jax.Array:
        return (s.steps < stop) & (s.status == _GOING)

    def record(self, s: LoopState) -> dict[str, jax.Array]:
        rec = lambda lv, hp, s: self.model_loop(lv, hp)[1].record(s)  # noqa: E731
        return self.batched(rec)(self.leaves, self.hparams, s)

    def final(self, s: LoopState, last_row) -> dict[str, jax.Array]:
        """Objective, stationarity, steps, status and (unless split off) metrics of each run;
        the metrics are read from the last history row when there is one."""

        def one(lv, hp, s, row):
            model, loop = self.model_loop(lv, hp)
            res = {"objective": s.value, "grad_norm": loop.stationarity(s)}
            res.update(steps_taken=s.steps, status=s.status)
            if hasattr(model, "metrics") and not self.st.split_metrics:
                metrics = model.metrics(s.params) if row is None else row
                keys = jax.eval_shape(model.metrics, s.params)
                res.update({f"metrics/{k}": metrics[k] for k in keys})
            return res

        return self.batched(one)(self.leaves, self.hparams, s, last_row)


class _Reporter:
    """Progress from inside the loop: about ``_REPORTS_PER_CHUNK`` host callbacks per chunk (a
    callback costs ~0.2 ms), each the run-steps taken since the last, sent between segments of
    `every` steps (never a callback or a branch per step); with many short groups, only every
    `stride`-th group reports at its end, for itself and the groups before it (the host makes
    the count exact when the chunk is done)."""

    def __init__(self, st: Static, token, n_groups: int):
        self.on, self.token = st.progress, token
        self.every = -(-st.max_steps * n_groups // _REPORTS_PER_CHUNK) if self.on else None
        self.stride = max(1, n_groups // _REPORTS_PER_CHUNK)
        self.count = jnp.result_type(int)

    def tell(self, steps, done, times=1):
        """Report the steps taken since `done` (times `times`); returns the new total."""
        now = jnp.sum(steps.astype(self.count))
        jax.debug.callback(report, self.token, (now - done) * times)
        return now

    def at_end(self, index, steps, done) -> None:
        if self.on and self.stride == 1:
            self.tell(steps, done)
        elif self.on:
            last = (index + 1) % self.stride == 0
            jax.lax.cond(
                last, lambda i, d: self.tell(i, d, self.stride), lambda i, d: d, steps, done
            )


def _advance(group: _Group, rep: _Reporter, s: LoopState, stop, done, max_steps: int):
    """Step every run of the group until it reaches `stop` steps or stops (converged or
    non-finite), reporting progress between segments; returns (state, steps reported)."""

    def steps(s, limit):
        def body(t):
            s, j = t  # a single run steps only while it runs: active is then constant
            return group.step(s, True if group.single else group.running(s, stop)), j + 1

        cond = lambda t: (t[1] < limit) & jnp.any(group.running(t[0], stop))  # noqa: E731
        return jax.lax.while_loop(cond, body, (s, 0))[0]

    if rep.every is None or rep.every >= max_steps:  # reports only when a group finishes
        return steps(s, max_steps), done

    def segment(t):
        s, done = t
        s = steps(s, rep.every)
        due = jnp.sum(s.steps.astype(rep.count)) - done >= rep.every
        return s, jax.lax.cond(due, rep.tell, lambda i, done: done, s.steps, done)

    return jax.lax.while_loop(lambda t: jnp.any(group.running(t[0], stop)), segment, (s, done))


def _with_history(group: _Group, rep: _Reporter, s: LoopState, done, st: Static):
    """Advance to the budget through record blocks (row b after step b * record_every, as in
    `ufm.solve`: one record site, so the metrics compile once).

    Returns:
      (state, done, history, last row): history key -> (..., T); the last row holds each
      run's final record (its last filled row).
    """
    T = 1 + -(-st.max_steps // st.record_every)
    rows = jax.eval_shape(group.record, s)
    hist0 = {
        k: jnp.full(v.shape + (T,), -1 if k == "step" else jnp.nan, v.dtype)
        for k, v in rows.items()
    }

    def block(t):
        s, b, hist, done = t
        was_running = (s.status == _GOING) | (b == 0)
        s, done = _advance(
            group, rep, s, jnp.minimum(b * st.record_every, st.max_steps), done, st.max_steps
        )
        row = group.record(s)
        hist = {
            k: h.at[..., b].set(jnp.where(was_running, row[k], h[..., b])) for k, h in hist.items()
        }
        return s, b + 1, hist, done

    s, _, hist, done = jax.lax.while_loop(
        lambda t: (t[1] < T) & ((t[1] == 0) | jnp.any(t[0].status == _GOING)),
        block,
        (s, 0, hist0, done),
    )
    last = jnp.max(jnp.where(hist["step"] >= 0, jnp.arange(T), 0), axis=-1)
    last_row = {
        k: jnp.take_along_axis(v, last[..., None], axis=-1)[..., 0] for k, v in hist.items()
    }
    return s, done, hist, last_row


def _group_body(st: Static, tol, token, n_groups, indexed_args):
    """One group of runs, from their start to their final values (and history).

    A group of one run is traced without its run axis (a plain loop over one run's arrays,
    which compiles and runs fastest); larger groups are vmapped inside the loops, so that the
    loops and the progress reports stay at the level of the whole group.
    """
    index, args = indexed_args
    if st.group == 1:
        args = jax.tree.map(lambda x: x[0], args)
    leaves, hparams, seeds = args
    group = _Group(st, tol, leaves, hparams)
    rep = _Reporter(st, token, n_groups)
    s = group.start(seeds)
    done = jnp.zeros((), rep.count)
    out = {}
    if st.record_every is None:
        s, done = _advance(group, rep, s, st.max_steps, done, st.max_steps)
        last_row = None
    else:
        s, done, hist, last_row = _with_history(group, rep, s, done, st)
        out.update({f"history/{k}": v for k, v in hist.items()})
    rep.at_end(index, s.steps, done)
    out.update(group.final(s, last_row))
    if st.keep_params or st.split_metrics:
        out["params"] = s.params
    if group.single:
        out = jax.tree.map(lambda x: x[None], out)
    return out


@functools.lru_cache(maxsize=64)
def compiled_chunk(st: Static):
    """jit(shard_map(body)) for one static configuration: every device runs its own shard of the
    runs with no communication (each has its own loop and stopping test). Called as
    ``fn(leaves, hparams, seeds, token, *tol)`` (`tol` iff ``st.use_tol``)."""
    spec = P(RUN_AXIS)
    fn = jax.shard_map(
        functools.partial(_chunk_body, st),
        mesh=st.mesh,
        in_specs=(spec, spec, spec, P()) + ((P(),) if st.use_tol else ()),
        out_specs=spec,
        check_vma=False,
    )
    return jax.jit(fn)


def _metrics_body(st: Static, leaves, params):
    """Final ``model.metrics`` of one device's runs (one by one on CPU, vmapped otherwise)."""

    def metrics(lv, p):
        m = jax.tree_util.tree_unflatten(st.treedef, lv).metrics(p)
        return {f"metrics/{k}": v for k, v in m.items()}

    if st.vmap_init:  # accelerators: one batched kernel per op
        return jax.vmap(metrics)(leaves, params)
    return jax.lax.map(lambda a: metrics(*a), (leaves, params))


@functools.lru_cache(maxsize=64)
def compiled_metrics(st: Static):
    """The final metrics as their own executable: called right after the loop is dispatched,
    it compiles while the loop runs (asynchronous dispatch), so a cold sweep pays for the larger
    of the two rather than their sum; they run once per run, so on CPU they are compiled without
    the expensive LLVM passes (half the compile time)."""
    spec = P(RUN_AXIS)
    fn = jax.shard_map(
        functools.partial(_metrics_body, st),
        mesh=st.mesh,
        in_specs=(spec, spec),
        out_specs=spec,
        check_vma=False,
    )
    cpu = st.mesh.devices.flat[0].platform == "cpu"
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0} if cpu else None)


_CALL_MEMORY: dict[Any, int | None] = {}  # (static configuration, call size) -> bytes


def call_memory(st: Static, fn, args, padded: int) -> int | None:
    """Bytes one compiled call needs on a device (arguments, outputs, temporaries), as XLA
    reports it (cached per configuration); None where the backend does not say."""
    key = (st, padded)
    if key not in _CALL_MEMORY:
        try:
            m = fn.lower(*args).compile().memory_analysis()
            total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            _CALL_MEMORY[key] = int(total)
        except Exception:  # noqa: BLE001 - a report, never a failure
            _CALL_MEMORY[key] = None
    return _CALL_MEMORY[key]
