"""Sweeps: every seed x every point of a hyperparameter grid in compiled, batched chunks of runs,
chunked to a memory budget, sharded over all devices (and hosts), checkpointed within chunks,
with progress, and saved in an open format.

    sw = ufm.sweep(ufm.UFM(K=10, d=64, n=50), grid={"lam_W": [1e-4, 1e-3], "learning_rate": 0.5},
                   seeds=8, steps=1000, optimizer=optax.sgd)
    sw.objective.shape == (2, 8)        # grid axes in order, then seed

How it is fast: a model is a pytree whose numeric hyperparameters are leaves, and the step
budget and record interval are arguments, so one compiled function serves every grid point and
budget; optimizers are keyed by what they compute (`ufm._static.Static`), so an equal optimizer
built anew (``optax.sgd(0.5)`` in every call) reuses it. The run axis of a chunk is split over
devices with a 1-D mesh; on each device the runs go through one loop over optimizer steps
(`ufm.loop`), vmapped over all of them on an accelerator, in groups whose states fit a
core's cache on CPU. The host drives a chunk in segments of steps (progress and
checkpoints between them, no host callback in the compiled loop).

The parts, in the order a call uses them: `plan` (arguments checked, grid laid out as per-run
inputs), `layout` (chunks, devices, groups), `checkpoint` (resume), `kernel` (the compiled
start, advance and finish of a chunk), `driver` (the segments of a chunk), `progress` (the
bar), `result` (the `Sweep`), `io` (its file).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from ufm._static import Static
from ufm.loop import history_rows
from ufm.sweep.checkpoint import Checkpoint
from ufm.sweep.driver import ChunkRun, Clock
from ufm.sweep.io import load_sweep, versions
from ufm.sweep.kernel import Config
from ufm.sweep.layout import (
    Layout,
    check_devices,
    chunk_size_for,
    make_layout,
    state_bytes,
    to_host,
)
from ufm.sweep.plan import Plan, config_hash, make_plan
from ufm.sweep.progress import Progress
from ufm.sweep.result import Sweep

__all__ = ["Sweep", "sweep", "load_sweep"]


def sweep(
    model,
    grid: Mapping[str, Any] | None = None,
    seeds: int | Sequence[int] = 1,
    steps: int = 500,
    optimizer: optax.GradientTransformation
    | Callable[..., optax.GradientTransformation]
    | None = None,
    record_every: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    zip_axes: Sequence[Sequence[str]] = (),
    tol: float | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    group_size: int | None = None,
    keep_params: bool = False,
    progress: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
    checkpoint_every: float = 60.0,
) -> Sweep:
    """Optimise `model` for every seed at every point of a hyperparameter grid, in compiled,
    batched, sharded chunks; returns a `Sweep` of arrays shaped (grid axes..., seed).

    Run (point, s) is exactly ``ufm.solve(model_at_point, jax.random.key(seeds[s]), steps,
    optimizer_at_point, record_every, tol)``: it starts from ``model_at_point.init(key)`` (the same
    start for every grid point with that seed) and takes the same steps, up to the rounding of
    batched matrix products.

    Args:
      model: any ufm model (a pytree whose numeric hyperparameters are leaves, with ``init``,
        ``objective`` and optionally ``metrics``, ``project``, ``value_and_grad``).
      grid: key -> values. Keys are the model's leaf fields (``lam_W``, ``E_H``, ``tau``, ...)
        or parameters of the optimizer factory (``learning_rate``, ``momentum``, ...). A list
        (or 1-D array) is an axis; a number is a fixed value that adds no axis (still an input
        of the compiled function, so changing it does not recompile). Axes form a Cartesian
        product in the order of the keys. Values are validated by the model's constructor.
      seeds: S (the seeds 0..S-1) or a sequence of distinct ints in [0, 2**31 - 1].
      steps: the step budget of every run (>= 1); `Sweep.max_steps`.
      optimizer: an optax GradientTransformation used by every run, or a factory of one whose
        arguments are grid keys, e.g. ``optax.sgd`` or ``lambda learning_rate, momentum:
        optax.sgd(learning_rate, momentum)`` (the clearer way to sweep optimizer
        hyperparameters). Equal optimizers and factories (same code, same constants) share
        the compiled code, whether or not they are the same object. Default: the model's
        ``default_optimizer()``, else `ufm.solve.default_optimizer()` (`ufm.optimizers.lbfgs`,
        which has no branch per run and so steps many runs together in one vmapped loop).
      record_every: also record a history (objective, stationarity, metrics) every this many
        steps. Default: final values only.
      checkpoint: a directory; every finished chunk is written there atomically (temporary
        file, fsync, rename), and the state of the chunk in progress (parameters, optimizer
        state, steps, history so far) at least every `checkpoint_every` seconds. Calling
        `sweep` again with the same arguments after a crash or kill resumes from the finished
        chunks and the written state, and gives results identical to an uninterrupted sweep;
        a checkpoint of a different sweep raises ValueError (never mixed), an unreadable
        file is reported (a warning naming it) and its chunk recomputed.
      zip_axes: groups of grid keys whose lists are tied (one axis, equal lengths) instead of
        crossed, e.g. ``[("lam_W", "lam_H")]``.
      tol: stop a run once its stationarity measure is <= tol (status converged). None
        (default): no stopping test, every run takes all its steps unless it diverges.
      chunk_size: runs per compiled call. Each call's runs are padded (with copies of the last
        run) to a multiple of the device count and trimmed. Default: what fits
        `memory_budget`, a multiple of the device count.
      memory_budget: bytes for one chunk on each device. Default: half the free memory of an
        accelerator, a quarter of the free host memory on CPU (and at most 1024 runs per CPU
        device: a chunk is the unit of checkpointing, and larger ones gain nothing there).
      devices: the devices to shard the run axis over (a 1-D mesh). Default: ``jax.devices()``,
        every device of every process after ``jax.distributed.initialize()``.
      group_size: runs stepped together in one vmapped loop on each device; the groups of a
        chunk run one after another. Default: every run of the device's share of the chunk on
        accelerators (one batched kernel per op); on CPU as many as have their loop states
        (parameters, gradient, optimizer state) within 2 MiB, a core's cache, at least 1:
        every run of a small problem, 8 runs of B1 (on one device 1.25x faster than one at a
        time), one run at a time for large problems.
      keep_params: also return the final parameters of every run (memory: runs x model size).
      progress: show a tqdm progress bar (run-steps done, runs done, rate, ETA) on stderr,
        updated about twice a second between segments of steps.
      on_chunk: called as ``on_chunk(chunks_done, chunks_total)`` after each chunk is done
        (and saved, with a checkpoint).
      checkpoint_every: with a checkpoint, the most seconds of work a crash may lose: the
        state of the chunk in progress is written at least this often (default 60).

    Returns:
      A `Sweep`. A run that hits NaN/inf is frozen at its last finite iterate and marked in
      ``Sweep.diverged``; the other runs are unaffected.
    """
    t_start = time.perf_counter()
    plan = make_plan(model, grid, seeds, steps, optimizer, record_every, tol, zip_axes, keep_params)
    devices = check_devices(devices)
    chunk = chunk_size_for(plan, devices, chunk_size, memory_budget)
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got progress={progress!r}")
    if on_chunk is not None and not callable(on_chunk):
        raise ValueError(f"on_chunk must be callable or None, got on_chunk={on_chunk!r}")
    if isinstance(checkpoint_every, bool) or not (
        isinstance(checkpoint_every, int | float) and 0 < checkpoint_every < float("inf")
    ):
        raise ValueError(
            f"checkpoint_every must be a number of seconds > 0, got checkpoint_every="
            f"{checkpoint_every!r}"
        )
    R = len(plan.run_seeds)
    ckpt = None
    if checkpoint is not None:
        ckpt = Checkpoint(checkpoint, plan.config, chunk, R, writer=jax.process_index() == 0)
        chunk = ckpt.chunk  # resume with the checkpoint's chunks, whatever the devices now
    layout = make_layout(R, devices, chunk, group_size, state_bytes(plan))
    cfg = _config(plan, layout)
    with Progress(progress, R, plan.max_steps) as bar:
        parts, resumed, memory = _run_chunks(
            plan, layout, cfg, ckpt, bar, on_chunk, progress, Clock(float(checkpoint_every))
        )
    meta = {
        "config": plan.config,
        "config_hash": config_hash(plan.config),
        "grid_order": list(plan.grid),
        "model": plan.config["model"],
        "versions": versions(),
        "devices": [str(d) for d in layout.devices],
        "processes": jax.process_count(),
        "chunk_size": layout.chunk,
        "group_size": layout.group,
        "chunks": layout.n_chunks,
        "resumed_chunks": resumed["chunks"],
        "resumed_steps": resumed["steps"],
        "bytes_per_device_and_call": memory,
        "seconds": time.perf_counter() - t_start,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return _assemble(plan, parts, meta)


def _config(plan: Plan, layout: Layout) -> Config:
    """The compiled code's configuration (the key of its caches)."""
    return Config(
        treedef=plan.treedef,
        optimizer=Static(plan.optimizer),
        is_factory=plan.is_factory,
        hparam_names=tuple(sorted(plan.hparams)),
        rows=plan.rows,
        use_tol=plan.tol is not None,
        keep_params=plan.keep_params,
        group=layout.group,
        vmap_init=not layout.on_cpu,
        mesh=layout.mesh,
    )


def _run_chunks(plan, layout, cfg, ckpt, bar, on_chunk, progress, clock):
    """Every chunk, loaded from the checkpoint or computed, in order.

    Chunk k is started (and its first segment dispatched) before chunk k - 1 is collected, so
    the host work of one chunk (transfer, checkpoint, progress) overlaps the computation of the
    next.

    Returns:
      (per chunk host outputs, {"chunks": chunks loaded whole from the checkpoint, "steps":
      steps of a chunk's saved state it resumed from}, bytes per device and call).
    """
    R, chunk, n_chunks = len(plan.run_seeds), layout.chunk, layout.n_chunks
    rows = history_rows(plan.max_steps, plan.record_every or plan.max_steps)
    parts: list[dict[str, np.ndarray]] = []
    resumed, memory, pending = {"chunks": 0, "steps": 0}, None, None
    for k in range(n_chunks + 1):
        current = None
        if k < n_chunks:
            span = k * chunk, min((k + 1) * chunk, R)
            saved = ckpt.load(k, *span) if ckpt is not None else None
            run = None
            if saved is None:
                run = ChunkRun(plan, layout, cfg, k, span, ckpt, bar, progress, clock)
                run.begin()
                memory = run.memory if memory is None else memory
                resumed["steps"] += run.resumed_steps
            else:
                resumed["chunks"] += 1
            current = (k, span, saved, run)
        if pending is not None:
            j, (start, stop), out, _ = pending
            if out is None:  # computed: final values on the devices
                out = _flatten_out(to_host(pending[3].final), stop - start, rows)
                if ckpt is not None:
                    ckpt.save(j, start, stop, out)
            parts.append(out)
            bar.chunk_done(j, stop - start, stop, n_chunks)
            if on_chunk is not None:
                on_chunk(j + 1, n_chunks)
        if current is not None and current[3] is not None:
            current[3].final = current[3].complete()
        pending = current
    return parts, resumed, memory


def _flatten_out(res: dict, n: int, rows: int) -> dict[str, np.ndarray]:
    """Host outputs of one chunk, trimmed to its n real runs and histories to their `rows` rows;
    parameters as params/<i>."""
    out = {}
    for k, v in res.items():
        if k == "params":
            for i, leaf in enumerate(jax.tree.leaves(v)):
                out[f"params/{i}"] = np.asarray(leaf)[:n]
        else:
            out[k] = np.asarray(v)[:n, :rows] if k.startswith("history/") else np.asarray(v)[:n]
    return out


def _assemble(plan: Plan, parts: list[dict[str, np.ndarray]], meta: dict) -> Sweep:
    """The `Sweep` from the chunks' outputs, each run's arrays reshaped to (grid..., seed)."""
    res = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    shape = plan.shape

    def grab(prefix):
        n = len(prefix)
        return {
            k[n:]: v.reshape(shape + v.shape[1:]) for k, v in res.items() if k.startswith(prefix)
        }

    params = None
    if plan.keep_params:
        flat = grab("params/")
        leaves = [flat[str(i)] for i in range(len(flat))]
        template = jax.eval_shape(plan.model.init, jax.random.key(0))
        params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
    return Sweep(
        model=plan.model,
        axes=list(plan.axes),
        grid=dict(plan.grid),
        seeds=plan.seeds,
        max_steps=plan.max_steps,
        record_every=plan.record_every,
        tol=plan.tol,
        optimizer=plan.config["optimizer"].split("#")[0],
        objective=res["objective"].reshape(shape),
        grad_norm=res["grad_norm"].reshape(shape),
        steps_taken=res["steps_taken"].reshape(shape),
        status=res["status"].reshape(shape),
        metrics=grab("metrics/"),
        history=grab("history/") or None,
        params=params,
        meta=meta,
    )
