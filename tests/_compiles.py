"""Counting XLA backend compilations (the event JAX reports for each executable it compiles)."""

import contextlib

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """A list that collects the duration of every backend compilation inside the block."""
    compiles: list[float] = []

    def listener(name, secs, **kwargs):
        if name == _EVENT:
            compiles.append(secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
