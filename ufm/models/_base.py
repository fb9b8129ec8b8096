"""What every ufm model shares: pytree registration (hyperparameters are leaves, structure is
static) and plain-Python validation of constructor arguments, run before anything is traced."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def register_model(leaves: Sequence[str]):
    """Class decorator: register a frozen dataclass as a pytree.

    Fields named in `leaves` are pytree leaves (numeric hyperparameters, so that one compiled
    function serves every value and `vmap` can batch them); all other fields are static aux data
    (shapes and code choices). Unflattening bypasses ``__init__``, so validation in
    ``__post_init__`` runs only when a user builds a model, never on tracers.
    """

    def wrap(cls):
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(leaves) - set(names)
        if unknown:
            raise TypeError(f"{cls.__name__}: leaves {sorted(unknown)} are not fields")
        meta = [k for k in names if k not in leaves]

        def flatten_with_keys(m):
            children = [(jax.tree_util.GetAttrKey(k), getattr(m, k)) for k in leaves]
            return children, tuple(getattr(m, k) for k in meta)

        def unflatten(aux, children):
            m = object.__new__(cls)
            for k, v in zip(meta, aux, strict=True):
                object.__setattr__(m, k, v)
            for k, v in zip(leaves, children, strict=True):
                object.__setattr__(m, k, v)
            return m

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten)
        cls._leaves = tuple(leaves)
        return cls

    return wrap


def is_concrete(x) -> bool:
    """True for values that can be checked in Python (numbers, NumPy or concrete JAX arrays)."""
    return not isinstance(x, jax.core.Tracer)


def check_int(name: str, value, minimum: int) -> int:
    """An integer >= minimum, else ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)


def check_real(name: str, value, minimum: float = 0.0, strict: bool = False):
    """A finite real >= minimum (> minimum if strict), checked elementwise when concrete.

    Returns the value unchanged (arrays stay arrays so a model can carry a batch of values).
    """
    if not is_concrete(value):
        return value
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {name}={value!r}") from None
    bad = ~np.isfinite(arr) | ((arr <= minimum) if strict else (arr < minimum))
    if np.any(bad):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {op} {minimum}, got {name}={value!r}")
    return float(arr) if arr.ndim == 0 and not hasattr(value, "shape") else value


def check_choice(name: str, value, allowed: Sequence[str]) -> str:
    """One of the allowed strings, else ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {name}={value!r}")
    return value


def class_counts(n, K: int) -> tuple[int, ...]:
    """Per-class sample counts: an int n (balanced) or a length-K sequence of positive ints."""
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        return (check_int("n", n, 1),) * K
    if isinstance(n, (str, bytes)) or not isinstance(n, Sequence | np.ndarray):
        raise ValueError(f"n must be an int or a length-K sequence of ints, got n={n!r}")
    counts = tuple(n)
    if len(counts) != K:
        raise ValueError(f"n must have length K={K} when a sequence, got len(n)={len(counts)}")
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
            raise ValueError(f"n must hold integers >= 1 (one count per class), got n={n!r}")
    return tuple(int(c) for c in counts)


def frobenius_sq(x) -> jax.Array:
    """||x||_F^2."""
    return (x * x).sum()


def is_balanced(counts: tuple[int, ...]) -> bool:
    return len(set(counts)) == 1


class ClassLayout:
    """Mixin for models with K classes of ``n`` samples each (an int) or per-class counts (a
    tuple): the columns of H are ordered class by class."""

    @property
    def counts(self) -> tuple[int, ...]:
        """Samples per class, (n_1, ..., n_K)."""
        return (self.n,) * self.K if isinstance(self.n, int) else self.n

    @property
    def balanced(self) -> bool:
        return isinstance(self.n, int)

    @property
    def N(self) -> int:
        """Total number of samples."""
        return sum(self.counts)

    @property
    def labels(self) -> jax.Array:
        """(N,) int class of each column of H, in blocks: n_1 zeros, n_2 ones, ..."""
        return jnp.asarray(np.repeat(np.arange(self.K), self.counts))

    @property
    def targets(self) -> jax.Array:
        """(N, K) one-hot target of each sample (the rows of Y^T)."""
        return jax.nn.one_hot(self.labels, self.K)
