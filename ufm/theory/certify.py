"""Certified global optima of the models whose loss is convex in the logits: `certify(model)`
solves the nuclear-norm convex form (docs/theory.md §15-§16) to a Fenchel duality gap, recovers
(W, H, b) from its solution, and returns the value, a lower bound and their gap.

For d at least the rank of the convex optimum, min_{W, H, b} V = min_{Z, b} P: the recovered
parameters are then a global minimiser up to the gap, whatever the counts, the bias mode or the
loss (CE, label smoothing, MSE, pick-all-label CE), and for the layer-peeled model's budgets.
Below that rank the bound stays valid but is not attained (status ``not_tight``).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.models._base import check_int, check_real
from ufm.models.ufm import Params
from ufm.theory._certify_form import (
    ConvexForm,
    NoCertificate,
    convex_form,
    form_builder,
    without_atoms,
)
from ufm.theory._certify_solve import dual_at, solve_form

__all__ = [
    "STATUS",
    "Certificate",
    "ConvexForm",
    "NoCertificate",
    "certify",
    "convex_form",
    "dual_bound",
]


class STATUS(enum.IntEnum):
    """How a certificate ended (``Certificate.status``), each with its message."""

    certified = 0
    not_tight = 1
    max_steps = 2
    nonfinite = 3

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    STATUS.certified: "certified: the parameters are a global minimiser up to the relative gap",
    STATUS.not_tight: "not tight: d is below the rank of the convex optimum, so `lower` is a valid "
    "bound that no d-dimensional parameters attain; `params` is the rank-d truncation (a start "
    "for `ufm.solve(init=...)`), and `value` exceeds the optimum",
    STATUS.max_steps: "max_steps: the duality gap did not reach `tol`; `lower` is still a valid "
    "bound and `gap` bounds the suboptimality of `params` (increase `max_steps`)",
    STATUS.nonfinite: "nonfinite: the solver met a NaN or inf (check the hyperparameters)",
}


class Certificate(NamedTuple):
    """A certified optimum (a batch of them, with leading axes, for batched hyperparameters).

    value: objective of `params` (the model's own ``objective``).
    lower: a lower bound on the model's global minimum (a feasible dual point's value).
    gap: (value - lower)/|value|: bounds the relative suboptimality of `params`.
    params: the recovered `ufm.Params` (W (K, d), H (d, N), b or None): the balanced factors of
      the convex solution, usable as ``ufm.solve(model, key, init=cert.params)``.
    rank: rank of the convex optimum Z = W H (the d it needs).
    status: a `STATUS` code (``status_name``, ``message``).
    convex_value: the convex objective P at the solver's point (= value when d >= rank).
    dual_norm: ||G R^{-T}||_op of the dual point: the nuclear-norm weight mu at a nonzero
      penalised optimum (<= mu at the zero solution), the budget's multiplier in the ball form.
    steps: proximal steps taken.
    """

    value: Any
    lower: Any
    gap: Any
    params: Params
    rank: Any
    status: Any
    convex_value: Any
    dual_norm: Any
    steps: Any

    @property
    def status_name(self) -> str:
        """'certified', 'not_tight', 'max_steps' or 'nonfinite' (a single certificate)."""
        return STATUS(int(self.status)).name

    @property
    def message(self) -> str:
        """What the status means, with the numbers; for a batch, the count of each status."""
        if np.ndim(self.status) == 0:
            head = f"gap {float(self.gap):.1e}, rank {int(self.rank)}"
            return f"{STATUS(int(self.status)).message} ({head})"
        codes = np.asarray(self.status).ravel()
        counts = ", ".join(f"{np.sum(codes == s)} {s.name}" for s in STATUS if np.any(codes == s))
        return f"{codes.size} certificates: {counts}; worst gap {float(np.max(self.gap)):.1e}"

    def __str__(self) -> str:
        if np.ndim(self.status) == 0:
            return (
                f"Certificate(value={float(self.value):.12g}, lower={float(self.lower):.12g}, "
                f"gap={float(self.gap):.1e}, rank={int(self.rank)}, {self.status_name})"
            )
        return f"Certificate({self.message})"


def recover(form: ConvexForm, X: Array, d: int, rank_rtol: float = 1e-9) -> tuple[Array, ...]:
    """(W (K, d), H_atoms (d, M), rank): the balanced factors of X = Z R, truncated to rank d.

    With X = U S V^T: W = a U S^{1/2}, H R = S^{1/2} V^T / a, a = (c_H/c_W)^{1/4} (penalty form:
    c_W ||W||^2 = c_H ||H R||^2 = mu ||X||_*) or (c_W/c_H)^{1/4} (ball form: both budgets met).
    """
    U, s, Vt = jnp.linalg.svd(X, full_matrices=False)
    keep = s > rank_rtol * s[0]
    rank = jnp.sum(keep)
    p = min(d, s.shape[0])
    root = jnp.where(keep, jnp.sqrt(s), 0.0)[:p]
    a = (form.c_W / form.c_H if form.ball else form.c_H / form.c_W) ** 0.25
    W = a * U[:, :p] * root[None, :]
    HR = (root[:, None] * Vt[:p]) / a
    R = jnp.asarray(form.metric, X.dtype)
    H = HR / R[None, :] if R.ndim == 1 else jnp.linalg.solve(R.T, HR.T).T
    W = jnp.pad(W, ((0, 0), (0, d - p)))
    H = jnp.pad(H, ((0, d - p), (0, 0)))
    return W, H, rank


def _finish(models, forms, sol, tol, rank_rtol) -> Certificate:
    """Recover the parameters of each model from its solution and certify them (vmapped)."""

    def one(model, form, sol):
        W, H, rank = recover(form, sol.X, model.d, rank_rtol)
        params = Params(W, form.expand(H), sol.b if form.bias else None)
        value = model.objective(params)
        gap = (value - sol.lower) / jnp.abs(value)
        eps = jnp.finfo(value.dtype).eps
        status = jnp.where(
            ~(jnp.isfinite(value) & jnp.isfinite(sol.lower)),
            STATUS.nonfinite,
            jnp.where(
                rank > model.d,
                STATUS.not_tight,
                jnp.where(gap <= tol + 64 * eps, STATUS.certified, STATUS.max_steps),
            ),
        )
        return Certificate(value, sol.lower, gap, params, rank, status, sol.value, sol.dual_norm,
                           sol.steps)  # fmt: skip

    return jax.vmap(one)(models, forms, sol)


_finish_jit = jax.jit(_finish, static_argnames=("rank_rtol",))
_forms_jit = jax.jit(lambda build, models: jax.vmap(build)(models), static_argnums=0)
_solve_jit = jax.jit(jax.vmap(solve_form, in_axes=(0, None, None, None)), static_argnums=(2, 3))


def solve_forms(forms: ConvexForm, tol, max_steps: int = 200_000, check_every: int = 10):
    """`solve_form` over a batch of forms (leading axis), compiled once per form shape whatever
    the counts (`without_atoms`)."""
    return _solve_jit(without_atoms(forms), tol, max_steps, check_every)


def certify(
    model,
    *,
    tol: float | None = None,
    max_steps: int = 200_000,
    check_every: int = 10,
    rank_rtol: float | None = None,
    dtype: Any = jnp.float64,
) -> Certificate:
    """A certified global optimum of `model` from the convex form of its objective.

    Solves min P(Z, b) (docs/theory.md §15; the layer-peeled budgets as a nuclear-norm ball,
    §16) by accelerated proximal gradient until the relative duality gap is <= `tol`, recovers
    the balanced factors W, H (and b), and evaluates ``model.objective`` there. Hyperparameters
    given as arrays (of one broadcastable shape) make a batch: one compiled, vmapped call
    certifies every point, and every field of the result carries those leading axes.

    Args:
      model: a `ufm.UFM` (loss "ce", "ls" or "mse", any counts, any bias mode), `ufm.NoisyUFM`,
        `ufm.MultiLabelUFM`, `ufm.LayerPeeled` (both feature budgets), or any model with a
        ``convex_form()`` method (see `ufm.ConvexForm`) whose parameters are `ufm.Params`.
      tol: the relative duality gap to reach (> 0); default 1e-10 in float64 (1e-12 is
        reachable), 1e-5 in float32.
      max_steps: the step budget of the solver (>= 1).
      check_every: steps between two evaluations of the duality gap (>= 1).
      rank_rtol: singular values below rank_rtol times the largest count as zero (rank);
        default 1e-9 in float64, 1e-4 in float32.
      dtype: jnp.float64 (default; run with x64 enabled locally) or jnp.float32.

    Returns:
      A `Certificate`.

    Raises:
      NoCertificate: the model's loss is not convex in the logits (focal loss, features on a
        sphere, deep models), or a weight decay that the reduction needs is 0.
      ValueError: a bad argument or a non-finite hyperparameter, naming it.
    """
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float64), jnp.dtype(jnp.float32)):
        raise ValueError(f"dtype must be float64 or float32, got dtype={dtype!r}")
    x64 = jnp.dtype(dtype) == jnp.dtype(jnp.float64)
    tol = check_real("tol", (1e-10 if x64 else 1e-5) if tol is None else tol, strict=True)
    max_steps = check_int("max_steps", max_steps, 1)
    check_every = check_int("check_every", check_every, 1)
    rank_rtol = (1e-9 if x64 else 1e-4) if rank_rtol is None else rank_rtol
    rank_rtol = check_real("rank_rtol", rank_rtol, strict=True)
    names = getattr(type(model), "_leaves", ())
    leaves, treedef = jax.tree.flatten(model)
    for i, x in enumerate(leaves):
        if not np.all(np.isfinite(np.asarray(x, dtype=float))):
            name = names[i] if i < len(names) else f"leaf {i}"
            raise ValueError(f"{name} must be finite, got {name}={x!r}")
    build = form_builder(model)  # NoCertificate when the model has no form
    shape = np.broadcast_shapes(*(np.shape(x) for x in leaves))
    size = int(np.prod(shape))
    with jax.enable_x64(x64):
        batch = [jnp.broadcast_to(jnp.asarray(x, dtype), shape).reshape(size) for x in leaves]
        models = treedef.unflatten(batch)
        forms = _forms_jit(build, models)  # NoCertificate (focal loss, ...) while tracing
        sol = solve_forms(forms, tol, max_steps, check_every)
        cert = _finish_jit(models, forms, sol, tol, rank_rtol)
        cert = jax.tree.map(lambda x: x.reshape(shape + x.shape[1:]), cert)
    if shape:
        return cert._replace(**{k: np.asarray(getattr(cert, k)) for k in _NUMBERS})
    return cert._replace(**{k: getattr(cert, k).item() for k in _NUMBERS})


_NUMBERS = ("value", "lower", "gap", "rank", "status", "convex_value", "dual_norm", "steps")


def dual_bound(model, params) -> tuple[float, float]:
    """(lower, gap) for any parameters of a model with a convex form, without solving: the dual
    point G = -grad F at the atoms' mean logits, made feasible (docs/theory.md §15, the recipe of
    the certificate), gives lower <= min V; gap = (V(params) - lower)/|V(params)|.
    """
    form = convex_form(model)
    Z = model.logits(params).T  # (K, N)
    if form.atoms:
        E = jax.nn.one_hot(jnp.asarray(form.atoms), form.M, dtype=Z.dtype)  # (N, M)
        Z = (Z @ E) / E.sum(0, keepdims=True)
    lower = float(dual_at(form, Z)[0])
    value = float(model.objective(params))
    return lower, (value - lower) / abs(value)
