"""Test configuration: float64 everywhere (closed-form tests need it), silent broadcasting is an
error, and a reproducible PRNG key."""

import jax
import matplotlib
import pytest

matplotlib.use("Agg")  # figures are smoke-tested headless

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
