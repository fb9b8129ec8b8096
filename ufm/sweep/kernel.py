"""The compiled pieces of a chunk of a sweep: `start` (each run's start and loop state), `advance`
(every run stepped up to a given step count through the loop of `ufm.loop`, recording its
history) and `finish` (final values and metrics). Every device runs its shard of the runs, in
groups stepped together in one vmapped loop.

The step budget, the record interval and the pause point are traced arguments, so one `advance`
serves every budget, and the host can drive a chunk in segments (progress, checkpoints) with
results identical to one call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ufm._static import Static
from ufm.loop import Loop, LoopState, advance, build, start_history
from ufm.runtime import compile_soon, once_options

__all__ = [
    "RUN_AXIS",
    "Config",
    "compiled_start",
    "compiled_advance",
    "compiled_finish",
    "prepare",
    "finished",
]

RUN_AXIS = "runs"  # the mesh axis the runs are sharded over


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that changes the compiled code (hashable: the key of the compilation caches).
    Equal optimizers built twice are equal here (`ufm._static.Static`)."""

    treedef: Any
    optimizer: Static  # a GradientTransformation, or a factory of one (is_factory)
    is_factory: bool
    hparam_names: tuple[str, ...]
    rows: int  # history rows kept per run (a capacity; 0: no history)
    use_tol: bool
    keep_params: bool
    group: int
    vmap_init: bool
    mesh: Mesh


class _Group:
    """One group's runs and their loops: each method acts on every run of the group (vmapped,
    or directly on a single run's arrays)."""

    def __init__(self, cfg: Config, tol, leaves, hparams):
        self.cfg, self.tol, self.leaves, self.hparams = cfg, tol, leaves, hparams
        self.single = cfg.group == 1
        self.batched = (lambda f: f) if self.single else jax.vmap

    def model_loop(self, lv, hp) -> tuple[Any, Loop]:
        """One run's model and loop, from its leaves and optimizer hyperparameters."""
        model = jax.tree_util.tree_unflatten(self.cfg.treedef, lv)
        opt = self.cfg.optimizer.value
        return model, build(model, opt(**hp) if self.cfg.is_factory else opt, tol=self.tol)

    def start(self, seeds) -> LoopState:
        def init(lv, seed):
            return jax.tree_util.tree_unflatten(self.cfg.treedef, lv).init(jax.random.key(seed))

        if not self.single and not self.cfg.vmap_init:  # the batched PRNG compiles slowly on CPU
            params0 = jax.lax.map(lambda a: init(*a), (self.leaves, seeds))
        else:
            params0 = self.batched(init)(self.leaves, seeds)
        start = lambda lv, hp, p: self.model_loop(lv, hp)[1].init(p)  # noqa: E731
        return self.batched(start)(self.leaves, self.hparams, params0)

    def attempt(self, s: LoopState) -> LoopState:
        attempt = lambda lv, hp, s: self.model_loop(lv, hp)[1].attempt(s)  # noqa: E731
        return self.batched(attempt)(self.leaves, self.hparams, s)

    def record(self, s: LoopState) -> dict[str, jax.Array]:
        rec = lambda lv, hp, s: self.model_loop(lv, hp)[1].record(s)  # noqa: E731
        return self.batched(rec)(self.leaves, self.hparams, s)

    def final(self, s: LoopState, last_row) -> dict[str, jax.Array]:
        """Objective, stationarity, steps, status and metrics of each run; the metrics are
        read from the last history row when there is one, else computed here."""

        def one(lv, hp, s, row):
            model, loop = self.model_loop(lv, hp)
            res = {"objective": s.value, "grad_norm": loop.stationarity(s)}
            res.update(steps_taken=s.steps, status=s.status)
            if hasattr(model, "metrics"):
                metrics = model.metrics(s.params) if row is None else row
                keys = jax.eval_shape(model.metrics, s.params)
                res.update({f"metrics/{k}": metrics[k] for k in keys})
            return res

        return self.batched(one)(self.leaves, self.hparams, s, last_row)


def _by_group(cfg: Config, body: Callable, *per_run):
    """``body(*group_args)`` for each group of ``cfg.group`` runs of a device's (R_local, ...)
    arrays, one group after another (`lax.map`); a group of one run is traced without its run
    axis (a plain loop over one run's arrays, which compiles and runs fastest on CPU)."""
    local = jax.tree.leaves(per_run)[0].shape[0]
    g = cfg.group
    n_groups = local // g
    grouped = jax.tree.map(lambda x: x.reshape((n_groups, g) + x.shape[1:]), per_run)

    def one(args):
        if g == 1:
            args = jax.tree.map(lambda x: x[0], args)
        out = body(*args)
        return jax.tree.map(lambda x: x[None], out) if g == 1 else out

    if n_groups == 1:
        out = one(jax.tree.map(lambda x: x[0], grouped))
        return jax.tree.map(lambda x: x.reshape((local,) + x.shape[1:]), out)
    out = jax.lax.map(one, grouped)
    return jax.tree.map(lambda x: x.reshape((local,) + x.shape[2:]), out)


def _start_body(cfg: Config, leaves, hparams, seeds, *tol):
    """Each run's loop state at its start, and its empty history (``cfg.rows`` rows)."""

    def body(lv, hp, seed):
        group = _Group(cfg, tol[0] if tol else None, lv, hp)
        s = group.start(seed)
        history = start_history(group.record, s, cfg.rows) if cfg.rows else None
        return {"state": s, "history": history}

    return _by_group(cfg, body, leaves, hparams, seeds)


def _advance_body(cfg: Config, leaves, hparams, carry, stop, max_steps, record_every, *tol):
    """Every run stepped until it has taken `stop` steps or stopped (`ufm.loop.advance`)."""

    def body(lv, hp, c):
        group = _Group(cfg, tol[0] if tol else None, lv, hp)
        s, history = advance(group, c["state"], c["history"], stop, max_steps, record_every)
        return {"state": s, "history": history}

    return _by_group(cfg, body, leaves, hparams, carry)


def _finish_body(cfg: Config, leaves, hparams, carry, *tol):
    """Final values (and history, and parameters if kept) of every run."""

    def body(lv, hp, c):
        group = _Group(cfg, tol[0] if tol else None, lv, hp)
        s, history = c["state"], c["history"]
        last_row = None
        out = {}
        if history is not None:
            out.update({f"history/{k}": v for k, v in history.rows.items()})
            step = history.rows["step"]  # (..., T): -1 where not recorded
            last = jnp.max(jnp.where(step >= 0, jnp.arange(step.shape[-1]), 0), axis=-1)
            last_row = jax.tree.map(
                lambda v: jnp.take_along_axis(
                    v, last.reshape(last.shape + (1,) * (v.ndim - last.ndim)), axis=last.ndim
                ).squeeze(last.ndim),
                history.rows,
            )
        out.update(group.final(s, last_row))
        if cfg.keep_params:
            out["params"] = s.params
        return out

    return _by_group(cfg, body, leaves, hparams, carry)


def _sharded(cfg: Config, body: Callable, n_per_run: int, n_shared: int, **jit_kwargs):
    """jit(shard_map(body)): each device runs its shard of the runs with no communication;
    the first `n_per_run` arguments are per run (sharded), the next `n_shared` replicated, and
    a tolerance last iff ``cfg.use_tol``."""
    spec = P(RUN_AXIS)
    specs = (spec,) * n_per_run + (P(),) * (n_shared + cfg.use_tol)
    fn = jax.shard_map(
        functools.partial(body, cfg), mesh=cfg.mesh, in_specs=specs, out_specs=spec,
        check_vma=False,
    )  # fmt: skip
    return jax.jit(fn, **jit_kwargs)


@functools.lru_cache(maxsize=64)
def compiled_start(cfg: Config):
    """``fn(leaves, hparams, seeds, *tol) -> carry`` (`tol` iff ``cfg.use_tol``). It runs once
    per run: compiled with `ufm.runtime.once_options` (for random numbers)."""
    return _sharded(cfg, _start_body, 3, 0, compiler_options=_once(cfg, random=True))


@functools.lru_cache(maxsize=64)
def compiled_advance(cfg: Config):
    """``fn(leaves, hparams, carry, stop, max_steps, record_every, *tol) -> carry``; the carry
    is donated (the new one takes its memory)."""
    return _sharded(cfg, _advance_body, 3, 3, donate_argnums=(2,))


def _once(cfg: Config, random: bool) -> dict | None:
    """`ufm.runtime.once_options` for the platform of `cfg`'s devices."""
    return once_options(cfg.mesh.devices.flat[0].platform, random)


@functools.lru_cache(maxsize=64)
def compiled_finish(cfg: Config):
    """``fn(leaves, hparams, carry, *tol) -> outputs``. It runs once per run: compiled with
    `ufm.runtime.once_options`."""
    return _sharded(cfg, _finish_body, 3, 0, compiler_options=_once(cfg, random=False))


_PREPARED: dict[Any, int | None] = {}  # (configuration, call size) -> bytes per advance call
_FINISHING: dict[Any, Future] = {}  # (configuration, call size) -> `finish` compiling


def prepare(cfg: Config, args: tuple, seeds, scalars: tuple, tol: tuple, runs) -> int | None:
    """Compile `advance`, `start` and `finish` for one configuration and call size, unless done
    before, each as soon as it is lowered (`ufm.runtime.compile_soon`): `advance` compiles while
    the others are traced and lowered, and `finish` goes on compiling after the first steps have
    begun (`finished` waits for it). Returns the bytes one `advance` call needs on a device
    (arguments, outputs, temporaries, as XLA reports it; None where the backend does not say).

    Args:
      cfg: the configuration.
      args: (leaves, hparams), per-run global arrays; seeds: (R,) per-run seeds.
      scalars: (stop, max_steps, record_every) replicated; tol: () or (tol,).
      runs: the sharding of a per-run array (the carry's too).
    """
    key = (cfg, seeds.shape[0])
    if key not in _PREPARED:
        start, step, finish = compiled_start(cfg), compiled_advance(cfg), compiled_finish(cfg)
        shapes = jax.eval_shape(start, *args, seeds, *tol)
        carry = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=runs, weak_type=x.weak_type),
            shapes,
        )
        loop = compile_soon(step.lower(*args, carry, *scalars, *tol))
        first = compile_soon(start.lower(*args, seeds, *tol))
        _FINISHING[key] = compile_soon(finish.lower(*args, carry, *tol))
        loop, _ = loop.result(), first.result()
        try:
            m = loop.memory_analysis()
            total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            total -= m.alias_size_in_bytes  # outputs written over donated arguments
            _PREPARED[key] = int(total)
        except Exception:  # noqa: BLE001 - a report, never a failure
            _PREPARED[key] = None
    return _PREPARED[key]


def finished(cfg: Config, seeds) -> Callable:
    """`compiled_finish` once its background compilation (`prepare`) is done."""
    compiling = _FINISHING.pop((cfg, seeds.shape[0]), None)
    if compiling is not None:
        compiling.result()
    return compiled_finish(cfg)
