"""The run axis sharded over devices: 4 forced host devices in one process, and 2 processes joined
by jax.distributed on localhost, give the numbers of one device. Each configuration runs in a
subprocess, since XLA_FLAGS and jax.distributed must be set before JAX starts its backend."""

import os
import socket
import subprocess
import sys

import numpy as np
import optax
import pytest

import ufm

MODEL = ufm.UFM(K=3, d=4, n=2, lam_W=1e-2, lam_H=1e-2, lam_b=1e-2)
GRID = {"lam_W": [1e-3, 1e-2], "learning_rate": [0.1, 0.3]}
KW = dict(seeds=2, steps=20, optimizer=optax.sgd, record_every=5, progress=False)
SAME = 1e-12  # float64; the same runs batched differently

HEADER = """
import os, sys
import jax
jax.config.update("jax_enable_x64", True)
import optax, ufm
MODEL = ufm.UFM(K=3, d=4, n=2, lam_W=1e-2, lam_H=1e-2, lam_b=1e-2)
GRID = {"lam_W": [1e-3, 1e-2], "learning_rate": [0.1, 0.3]}
KW = dict(seeds=2, steps=20, optimizer=optax.sgd, record_every=5, progress=False)
"""

FOUR_DEVICES = (
    HEADER
    + """
assert len(jax.devices()) == 4, jax.devices()
# 8 runs in chunks of 6: each call padded to 8 (a multiple of 4 devices), then trimmed
sw = ufm.sweep(MODEL, GRID, **KW, chunk_size=6)
assert sw.meta["chunks"] == 2 and len(sw.meta["devices"]) == 4
sw.save(sys.argv[1])
"""
)

TWO_PROCESSES = (
    HEADER
    + """
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
assert len(jax.devices()) == 2 and len(jax.local_devices()) == 1
sw = ufm.sweep(MODEL, GRID, **KW)
assert sw.meta["processes"] == 2
if jax.process_index() == 0:
    sw.save(sys.argv[1])
"""
)


@pytest.fixture(scope="module")
def one_device():
    return ufm.sweep(MODEL, GRID, **KW)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _assert_same(sw, ref):
    np.testing.assert_array_equal(sw.status, ref.status)
    np.testing.assert_array_equal(sw.steps_taken, ref.steps_taken)
    np.testing.assert_allclose(sw.objective, ref.objective, rtol=SAME)
    for k in ref.metrics:
        np.testing.assert_allclose(sw.metrics[k], ref.metrics[k], rtol=1e-9, atol=1e-12)
    for k in ref.history:
        np.testing.assert_allclose(sw.history[k], ref.history[k], rtol=1e-9, atol=1e-12)


def test_four_host_devices_give_the_numbers_of_one(one_device, tmp_path):
    script, out = tmp_path / "four.py", tmp_path / "four.npz"
    script.write_text(FOUR_DEVICES)
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _assert_same(ufm.load_sweep(out), one_device)


def test_two_processes_with_jax_distributed_give_the_numbers_of_one(one_device, tmp_path):
    script, out = tmp_path / "two.py", tmp_path / "two.npz"
    script.write_text(TWO_PROCESSES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(out), address, str(i)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        errors.append(err)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(errors)
    _assert_same(ufm.load_sweep(out), one_device)
