"""Helpers shared by the benchmark scripts: machine description, timing, tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import time


def set_host_devices(argv: list[str]) -> int | None:
    """Apply ``--host-devices N`` before JAX starts: N CPU devices (XLA_FLAGS), so that a sweep
    shards its runs over N cores. Returns N (None when absent)."""
    for i, a in enumerate(argv):
        if a == "--host-devices" and i + 1 < len(argv):
            n = int(argv[i + 1])
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
            return n
    return None


def environment() -> dict:
    import jax

    import ufm

    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "ufm": ufm.__version__,
        "devices": [str(d) for d in jax.devices()],
        "loadavg_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
    }
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        env["cpu"] = platform.processor()
    return env


def jax_matmul_gflops(size: int = 2048, repeats: int = 5, precision=None) -> float:
    """float32 matmul throughput of JAX on the default device (best of `repeats`); pass
    ``precision=jax.lax.Precision.HIGHEST`` on a GPU so that TF32 does not inflate the peak."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: jnp.matmul(a, a, precision=precision))
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def timed(fn):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def verdict(value: float, target: float, at_most: bool = False) -> str:
    """The verdict 'target >= T: meets' (or 'misses'); with at_most the target is an upper bound."""
    ok = value <= target if at_most else value >= target
    return f"target {'<=' if at_most else '>='} {target}: {'meets' if ok else 'misses'}"


def markdown(rows: list[list], head: list[str]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(head)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, cells)])  # fmt: skip


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = dict(data, loadavg_end=os.getloadavg())
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=float)
    print(f"\nwrote {path}")
