"""How ufm uses the machine: every CPU core as a JAX device, and JAX's persistent compilation cache.

**CPU cores.** XLA runs each CPU computation on one device; a sweep spreads its runs over devices,
so by default ``import ufm`` makes JAX see one CPU device per core (``jax_num_cpu_devices``, set
before JAX starts its backends). This is skipped when the user has already chosen: the
environment variable ``UFM_CPU_DEVICES`` (``UFM_CPU_DEVICES=1`` opts out), a
``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``, ``jax_num_cpu_devices`` set by hand,
or JAX backends already started (then JAX keeps what it has; ``cpu_devices_note()`` says why).

**Compilation cache.** `enable_compilation_cache` stores compiled executables on disk, so a new
process that solves a problem seen before skips XLA compilation; `compilation_cache` does the
same for the time of a block (the command line uses it for every command but ``bench``).

**Code that runs once per run** (a run's start, its final metrics) is compiled on CPU with fewer
LLVM passes (`once_options`): there compiling costs more than running.

**Compiling while tracing.** `compile_soon` compiles a lowered function in a background thread:
XLA compiles without Python's lock, so while the caller traces and lowers the next function of a
solve or a sweep, the previous one compiles on another core.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import jax

__all__ = [
    "enable_compilation_cache",
    "compilation_cache",
    "default_cache_dir",
    "cpu_devices_note",
    "once_options",
    "compile_soon",
]

_CACHE_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)

_NOTE = ["not set yet"]


def _use_every_cpu_core() -> None:
    """Ask JAX for one CPU device per core unless the user chose otherwise (module docstring)."""
    from jax._src import xla_bridge

    env = os.environ.get("UFM_CPU_DEVICES")
    if env is not None:
        count = _env_count(env)
        reason = f"UFM_CPU_DEVICES={env}"
    else:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        reason = "one per core"
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        _NOTE[0] = "left to XLA_FLAGS"
    elif jax.config.jax_num_cpu_devices != -1:
        _NOTE[0] = f"left to jax_num_cpu_devices={jax.config.jax_num_cpu_devices}"
    elif xla_bridge.backends_are_initialized():
        _NOTE[0] = "JAX had started before ufm was imported: one CPU device"
    else:
        jax.config.update("jax_num_cpu_devices", max(int(count or 1), 1))
        _NOTE[0] = f"{count} CPU devices ({reason})"


def _env_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"UFM_CPU_DEVICES must be an integer >= 1, got UFM_CPU_DEVICES={value!r}")
    return count


def cpu_devices_note() -> str:
    """How the number of JAX CPU devices was decided at ``import ufm``."""
    return _NOTE[0]


def default_cache_dir() -> str:
    """``$UFM_CACHE_DIR``, else ``$XDG_CACHE_HOME/ufm/jax``, else ``~/.cache/ufm/jax``."""
    if os.environ.get("UFM_CACHE_DIR"):
        return os.environ["UFM_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ufm", "jax")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Turn on JAX's persistent compilation cache in `path` (default `default_cache_dir()`).

    Every executable is cached, however fast it compiled (ufm's loops compile in 0.3-3 s, below
    JAX's default threshold of 1 s for some). Returns the directory used.
    """
    path = os.fspath(default_cache_dir() if path is None else path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@contextlib.contextmanager
def compilation_cache(path: str | os.PathLike | None = None) -> Iterator[str]:
    """`enable_compilation_cache` for the time of a ``with`` block (yields the directory); the
    previous settings are restored after it and JAX's cache is reopened with them."""
    from jax.experimental.compilation_cache.compilation_cache import reset_cache

    before = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
    reset_cache()  # JAX opens its cache once, at the first compilation after it is set
    try:
        yield enable_compilation_cache(path)
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        reset_cache()


_use_every_cpu_core()  # at import, before any other ufm module can start JAX's backends


def once_options(platform: str, random: bool) -> dict | None:
    """XLA compiler options for code that runs once per run, or None (the default, full
    optimisation) off CPU. On CPU: LLVM optimisation level 1 where it draws random numbers (the
    threefry hash runs 7x slower without LLVM's passes, for 30% more compile time than level 0:
    a start), else level 0 (half the default's compile time; e.g. final metrics)."""
    if platform != "cpu":
        return None
    return {"xla_backend_optimization_level": 1 if random else 0}


_COMPILERS = ThreadPoolExecutor(4, thread_name_prefix="ufm-compile")


def compile_soon(lowered: jax.stages.Lowered) -> Future:
    """``lowered.compile()`` started now in a background thread; the future's result is the
    compiled function (module docstring)."""
    return _COMPILERS.submit(lowered.compile)
