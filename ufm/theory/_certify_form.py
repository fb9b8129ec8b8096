"""The convex form of a model: its objective rewritten as a convex problem in the logit matrix
Z = W H (docs/theory.md §15-§16), and the forms of the built-in models.

A `ConvexForm` describes the factored objective on "atoms" (groups of exchangeable samples: the
same target and the same role in the penalty; all the samples of an atom share one feature column
h_a at the optimum, because the problem in H is convex and invariant under permutations within an
atom). With M atoms of weights w_a = n_a/N, targets t_a (columns of T, K x M), a metric R (M x M,
or its diagonal) and a bias b,

    penalty form:  V(W, H, b) = sum_a w_a l(W h_a + b; t_a) + lam_b/2 ||b||^2
                                + c_W/2 ||W||_F^2 + c_H/2 ||H R||_F^2
    ball form:     V(W, H, b) = sum_a w_a l(W h_a + b; t_a) + lam_b/2 ||b||^2
                   s.t. ||W||_F^2 <= c_W,  ||H R||_F^2 <= c_H

with l(z; t) = m lse(z) - <t, z>, m = sum_k t_k (loss "ce": cross-entropy, label smoothing,
pick-all-label CE) or l(z; t) = ||z - t||^2/2 (loss "mse"). Minimising over the factorisations of
Z = W H with d >= rank Z (the variational form of the nuclear norm) leaves

    P(Z, b) = sum_a w_a l(z_a + b; t_a) + lam_b/2 ||b||^2 + mu ||Z R||_*,   mu = sqrt(c_W c_H),

or the constraint ||Z R||_* <= r = sqrt(c_W c_H) in the ball form: convex, because l is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.models._base import (
    Model,
    bool_check,
    check_real,
    choice_check,
    is_concrete,
    leaf,
    static,
)

__all__ = [
    "ConvexForm",
    "NoCertificate",
    "convex_form",
    "form_builder",
    "lpm_form",
    "register_form",
    "ufm_form",
]

FORM_LOSSES = ("ce", "mse")


class NoCertificate(ValueError):
    """The model's objective has no convex form in its logits (the message says why)."""


def _any(name: str, value):
    """A leaf check for the array leaves of a form: finite reals, any shape."""
    return check_real(name, value, -np.inf)


class ConvexForm(Model):
    """An objective as a convex problem in the logits Z = W H (module docstring).

    Args:
      targets: (K, M) one target column t_a per atom.
      weights: (M,) weight w_a of each atom in the loss (n_a/N for a mean over samples).
      metric: (M,) diagonal or (M, M) invertible matrix R of the feature term ||H R||_F^2.
      loss: "ce" (l(z; t) = m lse(z) - <t, z>, m = sum_k t_k; targets t >= 0) or "mse"
        (l(z; t) = ||z - t||^2/2).
      c_W, c_H: the weights of ||W||^2/2 and ||H R||^2/2 (penalty form), or their budgets
        (ball form); > 0.
      ball: False (penalty form) or True (norm budgets).
      bias: whether there is a bias b (free when lam_b = 0, regularised when lam_b > 0).
      lam_b: the bias weight decay (>= 0).
      atoms: (N,) the atom of each column of the model's H, to expand the atoms' features into
        the model's parameters (empty: one column per atom).
    """

    targets: Any = leaf(check=_any)
    weights: Any = leaf(check=_any)
    metric: Any = leaf(check=_any)
    loss: str = static(default="ce", check=choice_check(FORM_LOSSES))
    c_W: float = leaf(default=1.0, lower=0.0, strict=True)
    c_H: float = leaf(default=1.0, lower=0.0, strict=True)
    ball: bool = static(default=False, check=bool_check)
    bias: bool = static(default=False, check=bool_check)
    lam_b: float = leaf(default=0.0, lower=0.0)
    atoms: tuple[int, ...] = ()

    def __check__(self):
        T, w, R = self.targets, self.weights, self.metric
        if not all(is_concrete(x) for x in (T, w, R)):
            return None
        T, w, R = np.asarray(T), np.asarray(w), np.asarray(R)
        if T.ndim != 2 or w.shape != T.shape[1:] or R.shape not in (w.shape, w.shape * 2):
            raise ValueError(
                "targets, weights, metric must have shapes (K, M), (M,), (M,) or (M, M), got "
                f"{T.shape}, {w.shape}, {R.shape}"
            )
        if np.any(w <= 0) or (self.loss == "ce" and np.any(T < 0)):
            raise ValueError("weights must be > 0 (and CE targets >= 0)")
        atoms = np.asarray(self.atoms, dtype=int).reshape(-1)
        if atoms.size and (atoms.min() < 0 or atoms.max() >= w.shape[0]):
            raise ValueError(f"atoms must index the M={w.shape[0]} atoms, got atoms={self.atoms!r}")
        return {"atoms": tuple(atoms.tolist())}

    @property
    def K(self) -> int:
        return int(np.shape(self.targets)[0])

    @property
    def M(self) -> int:
        return int(np.shape(self.targets)[1])

    @property
    def mu(self) -> Array:
        """sqrt(c_W c_H): the nuclear-norm weight (penalty form) or radius (ball form)."""
        return jnp.sqrt(self.c_W * self.c_H)

    def expand(self, H_atoms: Array) -> Array:
        """The model's H (d, N) from the atoms' features (d, M)."""
        return H_atoms[:, np.asarray(self.atoms)] if self.atoms else H_atoms


# --- the convex forms of the models -----------------------------------------------------------
_FORMS: dict[type, tuple[Any, tuple[str, ...]]] = {}


def register_form(cls: type, positive: tuple[str, ...] = ()):
    """Decorator: ``fn(model) -> ConvexForm`` is the convex form of models of type exactly `cls`
    (a subclass may change the objective, so it must define its own ``convex_form``); the leaves
    named in `positive` must be > 0 for the form to exist."""

    def deco(fn):
        _FORMS[cls] = (fn, positive)
        return fn

    return deco


def form_builder(model):
    """The function ``fn(model) -> ConvexForm`` for `model`: its ``convex_form`` method (the
    protocol hook) or the form registered for its type. Raises `NoCertificate` (saying why) when
    there is none, or when a hyperparameter that a registered form needs > 0 is not (checked
    elementwise over batched values)."""
    hook = getattr(type(model), "convex_form", None)
    if hook is not None:
        return hook
    import ufm.theory._certify_models  # noqa: F401 (registers the built-in models' forms)

    if type(model) not in _FORMS:
        raise NoCertificate(
            f"{type(model).__name__} does not expose its objective as a convex function of the "
            "logits: define convex_form() returning a ufm.ConvexForm (see ufm.Model)"
        )
    fn, positive = _FORMS[type(model)]
    for name in positive:
        value = getattr(model, name)
        if is_concrete(value) and not np.all(np.asarray(value, dtype=float) > 0):
            raise NoCertificate(
                f"{name} must be > 0 for the convex form of {type(model).__name__}, got "
                f"{name}={value!r}: without it the nuclear-norm reduction degenerates"
            )
    return fn


def convex_form(model) -> ConvexForm:
    """The model's `ConvexForm` (see `form_builder`; raises `NoCertificate` when it has none)."""
    return form_builder(model)(model)


# --- the forms of the UFM and the layer-peeled model, for any (real) class counts ------------
def ufm_form(counts, loss: str, lam_W, lam_H, *, alpha=0.0, bias=False, lam_b=0.0, atoms=()):
    """The form of the regularised UFM with class counts `counts` (K,), real or traced: atoms
    the classes, weights n_k/N, metric sqrt(n_k), targets I (CE, MSE) or (1-alpha)I + alpha/K
    (label smoothing); docs/theory.md §15."""
    counts = jnp.asarray(counts, dtype=float)
    K = counts.shape[0]
    if loss == "focal":
        raise NoCertificate(
            "the focal loss is not convex in the logits (gamma > 0), so the nuclear-norm "
            "reduction gives no certificate; loss='ce' is its gamma = 0 case"
        )
    eye = jnp.eye(K, dtype=counts.dtype)
    targets = (1.0 - alpha) * eye + alpha / K if loss == "ls" else eye
    return ConvexForm(
        targets=targets,
        weights=counts / counts.sum(),
        metric=jnp.sqrt(counts),
        loss="mse" if loss == "mse" else "ce",
        c_W=lam_W,
        c_H=lam_H,
        bias=bias,
        lam_b=lam_b if bias else 0.0,
        atoms=atoms,
    )


def lpm_form(counts, E_W, E_H, h_budget: str = "class", loss: str = "ce", atoms=()):
    """The form of the layer-peeled model with class counts `counts` (K,), real or traced: the
    budgets ||W||^2 <= K E_W and sum_i a_i ||h_i||^2 <= E_H as ||H_a R||^2 <= E_H with
    R = sqrt(n_k a_k): 1/sqrt(K) (per-class budget) or sqrt(n_k/N) (sample-averaged);
    docs/theory.md §16."""
    counts = jnp.asarray(counts, dtype=float)
    K = counts.shape[0]
    pi = counts / counts.sum()
    R = jnp.full((K,), K**-0.5, counts.dtype) if h_budget == "class" else jnp.sqrt(pi)
    return ConvexForm(
        targets=jnp.eye(K, dtype=counts.dtype),
        weights=pi,
        metric=R,
        loss=loss,
        c_W=K * E_W,
        c_H=E_H,
        ball=True,
        atoms=atoms,
    )


def without_atoms(form: ConvexForm) -> ConvexForm:
    """The same form without its `atoms` (static), so that forms of one shape share one
    compiled solver whatever their counts; its leaves are kept as they are (no checks)."""
    leaves, treedef = jax.tree.flatten(form)
    bare = object.__new__(ConvexForm)
    for f in dataclasses.fields(ConvexForm):
        object.__setattr__(bare, f.name, () if f.name == "atoms" else getattr(form, f.name))
    return jax.tree.unflatten(jax.tree.structure(bare), leaves)
