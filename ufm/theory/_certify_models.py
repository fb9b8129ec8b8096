"""The convex forms of the built-in models (docs/theory.md §15-§16), and why the others have none.

Imported on the first `convex_form` call (the models import ufm.theory, so this module cannot be
imported with it).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import ufm
from ufm.theory._certify_form import (
    ConvexForm,
    NoCertificate,
    lpm_form,
    register_form,
    ufm_form,
)


def _atoms_form(model, loss, targets, atom_of, R, c_W, c_H, ball=False, bias=False, lam_b=0.0):
    """A form whose atoms are given by `atom_of` (N,) (atom ids 0..M-1), weights n_a/N."""
    atom_of = np.asarray(atom_of)
    counts = np.bincount(atom_of).astype(float)
    return ConvexForm(
        targets=targets,
        weights=jnp.asarray(counts / counts.sum()),
        metric=R,
        loss=loss,
        c_W=c_W,
        c_H=c_H,
        ball=ball,
        bias=bias,
        lam_b=lam_b,
        atoms=tuple(atom_of.tolist()),
    )


def _labels(model) -> np.ndarray:
    """(N,) class of each column, in NumPy (the model's `labels` is a JAX array)."""
    return np.repeat(np.arange(model.K), model.counts)


@register_form(ufm.UFM, positive=("lam_W", "lam_H"))
def _ufm(model: ufm.UFM) -> ConvexForm:
    """CE, label smoothing or MSE, any counts and bias mode."""
    atoms = tuple(_labels(model).tolist())
    return ufm_form(model.counts, model.loss, model.lam_W, model.lam_H, alpha=model.alpha,
                    bias=model.bias, lam_b=model.lam_b, atoms=atoms)  # fmt: skip


@register_form(ufm.MultiLabelUFM, positive=("lam_W", "lam_H"))
def _multilabel(model: ufm.MultiLabelUFM) -> ConvexForm:
    """Atoms: the label sets, with multi-hot targets (pick-all-label CE, m = |S|)."""
    targets = jnp.asarray(model.set_targets.T)
    R = jnp.sqrt(jnp.asarray(model.counts, dtype=float))
    lam_b = model.lam_b if model.bias else 0.0
    return _atoms_form(
        model, "ce", targets, model.set_index, R, model.lam_W, model.lam_H, False, model.bias, lam_b
    )


@register_form(ufm.NoisyUFM, positive=("lam_W", "lam_H"))
def _noisy(model: ufm.NoisyUFM) -> ConvexForm:
    """Atoms: the (true class, training label) pairs. The feature penalty is (1/2) tr(H Lam H^T),
    Lam = lam_H Pi + lam_M (I - Pi) (Pi averages within true classes); on atom features it is
    (1/2) ||H_a R||^2 with R = (E^T Lam E)^{1/2} (E the (N, M) atom indicator), so c_H = 1."""
    true = _labels(model)
    pairs, atom_of = np.unique(np.stack([true, np.asarray(model.noisy)], 1), axis=0,
                               return_inverse=True)  # fmt: skip
    atom_of = atom_of.reshape(-1)
    n_a = np.bincount(atom_of).astype(float)
    same = pairs[:, 0][:, None] == pairs[:, 0][None, :]
    n_true = np.asarray(model.counts, dtype=float)[pairs[:, 0]]
    EPiE = jnp.asarray(np.where(same, np.outer(n_a, n_a) / n_true[:, None], 0.0))
    gram = (model.lam_H - model.lam_M) * EPiE + model.lam_M * jnp.diag(jnp.asarray(n_a))
    e, Q = jnp.linalg.eigh(gram)
    R = (Q * jnp.sqrt(jnp.maximum(e, 0.0))[None, :]) @ Q.T
    targets = jnp.eye(model.K)[:, pairs[:, 1]]
    lam_b = model.lam_b if model.bias else 0.0
    return _atoms_form(model, "ce", targets, atom_of, R, model.lam_W, 1.0, False, model.bias, lam_b)


@register_form(ufm.LayerPeeled)
def _layer_peeled(model: ufm.LayerPeeled) -> ConvexForm:
    """Both feature budgets, CE or MSE."""
    atoms = tuple(_labels(model).tolist())
    return lpm_form(model.counts, model.E_W, model.E_H, model.h_budget, model.loss, atoms)


@register_form(ufm.NormalizedUFM)
def _normalized(model) -> ConvexForm:
    raise NoCertificate(
        "NormalizedUFM keeps features on a sphere: the constraint set is not convex, so the "
        "nuclear-norm reduction gives no certificate"
    )


@register_form(ufm.ExtendedUFM)
def _extended(model) -> ConvexForm:
    raise NoCertificate(
        "ExtendedUFM has several layers: its penalty on the product is a Schatten quasi-norm "
        "(not convex), and with ReLU the logits are not linear in any one matrix, so there is "
        "no convex form to certify"
    )
