"""The public model protocol: subclass `Model`, mark hyperparameters with `leaf`, and ufm can
solve, sweep, checkpoint and check the objective.

A model is a frozen dataclass and a JAX pytree. Its fields are of two kinds:

- **leaves** (``lam: float = ufm.leaf(default=1e-3)``): numeric hyperparameters. They are the
  pytree's children, so one compiled function serves every value, `jax.vmap` batches them and
  `ufm.sweep` varies them without recompiling;
- **static** fields (every other field, optionally ``ufm.static(check=...)``): structure that
  changes shapes or code (K, d, n, the loss, the depth). They are the pytree's aux data, hashed
  into the compilation cache.

Checks run once, in plain Python, when a user builds a model: each field's ``check(name, value)``
(which may also normalise the value, e.g. a list of equal counts to an int), then the class hook
``__check__(self)``, which may validate across fields and return a mapping of normalised field
values. JAX rebuilds models from leaves without calling ``__init__``, so no check ever sees a
tracer from a compiled function; a leaf check must still accept tracers and batched arrays (the
built-in ones skip tracers and check arrays elementwise).

The protocol (what ufm calls; only ``init`` and ``objective`` are required):

    init(key) -> params                      a starting point (any pytree of arrays)
    objective(params) -> scalar              the function to minimise
    metrics(params) -> dict[str, scalar]     recorded by solve/sweep (default: none); keys of
                                             `ufm.nc_metrics` must mean what they mean there
    project(params) -> params                for constrained models: the Euclidean projection
                                             or retraction applied after every update
    value_and_grad(params) -> (f, grad)      a hand-derived gradient (default: autodiff)
    default_optimizer() -> optax transform   the optimizer `solve` uses when given none
    convex_form() -> ufm.ConvexForm          the objective as a convex problem in the logits
                                             Z = W H (for `ufm.certify`)

A model whose parameters are ``ufm.Params`` (W, H, b) and whose loss is a convex function of the
logit matrix W H + b 1^T can expose it with ``convex_form()``: a `ufm.ConvexForm` giving the loss
("ce": m lse(z) - <t, z> with targets t >= 0, or "mse"), one target column and weight per group of
exchangeable samples (atoms), the metric R of its feature penalty ||H R||^2, the weights or budgets
of ||W||^2 and ||H R||^2, and the bias. `ufm.certify` then solves the equivalent nuclear-norm
problem to a duality gap and returns a certified global optimum (docs/theory.md §15-§16);
`ufm.check` uses it when no closed form is known.

A minimal model::

    class Ridge(ufm.Model):
        K: int
        d: int
        lam: float = ufm.leaf(default=1e-3, lower=0.0)

        def init(self, key):
            return jax.random.normal(key, (self.K, self.d))

        def objective(self, W):
            return 0.5 * jnp.sum((W - 1.0) ** 2) + 0.5 * self.lam * jnp.sum(W**2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Model", "leaf", "static", "ClassLayout"]

_LEAF = "ufm.leaf"
_CHECK = "ufm.check"
_MISSING = dataclasses.MISSING


def leaf(
    default: Any = _MISSING,
    *,
    lower: float | None = None,
    upper: float | None = None,
    strict: bool = False,
    check: Callable[[str, Any], Any] | None = None,
) -> Any:
    """A hyperparameter field: a pytree leaf (vmappable, swept without recompiling).

    Args:
      default: the default value (omit for a required field).
      lower, upper: bounds checked elementwise on construction (``strict`` makes them open).
        Without bounds a leaf must still be a finite real.
      check: a custom ``check(name, value) -> value`` instead of the bounds; it must pass
        tracers through unchanged.
    """
    if check is None:
        check = real_check(lower, upper, strict)
    return dataclasses.field(default=default, metadata={_LEAF: True, _CHECK: check})


def static(default: Any = _MISSING, *, check: Callable[[str, Any], Any] | None = None) -> Any:
    """A structural field (static pytree aux data) with an optional ``check(name, value) ->
    value``; plain fields without `static` are static too, unchecked."""
    return dataclasses.field(default=default, metadata={_CHECK: check} if check else {})


class Model:
    """Base class of every ufm model: subclasses become frozen dataclasses and pytrees whose
    `leaf` fields are the children and whose other fields are static (see the module docstring
    for the protocol). Define ``__check__`` for validation across fields, not ``__post_init__``.
    """

    _leaves: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__post_init__" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: define __check__ instead of __post_init__")
        dataclasses.dataclass(frozen=True)(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        leaves = tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(_LEAF))
        statics = tuple(k for k in names if k not in leaves)
        cls._leaves = leaves

        def flatten_with_keys(m):
            children = [(jax.tree_util.GetAttrKey(k), getattr(m, k)) for k in leaves]
            return children, tuple(getattr(m, k) for k in statics)

        def unflatten(aux, children):
            m = object.__new__(cls)
            for k, v in zip(statics + leaves, tuple(aux) + tuple(children), strict=True):
                object.__setattr__(m, k, v)
            return m

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check = f.metadata.get(_CHECK)
            if check is not None:
                object.__setattr__(self, f.name, check(f.name, getattr(self, f.name)))
        for name, value in (self.__check__() or {}).items():
            object.__setattr__(self, name, value)

    def __check__(self) -> Mapping[str, Any] | None:
        """Validation across fields, run on construction after the field checks; may return
        normalised values of fields. Default: nothing to check."""
        return None

    def replace(self, **changes) -> Model:
        """A copy with some fields changed (and checked again)."""
        return dataclasses.replace(self, **changes)


def real_check(lower: float | None = None, upper: float | None = None, strict: bool = False):
    """A field check: finite reals within [lower, upper] (open with ``strict``), elementwise."""

    def check(name: str, value):
        value = check_real(name, value, -np.inf if lower is None else lower, strict)
        if upper is not None and is_concrete(value):
            arr = np.asarray(value, dtype=float)
            if np.any(arr >= upper if strict else arr > upper):
                op = "<" if strict else "<="
                raise ValueError(f"{name} must be {op} {upper}, got {name}={value!r}")
        return value

    return check


def int_check(minimum: int):
    """A field check: an integer >= minimum."""
    return lambda name, value: check_int(name, value, minimum)


def choice_check(allowed: Sequence[str]):
    """A field check: one of the allowed strings."""
    return lambda name, value: check_choice(name, value, allowed)


def bool_check(name: str, value) -> bool:
    """A field check: True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {name}={value!r}")
    return value


def counts_check(name: str, value):
    """A field check for per-class counts: an int >= 1, or a sequence of ints >= 1 (normalised to
    an int when all are equal, else to a tuple). Its length is checked against K by the model."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return check_int(name, value, 1)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{name} must be an int or a sequence of ints, got {name}={value!r}")
    counts = tuple(value)
    if not counts or any(
        isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1 for c in counts
    ):
        raise ValueError(f"{name} must hold integers >= 1, one per class, got {name}={value!r}")
    return tuple(int(c) for c in counts)


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


class ClassLayout(Model):
    """Base of the models with K classes in d dimensions and ``n`` samples per class: an int
    (balanced) or per-class counts (a tuple; normalised to an int when all are equal). The
    columns of H are ordered class by class."""

    K: int = static(check=int_check(2))
    d: int = static(check=int_check(1))
    n: int | tuple[int, ...] = static(default=1, check=counts_check)

    def __check__(self):
        if isinstance(self.n, tuple):
            if len(self.n) != self.K:
                raise ValueError(
                    f"n must have length K={self.K} when a sequence, got len(n)={len(self.n)}"
                )
            if len(set(self.n)) == 1:
                return {"n": self.n[0]}
        return None

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
