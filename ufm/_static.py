"""What a function computes, as a hashable key: equal optax optimizers built twice share one
compiled loop.

`jax.jit` keys static arguments by ``hash`` and ``==``, and optax transformations are tuples of
closures that compare by identity, so ``optax.sgd(0.5)`` built in two calls would compile twice.
`Static` wraps such an object with the key of `structural_key`: closures are compared by their
code and the values they close over (numbers, arrays, strings, nested closures, partials), so two
transformations built from the same factory with equal hyperparameters are equal, and any
difference in code or constants makes them differ. Objects that are not understood (class
instances without value equality) are compared by identity, which can only cause a recompilation,
never a wrong cache hit.
"""

from __future__ import annotations

import enum
import functools
import types
from typing import Any

import jax
import numpy as np

__all__ = ["Static", "structural_key"]

_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def structural_key(obj: Any) -> tuple:
    """A hashable key equal for objects that compute the same thing (see the module docstring)."""
    return _key(obj, set())


def _key(obj: Any, seen: set[int]) -> tuple:
    if isinstance(obj, _SCALARS) or isinstance(obj, enum.Enum):
        return (type(obj).__qualname__, obj)
    if isinstance(obj, (np.generic, np.ndarray)) or (
        isinstance(obj, jax.Array) and not isinstance(obj, jax.core.Tracer)
    ):
        arr = np.asarray(obj)
        return ("array", arr.dtype.str, arr.shape, arr.tobytes())
    if id(obj) in seen:  # a closure that refers to itself
        return ("cycle",)
    seen = seen | {id(obj)}
    if isinstance(obj, (tuple, list)):
        return (type(obj).__qualname__, tuple(_key(x, seen) for x in obj))
    if isinstance(obj, dict):
        items = sorted(obj.items(), key=lambda kv: repr(kv[0]))
        return ("dict", tuple((repr(k), _key(v, seen)) for k, v in items))
    if isinstance(obj, functools.partial):
        kw = tuple(sorted((k, _key(v, seen)) for k, v in obj.keywords.items()))
        return ("partial", _key(obj.func, seen), _key(obj.args, seen), kw)
    if isinstance(obj, types.FunctionType):
        cells = tuple(_key(_cell(c), seen) for c in obj.__closure__ or ())
        defaults = _key(obj.__defaults__, seen), _key(obj.__kwdefaults__, seen)
        return ("function", obj.__code__, cells, defaults)
    if isinstance(obj, types.MethodType):
        return ("method", _key(obj.__func__, seen), _key(obj.__self__, seen))
    if isinstance(obj, (types.BuiltinFunctionType, type, types.ModuleType)):
        return ("named", obj)
    return ("identity", id(obj))


def _cell(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a variable not yet assigned)
        return None


class Static:
    """A static argument for `jax.jit` that hashes and compares by `structural_key`; ``.value`` is
    the wrapped object (the first one seen with this key is as good as any other)."""

    __slots__ = ("value", "_key", "_hash")

    def __init__(self, value: Any):
        self.value = value
        self._key = structural_key(value)
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, Static) and self._key == other._key

    def __repr__(self) -> str:
        return f"Static({self.value!r})"
