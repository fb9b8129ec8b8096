"""Test configuration: float64 everywhere (closed-form tests need it), silent broadcasting is an
error, a reproducible PRNG key, and compiled code released after each test module."""

import os

# one JAX CPU device, as the tests' expectations of chunks and layouts assume; the default (one
# device per core) and the multi-device layouts are tested in subprocesses
os.environ.setdefault("UFM_CPU_DEVICES", "1")

import gc  # noqa: E402

import jax  # noqa: E402
import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")  # figures are smoke-tested headless

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop every compiled executable after a module: each maps pages of machine code, and the
    whole suite in one process would otherwise pass Linux's default limit of 65530 memory maps
    per process (vm.max_map_count), where XLA's next compilation crashes."""
    yield
    jax.clear_caches()
    gc.collect()
