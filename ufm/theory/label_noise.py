"""Exact optimum of the label-noise UFM (`ufm.NoisyUFM`; derived in docs/theory.md §6.4).

For the symmetric layout (`ufm.models.label_noise.symmetric_noise`: in every true class, n_c
clean samples and r relabelled to each other class) with K >= 3 and d >= K-1, the feature penalty
is (1/2) tr(H Lam H^T), Lam = lam_H Pi + lam_M (I - Pi) (Pi averages within true classes), so by
the nuclear-norm reduction (§0.1) the problem is min_Z CE(Z) + sqrt(lam_W) ||Z Lam^{1/2}||_*,
convex. Symmetrisation (§0.2; class permutations act on true and noisy labels together) gives a
minimiser with logits s(e_k - 1/K) for a clean sample of class k and u(e_j - 1/K) + v(e_k - 1/K)
for a sample of true class k labelled j, and Z Lam Z^T a multiple of P. What remains is the
convex problem in x = (s, u, v)
    phi(x) = w_c L_c(s) + w_n L_n(u, v) + sqrt(lam_W (K-1) x^T Q x),
w_c = n_c/n, w_n = (K-1) r/n, L_c(s) = log(1 + (K-1) e^{-s}), L_n(u, v) = log(1 + e^{v-u} +
(K-2) e^{-u}) and x^T Q x = tr(Z Lam Z^T) (`_quadratic`): Z Lam Z^T is a multiple of P, so the
nuclear norm is sqrt((K-1) tr(Z Lam Z^T)). It is solved by Newton's method.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ufm.models.label_noise import NoisyUFM, symmetric_noise
from ufm.models.ufm import Params
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum, weight_decays

__all__ = ["noisy_margins"]


def _symmetric_layout(model: NoisyUFM) -> tuple[int, int]:
    """(n_c, r) if the model has the layout of `symmetric_noise`, else NoClosedForm."""
    if not isinstance(model.n, int):
        raise NoClosedForm("the label-noise optimum needs equal class sizes")
    K, n = model.K, model.n
    n_c = sum(1 for c in model.noisy[:n] if c == 0)
    r = (n - n_c) // (K - 1)
    if n_c + (K - 1) * r != n or model.noisy != symmetric_noise(K, n_c, r)[1]:
        raise NoClosedForm(
            "the label-noise optimum is known only for the symmetric layout of symmetric_noise "
            "(in every class n_c clean samples and r relabelled to each other class)"
        )
    return n_c, r


def _quadratic(K: int, n_c: int, r: int, lam_H: float, lam_M: float) -> np.ndarray:
    """Q (3 x 3) with tr(Z Lam Z^T) = x^T Q x at the symmetric logits x = (s, u, v).

    ||Z||^2 = (K-1)(n_c s^2 + r((K-1)u^2 + (K-1)v^2 - 2uv)); the true-class means carry
    n (K-1) (a.x)^2 of it, a.x = (n_c s - r u + (K-1) r v)/n their margin; Lam weighs the means
    by lam_H and the rest by lam_M.
    """
    n = n_c + (K - 1) * r
    a = np.array([n_c, -r, (K - 1) * r]) / n
    Z2 = np.array([[n_c, 0, 0], [0, (K - 1) * r, -r], [0, -r, (K - 1) * r]], float)
    means = n * np.outer(a, a)
    return (K - 1) * (lam_H * means + lam_M * (Z2 - means))


def _lse(A: np.ndarray, c: np.ndarray, x: np.ndarray):
    """Value, gradient and Hessian of log sum_j exp((A x + c)_j)."""
    z = A @ x + c
    p = np.exp(z - z.max())
    p /= p.sum()
    value = z.max() + math.log(np.exp(z - z.max()).sum())
    return value, A.T @ p, A.T @ (np.diag(p) - np.outer(p, p)) @ A


def _data_terms(K: int, n_c: int, r: int):
    """[(weight, A, c)]: w_c L_c and w_n L_n as log-sum-exps of affine maps of x = (s, u, v)."""
    n = n_c + (K - 1) * r
    clean = (n_c / n, np.array([[0, 0, 0], [-1, 0, 0]], float), np.array([0, math.log(K - 1)]))
    A_n = np.array([[0, 0, 0], [0, -1, 1], [0, -1, 0]], float)
    noisy = ((K - 1) * r / n, A_n, np.array([0, 0, math.log(K - 2)]))
    return [clean, noisy]


def _newton(phi, x: np.ndarray, maxiter: int = 100) -> np.ndarray:
    """Minimise a smooth convex phi (returning value, gradient, Hessian) by Newton steps with
    Armijo backtracking, until no step decreases phi (convergence to rounding)."""
    for _ in range(maxiter):
        f, g, Hs = phi(x)
        step = np.linalg.lstsq(Hs, g, rcond=1e-13)[0]
        t = 1.0
        while t > 1e-10 and not phi(x - t * step)[0] <= f - 1e-4 * t * (g @ step):
            t /= 2
        if t <= 1e-10 or not np.any(x - t * step != x):
            break
        x = x - t * step
    return x


def noisy_margins(
    K: int, n_c: int, r: int, lam_W: float, lam_H: float, lam_M: float
) -> tuple[tuple[float, float, float], float]:
    """((s, u, v), f*) of the symmetric layout (module docstring): s the clean margin; a sample of
    true class k labelled j has logits u(e_j - 1/K) + v(e_k - 1/K).

    The zero solution is optimal iff g^T Q^+ g <= lam_W (K-1), g the gradient of the data terms
    at 0 (the subgradient condition of the square root); otherwise phi is smooth near its
    minimiser, found by Newton's method from (1, 1, 0).
    """
    if K < 3:
        raise NoClosedForm("the label-noise reduction needs K >= 3")
    Q = _quadratic(K, n_c, r, lam_H, lam_M)
    terms = _data_terms(K, n_c, r)
    cW = lam_W * (K - 1)

    def phi(x):
        parts = [(w, *_lse(A, c, x)) for w, A, c in terms]
        f = sum(w * v for w, v, _, _ in parts)
        g = sum(w * gr for w, _, gr, _ in parts)
        Hs = sum(w * h for w, _, _, h in parts)
        T = float(x @ Q @ x)
        if T <= 0:
            return f, g, Hs
        Qx = Q @ x
        pen = math.sqrt(cW * T)
        return f + pen, g + pen * Qx / T, Hs + pen * (Q / T - np.outer(Qx, Qx) / T**2)

    zero = np.zeros(3)
    f0, g0, _ = phi(zero)
    # (Q is singular when r = 0 or n_c = 0: directions that change nothing; the pseudo-inverse)
    if g0 @ np.linalg.pinv(Q) @ g0 <= cW:
        return (0.0, 0.0, 0.0), float(f0)
    x = _newton(phi, np.array([1.0, 1.0, 0.0]))
    return (float(x[0]), float(x[1]), float(x[2])), float(phi(x)[0])


@optimum.register
def _(model: NoisyUFM) -> Optimum:
    K, d = model.K, model.d
    lam_W, lam_H = weight_decays(model, "without weight decay the CE infimum is not attained")
    lam_M = as_float(model.lam_M)
    if d < K - 1:
        raise NoClosedForm(f"the label-noise optimum needs d >= K-1, got d={d}, K={K}")
    n_c, r = _symmetric_layout(model)
    (s, u, v), value = noisy_margins(K, n_c, r, lam_W, lam_H, lam_M)
    true = np.repeat(np.arange(K), model.counts)
    noisy = np.asarray(model.noisy)
    E = np.eye(K) - 1.0 / K  # rows e_k - 1/K
    Z = np.where((noisy == true)[None, :], s * E[true].T, u * E[noisy].T + v * E[true].T)
    Y = np.eye(K)[true]  # (N, K)
    Pi = Y @ Y.T / model.n
    sqrt_lam = math.sqrt(lam_H) * Pi + math.sqrt(lam_M) * (np.eye(model.N) - Pi)
    inv_sqrt_lam = Pi / math.sqrt(lam_H) + (np.eye(model.N) - Pi) / math.sqrt(lam_M)
    U_, S_, Vt = np.linalg.svd(Z @ sqrt_lam, full_matrices=False)
    k = K - 1
    R = np.eye(d, k)
    W = lam_W**-0.25 * (U_[:, :k] * np.sqrt(S_[:k])) @ R.T
    H = lam_W**0.25 * R @ (np.sqrt(S_[:k])[:, None] * Vt[:k]) @ inv_sqrt_lam
    b = jnp.zeros((K,)) if model.bias else None
    return Optimum(value, Params(jnp.asarray(W), jnp.asarray(H), b), "docs/theory.md §6.4")
