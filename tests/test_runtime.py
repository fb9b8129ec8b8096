"""ufm.runtime: one JAX CPU device per core by default, the documented opt-outs, and the
persistent compilation cache (a second process compiles nothing it has seen). Each case runs in a
fresh interpreter, since the device count is fixed when JAX starts."""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os, sys
{before}
import jax, ufm
print(json.dumps([len(jax.devices("cpu")), ufm.runtime.cpu_devices_note()]))
"""


def _probe(before: str = "", **env) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if k not in ("UFM_CPU_DEVICES", "XLA_FLAGS")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        env={**full, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(json.loads(out.splitlines()[-1]))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_default_is_one_device_per_core():
    assert _probe() == (_cores(), f"{_cores()} CPU devices (one per core)")


@pytest.mark.parametrize(
    "before, env, devices, note",
    [
        ("", {"UFM_CPU_DEVICES": "1"}, 1, "1 CPU devices (UFM_CPU_DEVICES=1)"),
        ("", {"UFM_CPU_DEVICES": "3"}, 3, "3 CPU devices (UFM_CPU_DEVICES=3)"),
        ("", {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, 3, "left to XLA_FLAGS"),
        ("import jax; jax.numpy.ones(1)", {}, 1, "JAX had started before ufm was imported"),
    ],
)
def test_user_choices_win(before, env, devices, note):
    got_devices, got_note = _probe(before, **env)
    assert got_devices == devices and got_note.startswith(note)


def test_bad_device_count_names_the_variable():
    with pytest.raises(subprocess.CalledProcessError) as err:
        subprocess.run(
            [sys.executable, "-c", "import ufm"],
            env={**os.environ, "UFM_CPU_DEVICES": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
    assert "UFM_CPU_DEVICES must be an integer >= 1, got UFM_CPU_DEVICES='0'" in err.value.stderr


SOLVE = """
import jax, ufm
ufm.enable_compilation_cache({path!r})
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
ufm.solve(ufm.UFM(K=3, d=4, n=2), jax.random.key(0), steps=5)
print(events.count("/jax/compilation_cache/cache_misses"),
      events.count("/jax/compilation_cache/cache_hits"))
"""


def test_compilation_cache_serves_a_second_process(tmp_path):
    def run() -> tuple[int, int]:
        out = subprocess.run(
            [sys.executable, "-c", SOLVE.format(path=str(tmp_path))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        misses, hits = map(int, out.splitlines()[-1].split())
        return misses, hits

    misses, hits = run()
    assert misses > 0 and hits == 0 and any(tmp_path.iterdir())
    assert run() == (0, misses)  # every executable came from the disk cache
