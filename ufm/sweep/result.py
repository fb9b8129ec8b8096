"""The results of a sweep: the `Sweep` container (arrays shaped grid axes x seeds) and its tables
(`Sweep.to_records`, one row per run; `Sweep.summary`, median and interval per grid point)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ufm.loop import RESULTS

__all__ = ["Sweep"]


@dataclasses.dataclass
class Sweep:
    """The results of `ufm.sweep`: arrays shaped ``shape = (len(axis_1), ..., len(axis_k), S)``,
    the grid axes in the order of the grid's keys (a zipped group at the place of its first
    key), then the seeds.

    Attributes:
      model: the base model (None when loaded from a file whose model cannot be rebuilt).
      axes: the axes, one tuple of grid keys each (two or more keys when zipped).
      grid: key -> the values along its axis, or the fixed value of a key given as a number.
      seeds: (S,) the seeds; run (..., s) starts from ``model.init(jax.random.key(seeds[s]))``.
      max_steps: the step budget of every run (the ``steps`` argument of `ufm.sweep`).
      record_every, tol: as passed to `ufm.sweep` (``tol`` None: no stopping test).
      optimizer: a description of the optimizer (its function name or repr).
      objective, grad_norm: final objective and stationarity measure of every run.
      steps_taken: optimizer steps each run took.
      status: a `ufm.loop.RESULTS` code per run: converged (0), max_steps (1), nonfinite (2).
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
    max_steps: int
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
    def steps(self) -> int:
        """Deprecated alias of `max_steps` (the step budget; the steps each run took are
        `steps_taken`)."""
        warnings.warn(
            "Sweep.steps is the step budget and is renamed Sweep.max_steps; the steps each run "
            "took are Sweep.steps_taken",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.max_steps

    @property
    def shape(self) -> tuple[int, ...]:
        """(grid axis lengths..., number of seeds)."""
        return self.objective.shape

    @property
    def diverged(self) -> np.ndarray:
        """True where a run hit NaN/inf (it was frozen at its last finite iterate)."""
        return self.status == RESULTS.nonfinite

    @property
    def converged(self) -> np.ndarray:
        """True where a run met the tolerance `tol`."""
        return self.status == RESULTS.converged

    def __repr__(self) -> str:
        axes = ", ".join(f"{'+'.join(a)}[{self.shape[i]}]" for i, a in enumerate(self.axes))
        n_div = int(self.diverged.sum())
        return (
            f"Sweep({type(self.model).__name__ if self.model is not None else '?'}: "
            f"{axes + ', ' if axes else ''}seed[{len(self.seeds)}], max_steps={self.max_steps}, "
            f"{self.objective.size} runs, {n_div} diverged)"
        )

    def save(self, path: str | os.PathLike) -> str:
        """Write the sweep to one ``.npz`` file (NumPy arrays, loadable without pickle) whose
        entry ``meta.json`` holds the JSON metadata: model, grid, seeds, step budget, optimizer,
        package versions and the configuration hash. Returns the path written; read it back
        with `ufm.load_sweep`."""
        from ufm.sweep.io import save_sweep

        return save_sweep(self, path)

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
            rec["status"] = RESULTS(int(self.status[index])).name
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
