"""Optimizers written for ufm's loops, in the shape of optax transformations (``init``/``update``,
a NamedTuple state): `lbfgs`, L-BFGS with a bounded backtracking line search that vmaps well."""

from ufm.optimizers.lbfgs import LbfgsState, lbfgs

__all__ = ["LbfgsState", "lbfgs"]
