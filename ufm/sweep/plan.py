"""Planning a sweep: every argument checked in plain Python before anything is traced, the grid
laid out as per-run inputs (model leaves and optimizer hyperparameters, seed fastest), and the
sweep's identity (a JSON configuration whose hash keys its checkpoints)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ufm._static import Static
from ufm.loop import history_capacity
from ufm.solve import check_steps, check_tol, optimizer_for

__all__ = ["Plan", "make_plan", "config_hash", "optimizer_params", "describe"]

_MAX_SEED = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated sweep: per-run inputs (host arrays) and the static configuration."""

    model: Any
    treedef: Any
    leaves: list[np.ndarray]  # per model leaf, (R, *shape)
    hparams: dict[str, np.ndarray]  # optimizer hyperparameter -> (R,)
    run_seeds: np.ndarray  # (R,)
    axes: list[tuple[str, ...]]
    grid: dict[str, Any]  # key -> values along its axis, or its fixed value
    seeds: np.ndarray  # (S,)
    shape: tuple[int, ...]  # (axis lengths..., S)
    optimizer: Any  # a GradientTransformation (fixed) or a factory
    is_factory: bool
    max_steps: int
    record_every: int | None
    tol: float | None
    keep_params: bool
    config: dict  # JSON-able identity of the sweep (hashed for checkpoints)
    rows: int  # history rows kept per run: 0 without record_every, else a power of 2 >= T


# ----------------------------------------------------------------------------------------------
# Small helpers shared by the planner, the files and the CLI
# ----------------------------------------------------------------------------------------------
def is_axis_value(v) -> bool:
    """A grid value that makes an axis (a list, tuple or array of rank >= 1)."""
    return isinstance(v, list | tuple | np.ndarray | jax.Array) and np.ndim(v) >= 1


def jsonable(v):
    """`v` with arrays and NumPy scalars as lists and Python numbers."""
    if isinstance(v, np.ndarray | jax.Array):
        return np.asarray(v).tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple | list):
        return [jsonable(x) for x in v]
    return v


def describe(fn) -> str:
    """``module.qualname`` of a function, or ``partial(...)`` with its bound arguments."""
    if isinstance(fn, functools.partial):
        args = ", ".join([*map(repr, fn.args), *(f"{k}={v!r}" for k, v in fn.keywords.items())])
        return f"partial({describe(fn.func)}, {args})"
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{mod}.{name}" if mod else name


def optimizer_params(factory) -> tuple[list[str], list[str]]:
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


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of a sweep configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


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


def model_meta(model) -> dict:
    """A JSON description of a model: class, repr, dataclass fields, pytree structure."""
    cls = type(model)
    meta = {"class": f"{cls.__module__}.{cls.__qualname__}", "repr": repr(model)}
    if dataclasses.is_dataclass(model):
        meta["fields"] = {
            f.name: jsonable(getattr(model, f.name)) for f in dataclasses.fields(model)
        }
    meta["structure"] = re.sub(r" at 0x[0-9a-f]+", "", str(jax.tree_util.tree_structure(model)))
    return meta


# ----------------------------------------------------------------------------------------------
# The optimizer: default, factory checks, fingerprint
# ----------------------------------------------------------------------------------------------
def _check_optimizer(model, optimizer, grid, fields) -> tuple[Any, bool]:
    """(optimizer, is_factory): the model's default when None; a factory's grid keys and
    required parameters checked against its signature."""
    opt_keys = [k for k in grid if k not in fields]
    if optimizer is None:
        optimizer = optimizer_for(model)
    is_factory = not isinstance(optimizer, optax.GradientTransformation)
    if is_factory and not callable(optimizer):
        raise ValueError(
            "optimizer must be an optax GradientTransformation or a factory of one (a function "
            f"of its hyperparameters, e.g. optax.sgd), got optimizer={optimizer!r}"
        )
    if not is_factory:
        if opt_keys:
            raise ValueError(
                f"grid keys {opt_keys} are not leaves of {type(model).__name__} "
                f"({', '.join(fields)}); to sweep optimizer hyperparameters pass the optimizer as "
                "a factory, e.g. optimizer=optax.sgd with grid={'learning_rate': [...]}"
            )
        return optimizer, False
    names, required = optimizer_params(optimizer)
    bad = [k for k in opt_keys if k not in names]
    if bad:
        raise ValueError(
            f"grid keys {bad} are neither leaves of {type(model).__name__} "
            f"({', '.join(fields)}) nor parameters of the optimizer factory "
            f"{describe(optimizer)} ({', '.join(names) or 'none'})"
        )
    missing = [k for k in required if k not in grid]
    if missing:
        raise ValueError(
            f"the optimizer factory {describe(optimizer)} needs {missing}: give them in grid "
            "(a number for a fixed value, a list for an axis)"
        )
    return optimizer, True


def _trial_build(optimizer, hparams: dict[str, np.ndarray]) -> None:
    """Build the factory's optimizer once with concrete values (the first run's)."""
    trial = {k: float(v[0]) for k, v in hparams.items()}
    try:
        tx = optimizer(**trial)
    except Exception as e:  # noqa: BLE001 - reported with the values that caused it
        raise ValueError(
            f"the optimizer factory {describe(optimizer)} failed on {trial}: {e}"
        ) from e
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(
            f"the optimizer factory {describe(optimizer)} must return an optax "
            f"GradientTransformation, got {tx!r}"
        )


def cached(fn, *args):
    """fn(*args) through its lru_cache, or directly when an argument is unhashable."""
    try:
        hash(args)
    except TypeError:
        return fn.__wrapped__(*args)
    return fn(*args)


def _leaf_key(leaves) -> tuple:
    return tuple((x.dtype.str, x.shape, x.tobytes()) for x in leaves)


@functools.lru_cache(maxsize=256)
def _optimizer_fingerprint(key: Static, is_factory, names, model, leaf_key) -> str:
    """A description of the optimizer and a hash of its update as a jaxpr (literals included),
    stable across processes: equal for equal optimizers, different for different constants.
    (Cached by what the optimizer computes, `key`; `model` hashes by identity for dataclasses
    without eq, so `leaf_key` adds the values it depends on.)"""
    optimizer = key.value
    desc = describe(optimizer) if is_factory else "GradientTransformation"
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


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------
def _check_model(model) -> dict[str, list[int]]:
    """The model's leaf fields, after checking it has init/objective and numeric leaves."""
    for attr in ("init", "objective"):
        if not callable(getattr(model, attr, None)):
            raise ValueError(f"model must have a callable `{attr}` method, got model={model!r}")
    for kp, leaf in jax.tree_util.tree_flatten_with_path(model)[0]:
        number = isinstance(leaf, int | float | np.ndarray | np.generic | jax.Array)
        if not number or isinstance(leaf, bool):
            raise ValueError(
                f"model leaves must be numbers or arrays, got {jax.tree_util.keystr(kp)}={leaf!r}"
            )
    return _leaf_fields(model)


def _check_seeds(seeds) -> np.ndarray:
    """(S,) int64 seeds from a count or a sequence of distinct ints in [0, 2**31 - 1]."""
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1 or a sequence of ints, got {seeds!r}")
        return np.arange(int(seeds), dtype=np.int64)
    if not isinstance(seeds, Sequence | np.ndarray) or isinstance(seeds, str | bytes):
        raise ValueError(f"seeds must be an integer >= 1 or a sequence of ints, got {seeds!r}")
    seeds_list = list(np.asarray(seeds).ravel()) if isinstance(seeds, np.ndarray) else seeds
    if len(seeds_list) == 0:
        raise ValueError("seeds must not be empty")
    for s in seeds_list:
        if isinstance(s, bool) or not isinstance(s, int | np.integer) or not 0 <= s <= _MAX_SEED:
            raise ValueError(
                f"seeds must hold integers in [0, 2**31 - 1], got seeds={list(seeds_list)!r}"
            )
    if len(set(int(s) for s in seeds_list)) != len(seeds_list):
        raise ValueError(f"seeds must be distinct, got seeds={list(seeds_list)!r}")
    return np.asarray([int(s) for s in seeds_list], dtype=np.int64)


def _check_grid(grid) -> dict[str, Any]:
    grid = {} if grid is None else grid
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be a dict of key -> values, got grid={grid!r}")
    for name in grid:
        if not isinstance(name, str):
            raise ValueError(f"grid keys must be strings, got {name!r}")
    return dict(grid)


def _axes(grid: dict, zip_axes) -> list[tuple[str, ...]]:
    """The axes in the order of the grid's keys, a zipped group at the place of its first key."""
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
            if not is_axis_value(grid[name]):
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
        if is_axis_value(value):
            if len(value) == 0:
                raise ValueError(f"grid[{name!r}] is an empty list")
            axis = groups.get(name, (name,))
            if axis not in axes:
                axes.append(axis)
    return axes


def _grid_values(model, grid, axes, fields) -> tuple[list, dict, dict, list]:
    """Per grid point (C order over the axes) inputs, validated through the model's constructor.

    Each axis value (and the fixed values, once) builds a model, so a bad value raises the
    model's own ValueError naming the parameter.

    Returns:
      (leaves, hparams, grid_out, base_leaves): per model leaf (P, *shape) arrays and per
      optimizer hyperparameter (P,) arrays over the P grid points; key -> values along its axis
      or its fixed value; the leaves of the model with the fixed values.
    """
    fixed = {k: v for k, v in grid.items() if not is_axis_value(v)}
    for k, v in fixed.items():
        if k not in fields:
            _check_number(k, v)
    model_fixed = {k: v for k, v in fixed.items() if k in fields}
    base_model = _replace(model, model_fixed, fields) if model_fixed else model
    base_leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(base_model)]
    dtype = jnp.result_type(float)
    leaf_dtypes = [np.dtype(dtype) if x.dtype.kind == "f" else x.dtype for x in base_leaves]
    axis_shape = tuple(len(grid[a[0]]) for a in axes)
    n_grid = int(np.prod(axis_shape, dtype=np.int64))
    leaves = [
        np.broadcast_to(x.astype(t), (n_grid, *x.shape)).copy()
        for x, t in zip(base_leaves, leaf_dtypes, strict=True)
    ]
    hparams = {k: np.full((n_grid,), float(v), dtype) for k, v in fixed.items() if k not in fields}
    grid_index = np.indices(axis_shape).reshape(len(axes), -1) if axes else np.zeros((0, 1), int)
    grid_out: dict[str, Any] = dict(fixed)
    for names, idx in zip(axes, grid_index, strict=True):
        model_names = [n for n in names if n in fields]
        for n in names:
            if n not in fields:
                vals = np.asarray([_check_number(n, v) for v in grid[n]], dtype)
                hparams[n] = vals[idx]
                grid_out[n] = vals
        if model_names:
            per_value = [
                jax.tree_util.tree_leaves(
                    _replace(base_model, {n: grid[n][j] for n in model_names}, fields)
                )
                for j in range(len(grid[names[0]]))
            ]
            for n in model_names:
                for i in fields[n]:
                    vals = np.stack([np.asarray(pv[i], leaf_dtypes[i]) for pv in per_value])
                    leaves[i] = vals[idx]
                grid_out[n] = np.asarray([jsonable(v) for v in grid[n]])
    return leaves, hparams, {k: grid_out[k] for k in grid}, base_leaves


def make_plan(
    model, grid, seeds, max_steps, optimizer, record_every, tol, zip_axes, keep_params
) -> Plan:
    """Check every argument of `ufm.sweep` (ValueError naming the parameter) and lay the runs
    out: grid points in C order over the axes, each repeated over the seeds (seed fastest)."""
    fields = _check_model(model)
    max_steps, every = check_steps(max_steps, record_every)
    record_every = None if record_every is None else every
    tol = check_tol(tol)
    if not isinstance(keep_params, bool):
        raise ValueError(f"keep_params must be True or False, got keep_params={keep_params!r}")
    seeds_arr = _check_seeds(seeds)
    grid = _check_grid(grid)
    optimizer, is_factory = _check_optimizer(model, optimizer, grid, fields)
    axes = _axes(grid, zip_axes)
    leaves, hparams, grid_out, base_leaves = _grid_values(model, grid, axes, fields)
    if is_factory:
        _trial_build(optimizer, hparams)
    shape = tuple(len(grid[a[0]]) for a in axes) + (len(seeds_arr),)
    S, n_grid = shape[-1], int(np.prod(shape[:-1], dtype=np.int64))
    fingerprint = cached(
        _optimizer_fingerprint,
        Static(optimizer),
        is_factory,
        tuple(sorted(hparams)),
        model,
        _leaf_key(base_leaves),
    )
    config = {
        "model": model_meta(model),
        "leaves": [x.tolist() for x in base_leaves],
        "axes": [list(a) for a in axes],
        "grid": {k: jsonable(v) for k, v in grid_out.items()},
        "seeds": seeds_arr.tolist(),
        "steps": max_steps,
        "record_every": record_every,
        "tol": tol,
        "keep_params": keep_params,
        "dtype": np.dtype(jnp.result_type(float)).name,
        "optimizer": fingerprint,
    }
    return Plan(
        model=model,
        treedef=jax.tree_util.tree_structure(model),
        leaves=[np.repeat(x, S, axis=0) for x in leaves],
        hparams={k: np.repeat(v, S) for k, v in hparams.items()},
        run_seeds=np.tile(seeds_arr, n_grid),
        axes=axes,
        grid=grid_out,
        seeds=seeds_arr,
        shape=shape,
        optimizer=optimizer,
        is_factory=is_factory,
        max_steps=max_steps,
        record_every=record_every,
        tol=tol,
        keep_params=keep_params,
        config=config,
        rows=0 if record_every is None else history_capacity(max_steps, record_every),
    )
