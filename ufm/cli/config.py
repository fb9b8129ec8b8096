"""Sweeps described in TOML files (`ufm sweep CONFIG.toml`, `ufm run CONFIG.toml`): the schema,
and the reader that turns a file into the arguments of `ufm.sweep` or fails naming the file,
the table and the key."""

from __future__ import annotations

import functools
import os
from typing import Any

import optax

from ufm.sweep.plan import optimizer_params

__all__ = ["ConfigError", "read_config"]

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
    path = os.fspath(path)
    where = os.path.basename(path)

    def fail(msg):
        raise ConfigError(f"{where}: {msg}")

    raw = _read_toml(path, fail)
    if "model" not in raw:
        fail("missing table [model] (with type = one of " + ", ".join(_MODELS) + ")")
    model_args = dict(raw["model"])
    model_type = model_args.pop("type", None)
    if model_type not in _MODELS:
        fail(f"[model] type must be one of {list(_MODELS)}, got {model_type!r}")
    model_args = {k: tuple(v) if isinstance(v, list) else v for k, v in model_args.items()}
    optimizer = _optimizer(raw.get("optimizer"), fail)
    grid = _grid(raw.get("grid", {}), raw.get("optimizer", {}), fail)
    out, kwargs = _sweep_table(raw.get("sweep", {}), path, fail)
    return {
        "model_type": model_type,
        "model_args": model_args,
        "x64": raw.get("x64", False),
        "out": out,
        "sweep": {"grid": grid, "optimizer": optimizer, **kwargs},
    }


def _read_toml(path: str, fail) -> dict:
    """The file's top level: known tables and ``x64`` only."""
    import tomllib

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
    return raw


def _optimizer(table: dict | None, fail):
    """[optimizer]: an optax function with its fixed arguments bound (None: the default)."""
    if table is None:
        return None
    table = dict(table)
    name = table.pop("name", None)
    fn = getattr(optax, name, None) if isinstance(name, str) else None
    if not callable(fn) or name.startswith("_") or isinstance(fn, type):
        fail(f"[optimizer] name must be an optax optimizer (sgd, adam, lbfgs, ...), got {name!r}")
    opt_args, _ = optimizer_params(fn)
    for k in table:
        if k not in opt_args:
            fail(f"unknown key [optimizer] {k!r}; optax.{name} takes {', '.join(opt_args)}")
    return functools.partial(fn, **table) if table else fn


def _grid(grid: dict, optimizer_table: dict, fail) -> dict:
    """[grid]: numbers (fixed values) and non-empty lists (axes), none also in [optimizer]."""
    for k, v in grid.items():
        if k in optimizer_table:
            fail(f"[grid] {k!r} is also set in [optimizer]; give it in one place")
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        ok = ok or (isinstance(v, list) and len(v) > 0)
        if not ok:
            fail(f"[grid] {k!r} must be a number (fixed) or a non-empty list (an axis), got {v!r}")
    return dict(grid)


def _sweep_table(table: dict, path: str, fail) -> tuple[str, dict]:
    """[sweep]: (where to save, the remaining keyword arguments of `ufm.sweep`); relative paths
    are relative to the configuration file."""
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

    table = dict(table)
    out = table.pop("out", None)
    out = rel(out) if out is not None else os.path.splitext(os.path.abspath(path))[0] + ".npz"
    kwargs = {
        "seeds": table.pop("seeds", 1),
        "steps": table.pop("steps"),
        "record_every": table.pop("record_every", None),
        "tol": table.pop("tol", None),
        "zip_axes": [tuple(g) for g in table.pop("zip", [])],
        "chunk_size": table.pop("chunk_size", None),
    }
    if "checkpoint" in table:
        kwargs["checkpoint"] = rel(table.pop("checkpoint"))
    return out, kwargs
