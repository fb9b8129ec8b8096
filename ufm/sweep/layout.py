"""Where the runs of a sweep go: chunks sized to a memory budget, each chunk's run axis sharded
over the devices of a 1-D mesh (and hosts), groups of runs per vmapped loop, host <-> device."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ufm._static import Static
from ufm.sweep.kernel import RUN_AXIS
from ufm.sweep.plan import Plan, cached

__all__ = ["Layout", "check_devices", "chunk_size_for", "make_layout", "to_global", "to_host"]

_CPU_MAX_CHUNK = 1024  # default cap of runs per CPU device and chunk (checkpoint granularity)
_CPU_GROUP_BYTES = 2 << 20  # loop states of one group of runs on CPU: about a core's L2 cache


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one sweep's R runs are laid out."""

    devices: list
    mesh: Mesh  # 1-D, axis RUN_AXIS
    chunk: int  # runs per compiled call (the last chunk may be shorter)
    n_chunks: int
    group: int  # runs per vmapped loop on a device
    padded: int  # each call's run axis: whole groups on every device (copies of the last run)
    on_cpu: bool

    @property
    def runs(self) -> NamedSharding:
        """Sharding of a per-run array."""
        return NamedSharding(self.mesh, P(RUN_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())


def _check_count(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 or None, got {name}={value!r}")


def check_devices(devices: Sequence[jax.Device] | None) -> list:
    """The devices to use: every device of every process by default."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    return devices


def state_bytes(plan: Plan) -> int:
    """Bytes of one run's loop state: parameters, gradient and optimizer state."""
    hp = tuple(sorted((k, float(v[0])) for k, v in plan.hparams.items()))
    return cached(_state_bytes, plan.model, Static(plan.optimizer), plan.is_factory, hp)


@functools.lru_cache(maxsize=256)
def _state_bytes(model, optimizer: Static, is_factory, hp) -> int:
    params = jax.eval_shape(model.init, jax.random.key(0))
    tx = optimizer.value(**dict(hp)) if is_factory else optimizer.value
    state = jax.eval_shape(tx.init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((params, params, state)))


def _bytes_per_run(plan: Plan) -> int:
    """An estimate of the memory one run needs inside a chunk: its loop state about four times
    over (proposal, temporaries), plus history rows."""
    return int(4 * state_bytes(plan) + 64 * 8 + plan.rows * 64 * 8)


def _default_budget(device) -> int:
    """Half the free memory of an accelerator; a quarter of the free host memory on CPU."""
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


def chunk_size_for(plan: Plan, devices: list, chunk_size, memory_budget) -> int:
    """Runs per chunk: `chunk_size`, else what fits `memory_budget` bytes per device (a
    multiple of the device count; at most 1024 runs per CPU device), at most every run."""
    _check_count("chunk_size", chunk_size)
    if memory_budget is not None and (
        isinstance(memory_budget, bool)
        or not isinstance(memory_budget, int | float | np.integer)
        or memory_budget < 1
    ):
        raise ValueError(f"memory_budget must be a number of bytes >= 1, got {memory_budget!r}")
    R, n_dev = len(plan.run_seeds), len(devices)
    if chunk_size is not None:
        return min(int(chunk_size), R)
    per_device = _default_budget(devices[0]) if memory_budget is None else memory_budget
    chunk = max(1, int(per_device * n_dev // _bytes_per_run(plan)))
    if devices[0].platform == "cpu":
        chunk = min(chunk, _CPU_MAX_CHUNK * n_dev)
    chunk = -(-chunk // n_dev) * n_dev  # a multiple of the device count
    return min(chunk, R)


def make_layout(n_runs: int, devices: list, chunk: int, group_size, run_bytes: int) -> Layout:
    """The layout of `n_runs` runs in chunks of `chunk` over `devices`, `group_size` runs per
    vmapped loop (default: every run of the device's shard on accelerators; on CPU as many
    runs as have their loop states, `run_bytes` each, within `_CPU_GROUP_BYTES`, at least one:
    a group's arrays then stay in a core's cache)."""
    _check_count("group_size", group_size)
    n_dev = len(devices)
    local = -(-chunk // n_dev)  # runs per device and call
    on_cpu = devices[0].platform == "cpu"
    if group_size is None:
        group = max(1, min(local, _CPU_GROUP_BYTES // max(run_bytes, 1))) if on_cpu else local
    else:
        group = min(int(group_size), local)
    local = -(-local // group) * group
    return Layout(
        devices=devices,
        mesh=Mesh(np.asarray(devices), (RUN_AXIS,)),
        chunk=chunk,
        n_chunks=-(-n_runs // chunk),
        group=group,
        padded=local * n_dev,
        on_cpu=on_cpu,
    )


def to_global(x: np.ndarray, sharding) -> jax.Array:
    """A global array from a host array (each process supplies the shards of its devices)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_host(tree):
    """Host copies of global arrays (gathered from every process when there are several)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, tree)
