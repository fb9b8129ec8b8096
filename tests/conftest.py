"""Test configuration: float64 everywhere (closed-form tests need it), silent broadcasting is an
error, and a reproducible PRNG key."""

import os

# one JAX CPU device, as the tests' expectations of chunks and layouts assume; the default (one
# device per core) and the multi-device layouts are tested in subprocesses
os.environ.setdefault("UFM_CPU_DEVICES", "1")

import jax  # noqa: E402
import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")  # figures are smoke-tested headless

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
