"""ufm._static: equal optax optimizers built twice are one static argument (one compilation);
any difference in hyperparameters, schedule or composition makes them differ."""

import jax
import jax.numpy as jnp
import optax
import pytest

from ufm._static import Static

SCHEDULE = optax.cosine_decay_schedule


@pytest.mark.parametrize(
    "make",
    [
        lambda: optax.sgd(0.5),
        lambda: optax.sgd(0.5, momentum=0.9, nesterov=True),
        lambda: optax.lbfgs(),
        lambda: optax.adam(SCHEDULE(1.0, 100)),
        lambda: optax.chain(optax.clip(1.0), optax.sgd(1.0)),
    ],
)
def test_equal_optimizers_are_equal(make):
    a, b = Static(make()), Static(make())
    assert a is not b and a.value is not b.value
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize(
    "a, b",
    [
        (lambda: optax.sgd(0.5), lambda: optax.sgd(0.4)),
        (lambda: optax.sgd(0.5), lambda: optax.sgd(0.5, momentum=0.9)),
        (lambda: optax.adam(SCHEDULE(1.0, 100)), lambda: optax.adam(SCHEDULE(1.0, 200))),
        (lambda: optax.sgd(0.5), lambda: optax.adam(0.5)),
        (lambda: optax.lbfgs(memory_size=10), lambda: optax.lbfgs(memory_size=5)),
    ],
)
def test_different_optimizers_differ(a, b):
    assert Static(a()) != Static(b())


def test_jit_compiles_once_for_equal_optimizers():
    traces = []

    def step(x, tx):
        traces.append(1)
        return tx.value.update(x, tx.value.init(x), x)[0]

    step = jax.jit(step, static_argnums=1)
    x = jnp.ones(3)
    for _ in range(3):
        step(x, Static(optax.sgd(0.5)))
    assert len(traces) == 1
    step(x, Static(optax.sgd(0.25)))
    assert len(traces) == 2
