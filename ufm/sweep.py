"""Sweeps: every seed x every point of a hyperparameter grid in one compiled call per chunk of
runs, chunked to a memory budget, sharded over all devices (and hosts), checkpointed, with
progress, and saved in an open format.

    sw = ufm.sweep(ufm.UFM(K=10, d=64, n=50), grid={"lam_W": [1e-4, 1e-3], "learning_rate": 0.5},
                   seeds=8, steps=1000, optimizer=optax.sgd)
    sw.objective.shape == (2, 8)        # grid axes in order, then seed

How it is fast: a model is a pytree whose numeric hyperparameters are leaves (DESIGN.md, "The one
idea that makes it fast"), so one compiled function serves every grid point and changing only
values never recompiles. The run axis of a chunk is split over devices with a 1-D mesh; on each
device the runs go through one loop over optimizer steps, vmapped over all of them on an
accelerator, one run after another on CPU (where a run's arrays stay in cache and unbatched
matrix products are fastest), with the UFM's hand-derived gradient (`ufm.models._fused`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import itertools
import json
import math
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ufm.loop import build
from ufm.solve import CONVERGED, MAX_STEPS, NONFINITE, STATUS_NAMES, default_optimizer

__all__ = ["Sweep", "sweep", "load_sweep"]

_FORMAT = "ufm.sweep/1"
_RUN_AXIS = "runs"
_MAX_SEED = 2**31 - 1
_CPU_MAX_CHUNK = 1024  # default cap of runs per CPU device and chunk (checkpoint granularity)
_REPORTS_PER_CHUNK = 50  # progress callbacks per chunk (each costs a few microseconds)


# ----------------------------------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sweep:
    """The results of `sweep`: arrays shaped ``shape = (len(axis_1), ..., len(axis_k), S)``, the
    grid axes in the order of the grid's keys (a zipped group at the place of its first key),
    then the seeds.

    Attributes:
      model: the base model (None when loaded from a file whose model cannot be rebuilt).
      axes: the axes, one tuple of grid keys each (two or more keys when zipped).
      grid: key -> the values along its axis, or the fixed value of a key given as a number.
      seeds: (S,) the seeds; run (..., s) starts from ``model.init(jax.random.key(seeds[s]))``.
      steps, record_every, tol: as passed to `sweep`.
      optimizer: a description of the optimizer (its function name or repr).
      objective, grad_norm: final objective and stationarity measure of every run.
      steps_taken: optimizer steps each run took.
      status: CONVERGED (0), MAX_STEPS (1) or NONFINITE (2) (`ufm.solve.STATUS_NAMES`).
      metrics: name -> final ``model.metrics`` of every run.
      history: when ``record_every`` was given, name -> ``shape + (T,)``: step, objective,
        grad_norm and metrics at steps 0, record_every, ..., and the last; rows after an early
        stop are NaN (step -1), as in `ufm.solve`.
      params: the final parameters (a pytree of arrays with leading ``shape``) when
        ``keep_params=True``.
      meta: configuration, its hash, package versions, devices, chunking, wall time.
    """

    model: Any
    axes: list[tuple[str, ...]]
    grid: dict[str, Any]
    seeds: np.ndarray
    steps: int
    record_every: int | None
    tol: float | None
    optimizer: str
    objective: np.ndarray
    grad_norm: np.ndarray
    steps_taken: np.ndarray
    status: np.ndarray
    metrics: dict[str, np.ndarray]
    history: dict[str, np.ndarray] | None = None
    params: Any = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """(grid axis lengths..., number of seeds)."""
        return self.objective.shape

    @property
    def diverged(self) -> np.ndarray:
        """True where a run hit NaN/inf (it was frozen at its last finite iterate)."""
        return self.status == NONFINITE

    @property
    def converged(self) -> np.ndarray:
        """True where a run met the tolerance `tol`."""
        return self.status == CONVERGED

    def __repr__(self) -> str:
        axes = ", ".join(f"{'+'.join(a)}[{self.shape[i]}]" for i, a in enumerate(self.axes))
        n_div = int(self.diverged.sum())
        return (
            f"Sweep({type(self.model).__name__ if self.model is not None else '?'}: "
            f"{axes + ', ' if axes else ''}seed[{len(self.seeds)}], steps={self.steps}, "
            f"{self.objective.size} runs, {n_div} diverged)"
        )

    # --- tables --------------------------------------------------------------------------------
    def _point_values(self, index: tuple[int, ...]) -> dict[str, Any]:
        out = {}
        for name, value in self.grid.items():
            axis = next((i for i, a in enumerate(self.axes) if name in a), None)
            v = value if axis is None else np.asarray(value)[index[axis]]
            out[name] = v.tolist() if isinstance(v, np.ndarray | np.generic) else v
        return out

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per run (grid values, seed, objective, grad_norm, steps_taken, status name,
        diverged, final metrics): ``pandas.DataFrame(sw.to_records())``."""
        records = []
        for index in np.ndindex(*self.shape):
            rec = self._point_values(index[:-1])
            rec["seed"] = int(self.seeds[index[-1]])
            rec["objective"] = float(self.objective[index])
            rec["grad_norm"] = float(self.grad_norm[index])
            rec["steps_taken"] = int(self.steps_taken[index])
            rec["status"] = STATUS_NAMES[int(self.status[index])]
            rec["diverged"] = bool(self.diverged[index])
            for k, v in self.metrics.items():
                rec[k] = float(v[index])
            records.append(rec)
        return records

    def summary(self, keys: Sequence[str] | None = None, level: float = 0.95) -> list[dict]:
        """Across seeds, per grid point: the median and the central `level` interval (empirical
        percentiles (1 - level)/2 and (1 + level)/2 over the seeds that did not diverge) of the
        objective and each metric, as ``<key>_median``, ``<key>_lo``, ``<key>_hi``, with
        ``runs`` and ``diverged`` counts. One dict per grid point."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got level={level!r}")
        keys = ["objective", *self.metrics] if keys is None else list(keys)
        data = {"objective": self.objective, "grad_norm": self.grad_norm, **self.metrics}
        unknown = [k for k in keys if k not in data]
        if unknown:
            raise ValueError(f"keys {unknown} are not among {sorted(data)}")
        q = [50.0, 50 * (1 - level), 50 * (1 + level)]
        ok = ~self.diverged
        rows = []
        for index in np.ndindex(*self.shape[:-1]):
            rec = self._point_values(index)
            rec["runs"] = int(self.shape[-1])
            rec["diverged"] = int((~ok[index]).sum())
            for k in keys:
                x = np.asarray(data[k][index], dtype=float)[ok[index]]
                x = x[np.isfinite(x)]
                med, lo, hi = np.percentile(x, q) if x.size else (np.nan,) * 3
                rec[f"{k}_median"], rec[f"{k}_lo"], rec[f"{k}_hi"] = (
                    float(med),
                    float(lo),
                    float(hi),
                )
            rows.append(rec)
        return rows

    # --- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> str:
        """Write the sweep to one ``.npz`` file (NumPy arrays, loadable without pickle) whose
        entry ``meta.json`` holds the JSON metadata: model, grid, seeds, steps, optimizer,
        package versions and the configuration hash. Returns the path written."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        arrays = {
            "seeds": self.seeds,
            "objective": self.objective,
            "grad_norm": self.grad_norm,
            "steps_taken": self.steps_taken,
            "status": self.status,
        }
        for name, value in self.grid.items():
            arrays[f"grid/{name}"] = np.asarray(value)
        arrays.update({f"metrics/{k}": v for k, v in self.metrics.items()})
        if self.history is not None:
            arrays.update({f"history/{k}": v for k, v in self.history.items()})
        if self.params is not None:
            for kp, leaf in jax.tree_util.tree_flatten_with_path(self.params)[0]:
                arrays[f"params/{jax.tree_util.keystr(kp)}"] = np.asarray(leaf)
        meta = dict(self.meta)
        meta.update(
            format=_FORMAT,
            axes=[list(a) for a in self.axes],
            grid_fixed={k: _jsonable(v) for k, v in self.grid.items() if not _is_axis_value(v)},
            steps=self.steps,
            record_every=self.record_every,
            tol=self.tol,
            optimizer=self.optimizer,
        )
        arrays["meta.json"] = np.asarray(json.dumps(meta, sort_keys=True))
        _atomic_write(path, lambda f: np.savez(f, **arrays))
        return path


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read a sweep written by `Sweep.save` (the model is rebuilt when its class is importable)."""
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(str(data.pop("meta.json")))
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a ufm sweep file (format {meta.get('format')!r})")
    axes = [tuple(a) for a in meta["axes"]]
    grid: dict[str, Any] = {}
    for name in meta["grid_order"]:
        grid[name] = data[f"grid/{name}"] if f"grid/{name}" in data else None
        if name in meta["grid_fixed"]:
            grid[name] = meta["grid_fixed"][name]
    group = lambda prefix: {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}  # noqa: E731
    history = group("history/") or None
    params = None
    model = _rebuild_model(meta.get("model"))
    if any(k.startswith("params/") for k in data):
        params = _restore_params(model, group("params/"))
    return Sweep(
        model=model,
        axes=axes,
        grid=grid,
        seeds=data["seeds"],
        steps=meta["steps"],
        record_every=meta["record_every"],
        tol=meta["tol"],
        optimizer=meta["optimizer"],
        objective=data["objective"],
        grad_norm=data["grad_norm"],
        steps_taken=data["steps_taken"],
        status=data["status"],
        metrics=group("metrics/"),
        history=history,
        params=params,
        meta=meta,
    )


def _restore_params(model, flat: dict[str, np.ndarray]):
    """The parameters pytree of `model` (e.g. `ufm.Params`) from its saved leaves (keystr ->
    array); the flat dict itself when the model or its structure cannot be matched."""
    if model is None:
        return flat
    template = jax.eval_shape(model.init, jax.random.key(0))
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    keys = [jax.tree_util.keystr(kp) for kp, _ in paths]
    if sorted(keys) != sorted(flat):
        return flat
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


# ----------------------------------------------------------------------------------------------
# Validation: everything is checked in Python before anything is traced
# ----------------------------------------------------------------------------------------------
def _is_axis_value(v) -> bool:
    return isinstance(v, list | tuple | np.ndarray | jax.Array) and np.ndim(v) >= 1


def _jsonable(v):
    if isinstance(v, np.ndarray | jax.Array):
        return np.asarray(v).tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v


def _check_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"grid[{name!r}] values must be real numbers, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"grid[{name!r}] values must be finite, got {value!r}")
    return value


def _leaf_fields(model) -> dict[str, list[int]]:
    """Top-level field name -> indices of its leaves in the model's flattening."""
    fields: dict[str, list[int]] = {}
    for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(model)[0]):
        key = path[0]
        name = getattr(key, "name", None) or str(getattr(key, "key", key))
        fields.setdefault(name, []).append(i)
    return fields


def _optimizer_params(factory) -> tuple[list[str], list[str]]:
    """(all keyword-able parameter names, those without defaults) of an optimizer factory."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return [], []
    names, required = [], []
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return names, required


_DEFAULT_OPTIMIZERS: dict[Any, optax.GradientTransformation] = {}


def _default_optimizer_for(model) -> optax.GradientTransformation:
    """The optimizer `ufm.solve` would use, one object per model structure (so that repeated
    sweeps hit the compilation cache)."""
    key = (type(model), jax.tree_util.tree_structure(model))
    if key not in _DEFAULT_OPTIMIZERS:
        own = getattr(model, "default_optimizer", None)
        _DEFAULT_OPTIMIZERS[key] = default_optimizer() if own is None else own()
    return _DEFAULT_OPTIMIZERS[key]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A validated sweep: per-run inputs (host arrays) and the static configuration."""

    model: Any
    treedef: Any
    leaves: list[np.ndarray]  # per leaf, (R, *shape)
    hparams: dict[str, np.ndarray]  # optimizer hyperparameter -> (R,)
    run_seeds: np.ndarray  # (R,)
    axes: list[tuple[str, ...]]
    grid: dict[str, Any]
    seeds: np.ndarray
    shape: tuple[int, ...]
    optimizer: Any  # a GradientTransformation (fixed) or a factory
    is_factory: bool
    steps: int
    record_every: int | None
    tol: float | None
    keep_params: bool
    config: dict  # JSON-able identity of the sweep (hashed for checkpoints)


def _plan(model, grid, seeds, steps, optimizer, record_every, tol, zip_axes, keep_params):
    # --- model ---------------------------------------------------------------------------------
    for attr in ("init", "objective"):
        if not callable(getattr(model, attr, None)):
            raise ValueError(f"model must have a callable `{attr}` method, got model={model!r}")
    treedef = jax.tree_util.tree_structure(model)
    for kp, leaf in jax.tree_util.tree_flatten_with_path(model)[0]:
        if not isinstance(leaf, int | float | np.ndarray | np.generic | jax.Array) or isinstance(
            leaf, bool
        ):
            raise ValueError(
                f"model leaves must be numbers or arrays, got {jax.tree_util.keystr(kp)}={leaf!r}"
            )
    fields = _leaf_fields(model)

    # --- scalar options --------------------------------------------------------------------------
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got steps={steps!r}")
    steps = int(steps)
    if record_every is not None:
        if (
            isinstance(record_every, bool)
            or not isinstance(record_every, int | np.integer)
            or record_every < 1
        ):
            raise ValueError(
                f"record_every must be an integer >= 1 or None, got record_every={record_every!r}"
            )
        record_every = min(int(record_every), steps)
    if tol is not None:
        try:
            tol = float(tol)
        except (TypeError, ValueError):
            raise ValueError(f"tol must be a finite number > 0 or None, got tol={tol!r}") from None
        if not (tol > 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be a finite number > 0 or None, got tol={tol!r}")
    if not isinstance(keep_params, bool):
        raise ValueError(f"keep_params must be True or False, got keep_params={keep_params!r}")

    # --- seeds -----------------------------------------------------------------------------------
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1 or a sequence of ints, got {seeds!r}")
        seeds_arr = np.arange(int(seeds), dtype=np.int64)
    elif isinstance(seeds, Sequence | np.ndarray) and not isinstance(seeds, str | bytes):
        seeds_list = list(np.asarray(seeds).ravel()) if isinstance(seeds, np.ndarray) else seeds
        if len(seeds_list) == 0:
            raise ValueError("seeds must not be empty")
        for s in seeds_list:
            if (
                isinstance(s, bool)
                or not isinstance(s, int | np.integer)
                or not 0 <= s <= _MAX_SEED
            ):
                raise ValueError(
                    f"seeds must hold integers in [0, 2**31 - 1], got seeds={list(seeds_list)!r}"
                )
        if len(set(int(s) for s in seeds_list)) != len(seeds_list):
            raise ValueError(f"seeds must be distinct, got seeds={list(seeds_list)!r}")
        seeds_arr = np.asarray([int(s) for s in seeds_list], dtype=np.int64)
    else:
        raise ValueError(f"seeds must be an integer >= 1 or a sequence of ints, got {seeds!r}")

    # --- optimizer -------------------------------------------------------------------------------
    grid = {} if grid is None else grid
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be a dict of key -> values, got grid={grid!r}")
    grid = dict(grid)
    for name in grid:
        if not isinstance(name, str):
            raise ValueError(f"grid keys must be strings, got {name!r}")
    opt_keys = [k for k in grid if k not in fields]
    if optimizer is None:
        optimizer = _default_optimizer_for(model)
    is_factory = not isinstance(optimizer, optax.GradientTransformation)
    if is_factory and not callable(optimizer):
        raise ValueError(
            "optimizer must be an optax GradientTransformation or a factory of one (a function "
            f"of its hyperparameters, e.g. optax.sgd), got optimizer={optimizer!r}"
        )
    if is_factory:
        names, required = _optimizer_params(optimizer)
        bad = [k for k in opt_keys if k not in names]
        if bad:
            raise ValueError(
                f"grid keys {bad} are neither leaves of {type(model).__name__} "
                f"({', '.join(fields)}) nor parameters of the optimizer factory "
                f"{_describe(optimizer)} ({', '.join(names) or 'none'})"
            )
        missing = [k for k in required if k not in grid]
        if missing:
            raise ValueError(
                f"the optimizer factory {_describe(optimizer)} needs {missing}: give them in grid "
                "(a number for a fixed value, a list for an axis)"
            )
    elif opt_keys:
        raise ValueError(
            f"grid keys {opt_keys} are not leaves of {type(model).__name__} "
            f"({', '.join(fields)}); to sweep optimizer hyperparameters pass the optimizer as a "
            "factory, e.g. optimizer=optax.sgd with grid={'learning_rate': [...]}"
        )

    # --- axes ------------------------------------------------------------------------------------
    if isinstance(zip_axes, str) or not isinstance(zip_axes, Sequence):
        raise ValueError(f"zip_axes must be a sequence of groups of grid keys, got {zip_axes!r}")
    groups: dict[str, tuple[str, ...]] = {}
    for group in zip_axes:
        if isinstance(group, str) or not isinstance(group, Sequence) or len(group) < 2:
            raise ValueError(
                f"zip_axes must hold groups of two or more grid keys, got group {group!r}"
            )
        for name in group:
            if name not in grid:
                raise ValueError(f"zip_axes names {name!r}, which is not a grid key")
            if not _is_axis_value(grid[name]):
                raise ValueError(f"zip_axes names {name!r}, whose grid value is not a list")
            if name in groups:
                raise ValueError(f"zip_axes names {name!r} twice")
            groups[name] = tuple(group)
        lengths = {name: len(grid[name]) for name in group}
        if len(set(lengths.values())) != 1:
            raise ValueError(
                f"zip_axes group {tuple(group)} has lists of unequal lengths {lengths}"
            )
    axes: list[tuple[str, ...]] = []
    for name, value in grid.items():
        if _is_axis_value(value):
            if len(value) == 0:
                raise ValueError(f"grid[{name!r}] is an empty list")
            axis = groups.get(name, (name,))
            if axis not in axes:
                axes.append(axis)
    shape = tuple(len(grid[a[0]]) for a in axes) + (len(seeds_arr),)

    # --- per-axis values, validated through the model's own constructor ----------------------
    # model field -> per grid point leaf values; validated once per axis value (and once for the
    # fixed values), so a bad value raises the model's ValueError naming the parameter
    fixed = {k: v for k, v in grid.items() if not _is_axis_value(v)}
    model_fixed = {k: v for k, v in fixed.items() if k in fields}
    for k, v in fixed.items():
        if k not in fields:
            _check_number(k, v)
    base_model = _replace(model, model_fixed, fields) if model_fixed else model
    base_leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(base_model)]
    dtype = jnp.result_type(float)
    leaf_dtypes = [np.dtype(dtype) if x.dtype.kind == "f" else x.dtype for x in base_leaves]
    n_grid = int(np.prod(shape[:-1], dtype=np.int64))
    leaves = [
        np.broadcast_to(x.astype(t), (n_grid, *x.shape)).copy()
        for x, t in zip(base_leaves, leaf_dtypes, strict=True)
    ]
    hparams = {k: np.full((n_grid,), float(v), dtype) for k, v in fixed.items() if k not in fields}
    grid_index = np.indices(shape[:-1]).reshape(len(axes), -1) if axes else np.zeros((0, 1), int)
    grid_out: dict[str, Any] = {}
    for ax, names in enumerate(axes):
        length = len(grid[names[0]])
        model_names = [n for n in names if n in fields]
        idx = grid_index[ax]
        for n in names:
            if n not in fields:
                vals = np.asarray([_check_number(n, v) for v in grid[n]], dtype)
                hparams[n] = vals[idx]
                grid_out[n] = vals
        if model_names:
            per_value = []
            for j in range(length):
                m = _replace(base_model, {n: grid[n][j] for n in model_names}, fields)
                per_value.append(jax.tree_util.tree_leaves(m))
            for n in model_names:
                for i in fields[n]:
                    vals = np.stack([np.asarray(pv[i], leaf_dtypes[i]) for pv in per_value])
                    leaves[i] = vals[idx]
                grid_out[n] = np.asarray([_jsonable(v) for v in grid[n]])
    grid_ordered = {k: (grid_out[k] if k in grid_out else fixed[k]) for k in grid}

    # --- a trial build of the optimizer, with concrete values ----------------------------------
    if is_factory:
        trial = {k: float(v[0]) for k, v in hparams.items()}
        try:
            tx = optimizer(**trial)
        except Exception as e:  # noqa: BLE001 - reported with the values that caused it
            raise ValueError(
                f"the optimizer factory {_describe(optimizer)} failed on {trial}: {e}"
            ) from e
        if not isinstance(tx, optax.GradientTransformation):
            raise ValueError(
                f"the optimizer factory {_describe(optimizer)} must return an optax "
                f"GradientTransformation, got {tx!r}"
            )

    # --- per-run inputs: grid points repeated over seeds (seed fastest) ---------------------------
    S = len(seeds_arr)
    leaves = [np.repeat(x, S, axis=0) for x in leaves]
    hparams = {k: np.repeat(v, S) for k, v in hparams.items()}
    run_seeds = np.tile(seeds_arr, n_grid)

    config = {
        "model": _model_meta(model),
        "leaves": [x.tolist() for x in base_leaves],
        "axes": [list(a) for a in axes],
        "grid": {k: _jsonable(v) for k, v in grid_ordered.items()},
        "seeds": seeds_arr.tolist(),
        "steps": steps,
        "record_every": record_every,
        "tol": tol,
        "keep_params": keep_params,
        "dtype": np.dtype(dtype).name,
        "optimizer": _cached(
            _optimizer_fingerprint,
            optimizer,
            is_factory,
            tuple(sorted(hparams)),
            model,
            _leaf_key(base_leaves),
        ),
    }
    return _Plan(
        model=model,
        treedef=treedef,
        leaves=leaves,
        hparams=hparams,
        run_seeds=run_seeds,
        axes=axes,
        grid=grid_ordered,
        seeds=seeds_arr,
        shape=shape,
        optimizer=optimizer,
        is_factory=is_factory,
        steps=steps,
        record_every=record_every,
        tol=tol,
        keep_params=keep_params,
        config=config,
    )


def _replace(model, values: dict, fields):
    """The model with some fields replaced, through its constructor (validation) when it is a
    dataclass; else by substituting leaves."""
    if dataclasses.is_dataclass(model):
        return dataclasses.replace(model, **values)
    flat, treedef = jax.tree_util.tree_flatten(model)
    flat = list(flat)
    for name, value in values.items():
        idx = fields[name]
        vs = jax.tree_util.tree_leaves(value)
        if len(vs) == 1:
            vs = vs * len(idx)
        if len(vs) != len(idx):
            raise ValueError(f"grid[{name!r}] values must have {len(idx)} numbers, got {value!r}")
        for i, v in zip(idx, vs, strict=True):
            flat[i] = _check_number(name, v)
    return jax.tree_util.tree_unflatten(treedef, flat)


def _describe(fn) -> str:
    if isinstance(fn, functools.partial):
        args = ", ".join([*map(repr, fn.args), *(f"{k}={v!r}" for k, v in fn.keywords.items())])
        return f"partial({_describe(fn.func)}, {args})"
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{mod}.{name}" if mod else name


def _model_meta(model) -> dict:
    cls = type(model)
    meta = {"class": f"{cls.__module__}.{cls.__qualname__}", "repr": repr(model)}
    if dataclasses.is_dataclass(model):
        meta["fields"] = {
            f.name: _jsonable(getattr(model, f.name)) for f in dataclasses.fields(model)
        }
    meta["structure"] = re.sub(r" at 0x[0-9a-f]+", "", str(jax.tree_util.tree_structure(model)))
    return meta


def _rebuild_model(meta):
    if not meta or "fields" not in meta:
        return None
    try:
        mod, _, name = meta["class"].rpartition(".")
        cls = getattr(importlib.import_module(mod), name)
        tup = lambda v: tuple(tup(x) for x in v) if isinstance(v, list) else v  # noqa: E731
        return cls(**{k: tup(v) for k, v in meta["fields"].items()})
    except Exception:  # noqa: BLE001 - a model that cannot be rebuilt is reported as None
        return None


def _cached(fn, *args):
    """fn(*args) through its lru_cache, or directly when an argument is unhashable."""
    try:
        hash(args)
    except TypeError:
        return fn.__wrapped__(*args)
    return fn(*args)


def _leaf_key(leaves) -> tuple:
    return tuple((x.dtype.str, x.shape, x.tobytes()) for x in leaves)


@functools.lru_cache(maxsize=256)
def _optimizer_fingerprint(optimizer, is_factory, names, model, leaf_key) -> str:
    """A description of the optimizer and a hash of its update as a jaxpr (literals included),
    stable across processes: equal for equal optimizers, different for different constants.
    (Cached: `model` hashes by identity for dataclasses without eq, so `leaf_key` adds the
    values it depends on.)"""
    desc = _describe(optimizer) if is_factory else "GradientTransformation"
    try:
        params = jax.eval_shape(model.init, jax.random.key(0))

        def update(hp, grads):
            tx = optimizer(**dict(zip(names, hp, strict=True))) if is_factory else optimizer
            tx = optax.with_extra_args_support(tx)
            state = tx.init(grads)
            return tx.update(
                grads, state, grads, value=jnp.zeros(()), grad=grads, value_fn=model.objective
            )

        hp = [jax.ShapeDtypeStruct((), jnp.result_type(float)) for _ in names]
        text = str(jax.make_jaxpr(update)(hp, params))
    except Exception as e:  # noqa: BLE001 - an untraceable optimizer is described by its repr
        text = f"untraceable: {type(e).__name__}"
    text = re.sub(r" at 0x[0-9a-f]+", "", text)
    return f"{desc}#{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of a sweep configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# The compiled chunk: init, a loop of batched guarded steps, records, final metrics
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything that changes the compiled code (hashable: the key of the compilation cache)."""

    treedef: Any
    optimizer: Any
    is_factory: bool
    hparam_names: tuple[str, ...]
    steps: int
    record_every: int | None
    use_tol: bool
    keep_params: bool
    group: int
    vmap_init: bool
    progress: bool  # host callbacks make a CPU call synchronous: compiled in only when asked
    split_metrics: bool  # final metrics in a second executable (no history kept)
    mesh: Mesh


_PROGRESS: dict[int, Callable[[int], None]] = {}  # token -> sink, while a sweep is running
_PROGRESS_LOCK = threading.Lock()
_TOKENS = itertools.count(1)


def _report(token, delta):
    sink = _PROGRESS.get(int(token))
    if sink is not None:
        sink(int(delta))


def _chunk_body(st: _Static, leaves, hparams, seeds, tol, token):
    """The runs of one device's shard: (R_local, ...) inputs -> dict of (R_local, ...) outputs.

    The runs are split into groups of ``st.group`` runs stepped together in one vmapped loop;
    the groups run one after another (`lax.map`). One run per group (the CPU default) keeps a
    run's arrays in cache and uses unbatched matrix products.
    """
    local = seeds.shape[0]
    g = st.group
    n_groups = local // g
    grouped = jax.tree.map(
        lambda x: x.reshape((n_groups, g) + x.shape[1:]), (leaves, hparams, seeds)
    )
    fn = functools.partial(_group_body, st, tol if st.use_tol else None, token, n_groups)
    if n_groups == 1:
        out = fn((0, jax.tree.map(lambda x: x[0], grouped)))
        return jax.tree.map(lambda x: x.reshape((local,) + x.shape[1:]), out)
    out = jax.lax.map(fn, (jnp.arange(n_groups), grouped))
    return jax.tree.map(lambda x: x.reshape((local,) + x.shape[2:]), out)


def _group_body(st: _Static, tol, token, n_groups, indexed_args):
    """One group of runs, from their start to their final values (and history).

    A group of one run is traced without its run axis (a plain loop over one run's arrays,
    which compiles and runs fastest); larger groups are vmapped inside the loops, so that the
    loops and the progress reports stay at the level of the whole group.
    """
    index, args = indexed_args
    single = st.group == 1
    if single:
        args = jax.tree.map(lambda x: x[0], args)
    leaves, hparams, seeds = args
    batched = (lambda f: f) if single else jax.vmap

    def model_of(lv):
        return jax.tree_util.tree_unflatten(st.treedef, lv)

    def loop_of(lv, hp, example):
        model = model_of(lv)
        tx = st.optimizer(**hp) if st.is_factory else st.optimizer
        return model, build(model, tx, tol=tol)

    def init(lv, seed):
        return model_of(lv).init(jax.random.key(seed))

    if not single and not st.vmap_init:  # the batched PRNG compiles slowly on CPU: one by one
        params0 = jax.lax.map(lambda a: init(*a), (leaves, seeds))
    else:
        params0 = batched(init)(leaves, seeds)
    carry = batched(lambda lv, hp, p: loop_of(lv, hp, p)[1].init(p))(leaves, hparams, params0)

    def bstep(c, active):
        step = lambda lv, hp, c, a: loop_of(lv, hp, c.params)[1].step(c, a)  # noqa: E731
        return batched(step)(leaves, hparams, c, active)

    # progress: about _REPORTS_PER_CHUNK reports per chunk (a host callback costs ~0.2 ms),
    # each the steps taken since the last, sent between segments of `every` steps (never a
    # callback or a branch per step); with many short groups, only every `stride`-th group
    # reports at its end, for itself and the groups before it (the host corrects the count
    # when the chunk is done)
    every = -(-st.steps * n_groups // _REPORTS_PER_CHUNK) if st.progress else st.steps
    stride = max(1, n_groups // _REPORTS_PER_CHUNK)
    count = jnp.result_type(int)

    def tell(i, done, times=1):
        now = jnp.sum(i.astype(count))
        jax.debug.callback(_report, token, (now - done) * times)
        return now

    def advance(c, stop, done):
        """Step every run until it reaches `stop` steps or stops (converged / non-finite)."""

        def running(c):
            return (c.steps < stop) & (c.status == MAX_STEPS)

        def steps(c, limit):
            def body(t):
                c, j = t  # a single run steps only while it runs: active is then constant
                return bstep(c, True if single else running(c)), j + 1

            return jax.lax.while_loop(
                lambda t: (t[1] < limit) & jnp.any(running(t[0])), body, (c, 0)
            )[0]

        if every >= st.steps:  # reports only when a group finishes
            return steps(c, st.steps), done

        def segment(s):
            c, done = s
            c = steps(c, every)
            due = jnp.sum(c.steps.astype(count)) - done >= every
            return c, jax.lax.cond(due, tell, lambda i, done: done, c.steps, done)

        return jax.lax.while_loop(lambda s: jnp.any(running(s[0])), segment, (c, done))

    def record(c):
        rec = lambda lv, hp, c: loop_of(lv, hp, c.params)[1].record(c)  # noqa: E731
        return batched(rec)(leaves, hparams, c)

    done = jnp.zeros((), count)
    out = {}
    if st.record_every is None:
        carry, done = advance(carry, st.steps, done)
        last_row = None
    else:
        # one record site (row b after advancing to step b * record_every), as in `ufm.solve`:
        # the metrics are compiled once, and the final ones are read from each run's last row
        T = 1 + -(-st.steps // st.record_every)
        rows = jax.eval_shape(record, carry)
        hist0 = {
            k: jnp.full(v.shape + (T,), -1 if k == "step" else jnp.nan, v.dtype)
            for k, v in rows.items()
        }

        def block(s):
            c, b, hist, done = s
            was_running = (c.status == MAX_STEPS) | (b == 0)
            c, done = advance(c, jnp.minimum(b * st.record_every, st.steps), done)
            row = record(c)
            hist = {
                k: h.at[..., b].set(jnp.where(was_running, row[k], h[..., b]))
                for k, h in hist.items()
            }
            return c, b + 1, hist, done

        carry, _, hist, done = jax.lax.while_loop(
            lambda s: (s[1] < T) & ((s[1] == 0) | jnp.any(s[0].status == MAX_STEPS)),
            block,
            (carry, 0, hist0, done),
        )
        out.update({f"history/{k}": v for k, v in hist.items()})
        last = jnp.max(jnp.where(hist["step"] >= 0, jnp.arange(T), 0), axis=-1)
        last_row = {
            k: jnp.take_along_axis(v, last[..., None], axis=-1)[..., 0] for k, v in hist.items()
        }
    if st.progress and stride == 1:
        tell(carry.steps, done)
    elif st.progress:
        last = (index + 1) % stride == 0
        jax.lax.cond(last, lambda i, d: tell(i, d, stride), lambda i, d: d, carry.steps, done)

    def final(lv, hp, c, row):
        model, loop = loop_of(lv, hp, c.params)
        res = {"objective": c.value, "grad_norm": loop.stationarity(c), "steps_taken": c.steps}
        res["status"] = c.status
        if hasattr(model, "metrics") and not st.split_metrics:
            metrics = model.metrics(c.params) if row is None else row
            keys = jax.eval_shape(model.metrics, c.params)
            res.update({f"metrics/{k}": metrics[k] for k in keys})
        return res

    out.update(batched(final)(leaves, hparams, carry, last_row))
    if st.keep_params or st.split_metrics:
        out["params"] = carry.params
    if single:
        out = jax.tree.map(lambda x: x[None], out)
    return out


@functools.lru_cache(maxsize=64)
def _compiled_chunk(st: _Static):
    """jit(shard_map(body)) for one static configuration: every device runs its own shard of the
    runs with no communication (each has its own loop and stopping test)."""
    spec = P(_RUN_AXIS)
    fn = jax.shard_map(
        functools.partial(_chunk_body, st),
        mesh=st.mesh,
        in_specs=(spec, spec, spec, P(), P()),
        out_specs=spec,
        check_vma=False,
    )
    return jax.jit(fn)


def _metrics_body(st: _Static, leaves, params):
    """Final ``model.metrics`` of one device's runs (one by one on CPU, vmapped otherwise)."""

    def metrics(lv, p):
        m = jax.tree_util.tree_unflatten(st.treedef, lv).metrics(p)
        return {f"metrics/{k}": v for k, v in m.items()}

    if st.vmap_init:  # accelerators: one batched kernel per op
        return jax.vmap(metrics)(leaves, params)
    return jax.lax.map(lambda a: metrics(*a), (leaves, params))


@functools.lru_cache(maxsize=64)
def _compiled_metrics(st: _Static):
    """The final metrics as their own executable: called right after the loop is dispatched,
    it compiles while the loop runs (asynchronous dispatch), so a cold sweep pays for the larger
    of the two rather than their sum; they run once per run, so on CPU they are compiled without
    the expensive LLVM passes (half the compile time)."""
    spec = P(_RUN_AXIS)
    fn = jax.shard_map(
        functools.partial(_metrics_body, st),
        mesh=st.mesh,
        in_specs=(spec, spec),
        out_specs=spec,
        check_vma=False,
    )
    cpu = st.mesh.devices.flat[0].platform == "cpu"
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0} if cpu else None)


# ----------------------------------------------------------------------------------------------
# Chunking, devices, checkpoints
# ----------------------------------------------------------------------------------------------
def _bytes_per_run(plan: _Plan) -> int:
    """An estimate of the memory one run needs inside a chunk: its carry (parameters, optimizer
    state, gradient) about four times over (proposal, temporaries), plus history rows."""
    hp = {k: float(v[0]) for k, v in plan.hparams.items()}
    hp = tuple(sorted(hp.items()))
    nbytes = _cached(_carry_bytes, plan.model, plan.optimizer, plan.is_factory, hp)
    per = 4 * (2 * nbytes) + 64 * 8
    if plan.record_every is not None:
        per += (2 + plan.steps // plan.record_every) * 64 * 8
    return int(per)


@functools.lru_cache(maxsize=256)
def _carry_bytes(model, optimizer, is_factory, hp) -> int:
    params = jax.eval_shape(model.init, jax.random.key(0))
    tx = optimizer(**dict(hp)) if is_factory else optimizer
    state = jax.eval_shape(tx.init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((params, state)))


def _default_budget(device) -> int:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = {}
    if "bytes_limit" in stats:
        return int(0.5 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 4 << 30
    return int(0.25 * avail)


def _chunking(plan, n_dev, chunk_size, memory_budget, devices):
    R = len(plan.run_seeds)
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
            raise ValueError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
        chunk = int(chunk_size)
    else:
        per_device = _default_budget(devices[0]) if memory_budget is None else memory_budget
        budget = per_device * n_dev
        chunk = max(1, int(budget // _bytes_per_run(plan)))
        if devices[0].platform == "cpu":
            chunk = min(chunk, _CPU_MAX_CHUNK * n_dev)
        chunk = -(-chunk // n_dev) * n_dev  # a multiple of the device count
    return min(chunk, R)


def _atomic_write(path: str, write: Callable) -> None:
    """Write through a temporary file in the same directory, fsync, then rename over `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class _Checkpoint:
    """A directory: ``sweep.json`` (configuration, its hash, chunking) and one
    ``chunk-NNNNNN.npz`` per finished chunk, each written atomically."""

    def __init__(self, path, config, chunk, n_runs, writer: bool):
        self.path = os.fspath(path)
        self.writer = writer
        h = config_hash(config)
        meta_path = os.path.join(self.path, "sweep.json")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"checkpoint={self.path!r} exists and is not a directory")
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                old = json.load(f)
            if old.get("hash") != h:
                differ = sorted(
                    k
                    for k in set(config) | set(old.get("config", {}))
                    if config.get(k) != old.get("config", {}).get(k)
                )
                raise ValueError(
                    f"checkpoint={self.path!r} holds a different sweep (configuration hash "
                    f"{str(old.get('hash'))[:12]} != {h[:12]}; differing: {', '.join(differ)}); "
                    "refusing to mix results: pass another checkpoint path or delete this one"
                )
            self.chunk = int(old["chunk_size"])  # resume with the same chunks: identical results
        else:
            self.chunk = chunk
            if writer:
                os.makedirs(self.path, exist_ok=True)
                meta = {"format": _FORMAT, "hash": h, "config": config, "chunk_size": chunk}
                meta["n_runs"] = n_runs
                _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))

    def file(self, k: int) -> str:
        return os.path.join(self.path, f"chunk-{k:06d}.npz")

    def load(self, k: int, start: int, stop: int) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.file(k), allow_pickle=False) as z:
                out = {name: z[name] for name in z.files}
        except (OSError, ValueError):
            return None
        if int(out.pop("__start")) != start or int(out.pop("__stop")) != stop:
            return None
        return out

    def save(self, k: int, start: int, stop: int, out: dict[str, np.ndarray]) -> None:
        if self.writer:
            arrays = dict(out, __start=np.asarray(start), __stop=np.asarray(stop))
            _atomic_write(self.file(k), lambda f: np.savez(f, **arrays))


def _to_global(x: np.ndarray, sharding) -> jax.Array:
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _to_host(tree):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, tree)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("ufm", "jax", "jaxlib", "optax", "numpy"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = "?"
    return out


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------
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
      steps: optimizer steps per run (>= 1).
      optimizer: an optax GradientTransformation used by every run, or a factory of one whose
        arguments are grid keys, e.g. ``optax.sgd`` or ``lambda learning_rate, momentum:
        optax.sgd(learning_rate, momentum)`` (the clearer way to sweep optimizer
        hyperparameters; keep the same factory object across calls to reuse the compilation).
        Default: the model's ``default_optimizer()`` or `ufm.solve.default_optimizer()`.
      record_every: also record a history (objective, stationarity, metrics) every this many
        steps. Default: final values only.
      checkpoint: a directory; every finished chunk is written there atomically (temporary
        file, fsync, rename). Calling `sweep` again with the same arguments after a crash or
        kill resumes from the finished chunks and gives results identical to an uninterrupted
        sweep; a checkpoint of a different sweep raises ValueError (never mixed).
      zip_axes: groups of grid keys whose lists are tied (one axis, equal lengths) instead of
        crossed, e.g. ``[("lam_W", "lam_H")]``.
      tol: stop a run once its stationarity measure is <= tol (status CONVERGED).
      chunk_size: runs per compiled call. Each call's runs are padded (with copies of the last
        run) to a multiple of the device count and trimmed. Default: what fits
        `memory_budget`, a multiple of the device count.
      memory_budget: bytes for one chunk on each device. Default: half the free memory of an
        accelerator, a quarter of the free host memory on CPU (and at most 1024 runs per CPU
        device: a chunk is the unit of checkpointing, and larger ones gain nothing there).
      devices: the devices to shard the run axis over (a 1-D mesh). Default: ``jax.devices()``,
        every device of every process after ``jax.distributed.initialize()``.
      group_size: runs stepped together in one vmapped loop on each device; the groups of a
        chunk run one after another. Default: 1 on CPU (a run's arrays stay in cache and
        unbatched matrix products are the fastest there: 1.7x less CPU time than vmapping 32
        runs on B1), every run of the chunk on accelerators (one batched kernel per op).
      keep_params: also return the final parameters of every run (memory: runs x model size).
      progress: show a tqdm progress bar (run-steps done, runs done, rate, ETA) on stderr.
      on_chunk: called as ``on_chunk(chunks_done, chunks_total)`` after each chunk is done
        (and saved, with a checkpoint).

    Returns:
      A `Sweep`. A run that hits NaN/inf is frozen at its last finite iterate and marked in
      ``Sweep.diverged``; the other runs are unaffected.
    """
    t_start = time.perf_counter()
    plan = _plan(model, grid, seeds, steps, optimizer, record_every, tol, zip_axes, keep_params)
    if devices is None:
        devices = jax.devices()
    devices = list(devices)
    if not devices:
        raise ValueError("devices must not be empty")
    if memory_budget is not None and (
        isinstance(memory_budget, bool)
        or not isinstance(memory_budget, int | np.integer)
        or memory_budget < 1
    ):
        raise ValueError(f"memory_budget must be a number of bytes >= 1, got {memory_budget!r}")
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got progress={progress!r}")
    if group_size is not None and (
        isinstance(group_size, bool)
        or not isinstance(group_size, int | np.integer)
        or group_size < 1
    ):
        raise ValueError(f"group_size must be an integer >= 1 or None, got {group_size!r}")
    if on_chunk is not None and not callable(on_chunk):
        raise ValueError(f"on_chunk must be callable or None, got on_chunk={on_chunk!r}")
    n_dev = len(devices)
    R = len(plan.run_seeds)
    chunk = _chunking(plan, n_dev, chunk_size, memory_budget, devices)
    ckpt = None
    if checkpoint is not None:
        ckpt = _Checkpoint(checkpoint, plan.config, chunk, R, writer=jax.process_index() == 0)
        chunk = ckpt.chunk  # resume with the checkpoint's chunks, whatever the devices now
    n_chunks = -(-R // chunk)
    local = -(-chunk // n_dev)  # runs per device and call
    on_cpu = devices[0].platform == "cpu"
    if group_size is None:
        group = 1 if on_cpu else local
    else:
        group = min(int(group_size), local)
    local = -(-local // group) * group
    padded = local * n_dev  # each call's run axis: whole groups on every device

    mesh = Mesh(np.asarray(devices), (_RUN_AXIS,))
    st = _Static(
        treedef=plan.treedef,
        optimizer=plan.optimizer,
        is_factory=plan.is_factory,
        hparam_names=tuple(sorted(plan.hparams)),
        steps=plan.steps,
        record_every=plan.record_every,
        use_tol=plan.tol is not None,
        keep_params=plan.keep_params,
        group=group,
        vmap_init=not on_cpu,
        progress=progress,
        split_metrics=plan.record_every is None and hasattr(plan.model, "metrics"),
        mesh=mesh,
    )
    fn = _compiled_chunk(st)
    metrics_fn = _compiled_metrics(st) if st.split_metrics else None
    run_sharding = NamedSharding(mesh, P(_RUN_AXIS))
    replicated = NamedSharding(mesh, P())
    dtype = jnp.result_type(float)
    tol_arr = _to_global(np.asarray(plan.tol if plan.tol is not None else -1.0, dtype), replicated)

    bar = None
    lock = threading.Lock()
    reported: dict[int, int] = {}  # token (one per chunk) -> run-steps reported from inside
    tokens: list[int] = []
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(
            total=R * plan.steps,
            unit="step",
            unit_scale=True,
            desc=f"sweep {R} runs",
            dynamic_ncols=True,
            leave=True,
        )

    def sink_for(token):
        scale = jax.process_count()  # reports come from this process's devices only

        def sink(delta):
            with lock:
                reported[token] = reported.get(token, 0) + delta * scale
                bar.update(delta * scale)

        return sink

    def launch(k):
        """Dispatch chunk k (asynchronously) or load it from the checkpoint."""
        start, stop = k * chunk, min((k + 1) * chunk, R)
        out = ckpt.load(k, start, stop) if ckpt is not None else None
        if out is not None:
            return k, start, stop, None, out, 0
        token = next(_TOKENS)
        tokens.append(token)
        if bar is not None:
            with _PROGRESS_LOCK:
                _PROGRESS[token] = sink_for(token)
        idx = np.minimum(np.arange(start, start + padded), R - 1)  # pad: repeat the last run
        args = (
            [_to_global(x[idx], run_sharding) for x in plan.leaves],
            {n: _to_global(plan.hparams[n][idx], run_sharding) for n in st.hparam_names},
            _to_global(plan.run_seeds[idx].astype(np.int32), run_sharding),
            tol_arr,
            _to_global(np.asarray(token, np.int32), replicated),
        )
        if "memory" not in memory:
            key = (st, padded)
            if key not in _CALL_MEMORY:
                _CALL_MEMORY[key] = _call_memory(fn, args)
            memory["memory"] = _CALL_MEMORY[key]
        out = fn(*args)
        if metrics_fn is not None:  # compiled (the first time) while the loop runs
            out = dict(out)
            params = out["params"] if plan.keep_params else out.pop("params")
            out.update(metrics_fn(args[0], params))
        return k, start, stop, out, None, token

    parts: list[dict[str, np.ndarray]] = []
    resumed = 0
    pending = None
    memory: dict[str, int | None] = {}
    try:
        for k in range(n_chunks + 1):
            # dispatch chunk k before collecting chunk k - 1: the host work of one chunk
            # (transfer, checkpoint, progress) overlaps the computation of the next
            current = launch(k) if k < n_chunks else None
            if pending is not None:
                j, start, stop, device_out, out, token = pending
                if out is None:
                    out = _flatten_out(_to_host(device_out), stop - start)
                    if ckpt is not None:
                        ckpt.save(j, start, stop, out)
                else:
                    resumed += 1
                parts.append(out)
                if bar is not None:
                    with _PROGRESS_LOCK:
                        _PROGRESS.pop(token, None)
                    with lock:  # exact count: runs that stopped early, padding, other hosts
                        bar.update((stop - start) * plan.steps - reported.pop(token, 0))
                        bar.set_postfix_str(f"runs {stop}/{R}, chunk {j + 1}/{n_chunks}")
                if on_chunk is not None:
                    on_chunk(j + 1, n_chunks)
            pending = current
    finally:
        with _PROGRESS_LOCK:
            for token in tokens:
                _PROGRESS.pop(token, None)
        if bar is not None:
            bar.close()

    res = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    shape = plan.shape

    def grab(prefix):
        n = len(prefix)
        return {
            k[n:]: v.reshape(shape + v.shape[1:]) for k, v in res.items() if k.startswith(prefix)
        }

    params = None
    if plan.keep_params:
        leaves = [
            res[f"params/{i}"].reshape(shape + res[f"params/{i}"].shape[1:])
            for i in range(sum(1 for k in res if k.startswith("params/")))
        ]
        params_def = jax.tree_util.tree_structure(
            jax.eval_shape(plan.model.init, jax.random.key(0))
        )
        params = jax.tree_util.tree_unflatten(params_def, leaves)
    meta = {
        "config": plan.config,
        "config_hash": config_hash(plan.config),
        "grid_order": list(plan.grid),
        "model": plan.config["model"],
        "versions": _versions(),
        "devices": [str(d) for d in devices],
        "processes": jax.process_count(),
        "chunk_size": chunk,
        "group_size": group,
        "chunks": n_chunks,
        "resumed_chunks": resumed,
        "bytes_per_device_and_call": memory.get("memory"),
        "seconds": time.perf_counter() - t_start,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return Sweep(
        model=plan.model,
        axes=list(plan.axes),
        grid=dict(plan.grid),
        seeds=plan.seeds,
        steps=plan.steps,
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


_CALL_MEMORY: dict[Any, int | None] = {}  # (static configuration, call size) -> bytes


def _call_memory(fn, args) -> int | None:
    """Bytes one compiled call needs on a device (arguments, outputs, temporaries), as XLA
    reports it; None where the backend does not say."""
    try:
        m = fn.lower(*args).compile().memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - a report, never a failure
        return None


def _flatten_out(res: dict, n: int) -> dict[str, np.ndarray]:
    """Host outputs of one chunk, trimmed to its n real runs; parameters as params/<i>."""
    out = {}
    for k, v in res.items():
        if k == "params":
            for i, leaf in enumerate(jax.tree.leaves(v)):
                out[f"params/{i}"] = np.asarray(leaf)[:n]
        else:
            out[k] = np.asarray(v)[:n]
    return out


# ----------------------------------------------------------------------------------------------
# Sweeps described in TOML files (`ufm sweep CONFIG.toml`)
# ----------------------------------------------------------------------------------------------
_MODELS = ("UFM", "LayerPeeled", "NormalizedUFM", "ExtendedUFM")
_TABLES = ("model", "optimizer", "grid", "sweep")
_SWEEP_KEYS = ("seeds", "steps", "record_every", "tol", "zip", "chunk_size", "checkpoint", "out")


class ConfigError(ValueError):
    """A sweep configuration file that cannot be run (the message names file, table and key)."""


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sweep configuration file (TOML) into the arguments of `sweep`.

    Schema (tables and keys; only ``[model]`` with ``type`` and ``[sweep]`` with ``steps`` are
    required)::

        x64 = false                   # top level: run in float64 (default float32)

        [model]                       # the model and its fixed constructor arguments
        type = "UFM"                  # UFM | LayerPeeled | NormalizedUFM | ExtendedUFM
        K = 10
        d = 64
        n = 50                        # an int, or a list of per-class counts
        loss = "ce"

        [optimizer]                   # optional; default: the model's default (L-BFGS for UFM)
        name = "sgd"                  # an optax function: sgd, adam, adamw, lbfgs, ...
        momentum = 0.9                # its fixed arguments

        [grid]                        # a list is an axis, a number a fixed value; keys are the
        lam_W = [1e-4, 5e-4, 1e-3]    # model's hyperparameters or the optax function's arguments
        learning_rate = [0.1, 0.5]

        [sweep]
        seeds = 8                     # a count (seeds 0..7) or a list of seeds
        steps = 1000
        record_every = 100            # optional: keep a history
        tol = 1e-9                    # optional: stop at this stationarity
        zip = [["lam_W", "lam_H"]]    # optional: tie these axes
        chunk_size = 256              # optional: runs per compiled call
        checkpoint = "runs/ce.ckpt"   # optional: resumable
        out = "ce_sweep.npz"          # where to save (default: CONFIG with .npz)

    Relative paths are relative to the configuration file. Returns a dict with ``model_type``,
    ``model_args``, ``x64``, ``out`` and the keyword arguments of `sweep` (``grid``, ``seeds``,
    ``steps``, ``optimizer`` (a factory), ...). Raises `ConfigError` (a ValueError) naming the
    file, the table, the key and the allowed values.
    """
    import tomllib

    path = os.fspath(path)
    where = os.path.basename(path)

    def fail(msg):
        raise ConfigError(f"{where}: {msg}")

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        fail("no such file")
    except tomllib.TOMLDecodeError as e:
        fail(f"invalid TOML: {e}")
    for key, value in raw.items():
        if key == "x64":
            if not isinstance(value, bool):
                fail(f"x64 must be true or false, got {value!r}")
        elif key not in _TABLES:
            fail(f"unknown table or key {key!r}; allowed: {', '.join(_TABLES)}, x64")
        elif not isinstance(value, dict):
            fail(f"{key!r} must be a table [{key}], got {value!r}")
    if "model" not in raw:
        fail("missing table [model] (with type = one of " + ", ".join(_MODELS) + ")")
    model_args = dict(raw["model"])
    model_type = model_args.pop("type", None)
    if model_type not in _MODELS:
        fail(f"[model] type must be one of {list(_MODELS)}, got {model_type!r}")
    model_args = {k: tuple(v) if isinstance(v, list) else v for k, v in model_args.items()}

    optimizer = None
    opt_args: list[str] = []
    if "optimizer" in raw:
        table = dict(raw["optimizer"])
        name = table.pop("name", None)
        fn = getattr(optax, name, None) if isinstance(name, str) else None
        if not callable(fn) or name.startswith("_") or isinstance(fn, type):
            fail(
                f"[optimizer] name must be an optax optimizer (sgd, adam, lbfgs, ...), got {name!r}"
            )
        opt_args, _ = _optimizer_params(fn)
        for k in table:
            if k not in opt_args:
                fail(f"unknown key [optimizer] {k!r}; optax.{name} takes {', '.join(opt_args)}")
        optimizer = functools.partial(fn, **table) if table else fn

    grid = dict(raw.get("grid", {}))
    if "optimizer" in raw:
        for k in grid:
            if k in raw["optimizer"]:
                fail(f"[grid] {k!r} is also set in [optimizer]; give it in one place")
    for k, v in grid.items():
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        ok = ok or (isinstance(v, list) and len(v) > 0)
        if not ok:
            fail(f"[grid] {k!r} must be a number (fixed) or a non-empty list (an axis), got {v!r}")

    table = dict(raw.get("sweep", {}))
    for k in table:
        if k not in _SWEEP_KEYS:
            fail(f"unknown key [sweep] {k!r}; allowed: {', '.join(_SWEEP_KEYS)}")
    if "steps" not in table:
        fail("missing key [sweep] steps (an integer >= 1)")
    base = os.path.dirname(os.path.abspath(path))

    def rel(p):
        if not isinstance(p, str):
            fail(f"paths must be strings, got {p!r}")
        return p if os.path.isabs(p) else os.path.join(base, p)

    out = table.pop("out", None)
    out = rel(out) if out is not None else os.path.splitext(os.path.abspath(path))[0] + ".npz"
    kwargs = {
        "grid": grid,
        "seeds": table.pop("seeds", 1),
        "steps": table.pop("steps"),
        "optimizer": optimizer,
        "record_every": table.pop("record_every", None),
        "tol": table.pop("tol", None),
        "zip_axes": [tuple(g) for g in table.pop("zip", [])],
        "chunk_size": table.pop("chunk_size", None),
    }
    if "checkpoint" in table:
        kwargs["checkpoint"] = rel(table.pop("checkpoint"))
    return {
        "model_type": model_type,
        "model_args": model_args,
        "x64": raw.get("x64", False),
        "out": out,
        "sweep": kwargs,
    }
