"""Sweep files: one ``.npz`` of plain NumPy arrays (no pickle) with the metadata as JSON in its
entry ``meta.json``; `save_sweep` writes one atomically, `load_sweep` reads it back."""

from __future__ import annotations

import importlib
import json
import os
import platform
from typing import Any

import jax
import numpy as np

from ufm.sweep.checkpoint import FORMAT, atomic_write
from ufm.sweep.plan import is_axis_value, jsonable
from ufm.sweep.result import Sweep

__all__ = ["save_sweep", "load_sweep", "versions"]


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a sweep's numbers depend on."""
    out = {"python": platform.python_version()}
    for name in ("ufm", "jax", "jaxlib", "optax", "numpy"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = "?"
    return out


def save_sweep(sw: Sweep, path: str | os.PathLike) -> str:
    """Write `sw` to ``path`` (``.npz`` appended if missing); returns the path written.

    Entries: ``seeds``, ``objective``, ``grad_norm``, ``steps_taken``, ``status``,
    ``grid/<key>``, ``metrics/<key>``, ``history/<key>``, ``params/<keypath>`` and ``meta.json``
    (model, axes, fixed grid values, step budget, optimizer, versions, configuration hash).
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    arrays = {
        "seeds": sw.seeds,
        "objective": sw.objective,
        "grad_norm": sw.grad_norm,
        "steps_taken": sw.steps_taken,
        "status": sw.status,
    }
    for name, value in sw.grid.items():
        arrays[f"grid/{name}"] = np.asarray(value)
    arrays.update({f"metrics/{k}": v for k, v in sw.metrics.items()})
    if sw.history is not None:
        arrays.update({f"history/{k}": v for k, v in sw.history.items()})
    if sw.params is not None:
        for kp, leaf in jax.tree_util.tree_flatten_with_path(sw.params)[0]:
            arrays[f"params/{jax.tree_util.keystr(kp)}"] = np.asarray(leaf)
    meta = dict(sw.meta)
    meta.update(
        format=FORMAT,
        axes=[list(a) for a in sw.axes],
        grid_fixed={k: jsonable(v) for k, v in sw.grid.items() if not is_axis_value(v)},
        max_steps=sw.max_steps,
        record_every=sw.record_every,
        tol=sw.tol,
        optimizer=sw.optimizer,
    )
    arrays["meta.json"] = np.asarray(json.dumps(meta, sort_keys=True))
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def _read(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, metadata) of a sweep file; ValueError naming the file when it is not one."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data.pop("meta.json")))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated, corrupted or foreign files
        raise ValueError(
            f"{path} is not a readable ufm sweep file ({type(e).__name__}: {e}); "
            "it may be truncated or corrupted"
        ) from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} is not a ufm sweep file (format {got!r})")
    return data, meta


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read a sweep written by `Sweep.save` (the model is rebuilt when its class is importable).

    Raises FileNotFoundError for a missing file and ValueError naming the file when it is
    truncated, corrupted or not a sweep file.
    """
    path = os.fspath(path)
    data, meta = _read(path)

    def group(prefix):
        return {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}

    try:
        grid: dict[str, Any] = {}
        for name in meta["grid_order"]:
            grid[name] = data.get(f"grid/{name}")
            if name in meta["grid_fixed"]:
                grid[name] = meta["grid_fixed"][name]
        model = _rebuild_model(meta.get("model"))
        params = _restore_params(model, group("params/")) if group("params/") else None
        return Sweep(
            model=model,
            axes=[tuple(a) for a in meta["axes"]],
            grid=grid,
            seeds=data["seeds"],
            max_steps=meta["max_steps"] if "max_steps" in meta else meta["steps"],
            record_every=meta["record_every"],
            tol=meta["tol"],
            optimizer=meta["optimizer"],
            objective=data["objective"],
            grad_norm=data["grad_norm"],
            steps_taken=data["steps_taken"],
            status=data["status"],
            metrics=group("metrics/"),
            history=group("history/") or None,
            params=params,
            meta=meta,
        )
    except KeyError as e:
        raise ValueError(f"{path} is an incomplete ufm sweep file: no entry {e}") from None


def _rebuild_model(meta):
    """The model described by `ufm.sweep.plan.model_meta`, or None when it cannot be rebuilt."""
    if not meta or "fields" not in meta:
        return None
    try:
        mod, _, name = meta["class"].rpartition(".")
        cls = getattr(importlib.import_module(mod), name)
        tup = lambda v: tuple(tup(x) for x in v) if isinstance(v, list) else v  # noqa: E731
        return cls(**{k: tup(v) for k, v in meta["fields"].items()})
    except Exception:  # noqa: BLE001 - a model that cannot be rebuilt is reported as None
        return None


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
