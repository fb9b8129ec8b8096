"""Label noise under the UFM: a fraction of training labels flipped, a cost for memorising them, and
where the noisy samples' features end up relative to the class means (memorization-dilation).

In the plain UFM every feature is free, so a noisy sample simply joins the class of its (wrong)
label: perfect memorisation, neural collapse with respect to the noisy labels. Nguyen et al.
(ICLR 2023, "Memorization-dilation: modeling neural collapse under label noise") argue that a
network of limited expressivity cannot place a sample far from the samples of its true class
for free: memorising noisy labels then costs, and it dilates the true classes. `NoisyUFM` models
this in the UFM (our construction in the spirit of their M-D model, not their exact model): the
feature penalty charges the class means with lam_H and every deviation from the true class mean
with lam_M,

    f = (1/N) sum_i CE(W h_i + b, noisy_i) + lam_W/2 ||W||^2 + lam_b/2 ||b||^2
        + lam_H/2 sum_k n_k ||hbar_k||^2 + lam_M/2 sum_i ||h_i - hbar_{true_i}||^2,

hbar_k the mean of the samples whose TRUE class is k. lam_M = lam_H is the plain UFM (the penalty
is then lam_H/2 ||H||^2); lam_M -> infinity forbids memorisation.

Exact optimum [D] (`optimum(NoisyUFM)`), for the symmetric layout (`symmetric_noise`: in every
true class, n_c clean samples and r relabelled to each other class) with K >= 3, d >= K-1: the
penalty is (1/2) tr(H Lam H^T), Lam = lam_H Pi + lam_M (I - Pi) (Pi averages within true
classes), so by Tool A the problem is min_Z CE(Z) + sqrt(lam_W) ||Z Lam^{1/2}||_*, convex; by
Tool B (class permutations act on true and noisy labels together) a symmetric minimiser has
logits s(e_k - 1/K) for clean samples and u(e_j - 1/K) + v(e_k - 1/K) for a sample of true class k
labelled j, and Z Lam Z^T is a multiple of P. The value is a convex problem in (s, u, v).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.losses import cross_entropy
from ufm.models._base import (
    ClassLayout,
    bool_check,
    check_int,
    check_real,
    class_counts,
    frobenius_sq,
    leaf,
    static,
)
from ufm.models.ufm import UFM, Params
from ufm.theory._base import NoClosedForm, Optimum, as_float, optimum

__all__ = [
    "NoisyUFM",
    "flip_labels",
    "memorization_report",
    "noisy_margins",
    "symmetric_noise",
]


def flip_labels(key: Array, labels: Sequence[int], K: int, rate: float) -> tuple[int, ...]:
    """Noisy labels: exactly round(rate N) samples, chosen uniformly at random, each moved to a
    uniformly random other class. Deterministic given `key`.

    Args:
      key: PRNG key.
      labels: (N,) true labels in [0, K).
      K: number of classes (>= 2).
      rate: fraction of flipped labels, in [0, 1].
    """
    K = check_int("K", K, 2)
    rate = check_real("rate", rate)
    if rate > 1:
        raise ValueError(f"rate must be in [0, 1], got rate={rate!r}")
    y = np.asarray(labels, dtype=int)
    if y.ndim != 1 or np.any(y < 0) or np.any(y >= K):
        raise ValueError(f"labels must be a 1-D sequence of classes in [0, {K}), got {labels!r}")
    k1, k2 = jax.random.split(key)
    m = int(round(rate * len(y)))
    idx = np.asarray(jax.random.permutation(k1, len(y)))[:m]
    shift = np.asarray(jax.random.randint(k2, (m,), 1, K))
    noisy = y.copy()
    noisy[idx] = (y[idx] + shift) % K
    return tuple(int(c) for c in noisy)


def symmetric_noise(K: int, n_clean: int, r: int) -> tuple[int, tuple[int, ...]]:
    """The symmetric layout: in every true class k, n_clean clean samples, then r samples labelled
    j for each j != k (in increasing j). Returns (n per class, noisy labels)."""
    K, n_clean, r = check_int("K", K, 2), check_int("n_clean", n_clean, 0), check_int("r", r, 0)
    if n_clean + r == 0:
        raise ValueError("n_clean + r must be >= 1")
    noisy = []
    for k in range(K):
        noisy += [k] * n_clean
        for j in range(K):
            if j != k:
                noisy += [j] * r
    return n_clean + (K - 1) * r, tuple(noisy)


class NoisyUFM(ClassLayout):
    """Regularised CE-UFM trained on noisy labels, with a memorisation cost lam_M (module
    docstring).

    Args:
      K: number of classes (>= 2).
      d: feature dimension (>= 1).
      n: samples per TRUE class: an int or a length-K sequence. Columns of H are in blocks of
        true classes, as in `ufm.UFM`.
      noisy: (N,) the training label of every column (e.g. from `flip_labels` or
        `symmetric_noise`). Static.
      lam_W, lam_H, lam_M, lam_b: weight decays (>= 0; lam_M > 0), pytree leaves.
      bias: whether the model has a bias b.
    """

    noisy: tuple[int, ...] = ()
    lam_W: float = leaf(default=5e-4, lower=0.0)  # noqa: N815 (as in ufm.UFM)
    lam_H: float = leaf(default=5e-4, lower=0.0)  # noqa: N815
    lam_M: float = leaf(default=5e-4, lower=0.0, strict=True)  # noqa: N815
    lam_b: float = leaf(default=5e-4, lower=0.0)
    bias: bool = static(default=True, check=bool_check)

    def __check__(self):
        changes = super().__check__() or {}
        noisy = tuple(int(c) for c in self.noisy)
        N = sum(self.counts)
        if len(noisy) != N or any(c < 0 or c >= self.K for c in noisy):
            raise ValueError(
                f"noisy must hold one label in [0, K) per sample (N={N}), got {len(noisy)} labels"
            )
        return {**changes, "noisy": noisy}

    @classmethod
    def with_rate(cls, K: int, d: int, n, rate: float, key: Array, **kw) -> NoisyUFM:
        """A model trained on the true labels with a fraction `rate` flipped (`flip_labels`)."""
        counts = class_counts(n, check_int("K", K, 2))
        labels = np.repeat(np.arange(K), counts)
        return cls(K=K, d=d, n=n, noisy=flip_labels(key, labels, K, rate), **kw)

    # --- structure (static) -------------------------------------------------------------------
    @property
    def noisy_labels(self) -> Array:
        """(N,) training label of each column."""
        return jnp.asarray(self.noisy)

    @property
    def is_noisy(self) -> np.ndarray:
        """(N,) bool: the training label differs from the true class."""
        return np.asarray(self.noisy) != np.repeat(np.arange(self.K), self.counts)

    @property
    def targets(self) -> Array:
        """(N, K) one-hot NOISY label of each sample (what the loss sees); `labels` are the
        true classes."""
        return jax.nn.one_hot(self.noisy_labels, self.K)

    # --- parameters and objective ---------------------------------------------------------------
    init = UFM.init  # the same Gaussian start and logits W h_i + b as the UFM
    logits = UFM.logits

    def data_loss(self, params: Params) -> Array:
        return cross_entropy(self.logits(params), self.targets.astype(params.W.dtype))

    def penalty(self, params: Params) -> Array:
        """lam_W/2 ||W||^2 + lam_H/2 sum_k n_k ||hbar_k||^2 + lam_M/2 sum_i ||h_i - hbar_true||^2
        (+ lam_b/2 ||b||^2)."""
        H = params.H
        Y = jax.nn.one_hot(self.labels, self.K, dtype=H.dtype)
        counts = jnp.asarray(self.counts, H.dtype)
        means = (H @ Y) / counts[None, :]
        dev = H - means @ Y.T
        r = 0.5 * self.lam_W * frobenius_sq(params.W)
        r = r + 0.5 * self.lam_H * jnp.sum(counts * jnp.sum(means * means, axis=0))
        r = r + 0.5 * self.lam_M * frobenius_sq(dev)
        return r if params.b is None else r + 0.5 * self.lam_b * frobenius_sq(params.b)

    def objective(self, params: Params) -> Array:
        return self.data_loss(params) + self.penalty(params)

    def metrics(self, params: Params) -> dict[str, Array]:
        """The summary scalars of `memorization_report`."""
        rep = memorization_report(self, params)
        return {k: v for k, v in rep.items() if jnp.ndim(v) == 0}


def memorization_report(model: NoisyUFM, params: Params) -> dict[str, Array]:
    """Where the noisy samples' features sit relative to the class means (jit-able).

    With mu_k the mean of the CLEAN samples of true class k, for a noisy sample i of true class t
    and label y, D_i = ||mu_y - mu_t||:
      memorization: (M,) <h_i - mu_t, mu_y - mu_t>/D_i^2 per noisy sample, in order: 0 at its
        true class's mean, 1 at its label's class mean.
      dist_true, dist_label: (M,) ||h_i - mu_t||/D_i and ||h_i - mu_y||/D_i.
      fitted: (M,) whether the logits of h_i pick its noisy label.
      mean_memorization, mean_dist_true, mean_dist_label, fraction_fitted: the averages.
      dilation: tr(Sigma_W)/tr(Sigma_B) with respect to the TRUE classes (all samples): 0 at
        collapse; memorisation spreads the true classes (the "dilation" of Nguyen et al.).
      clean_spread: the same ratio over clean samples only.
    NaN entries where a class has no clean sample.
    """
    H = params.H
    K = model.K
    true = np.repeat(np.arange(K), model.counts)
    noisy = np.asarray(model.noisy)
    flipped = noisy != true
    clean = ~flipped
    Yc = jax.nn.one_hot(jnp.asarray(true), K, dtype=H.dtype) * jnp.asarray(clean, H.dtype)[:, None]
    mu = (H @ Yc) / jnp.sum(Yc, axis=0)[None, :]  # clean class means
    idx = np.flatnonzero(flipped)
    Hn = H[:, idx]
    mt, my = mu[:, true[idx]], mu[:, noisy[idx]]
    D2 = jnp.sum((my - mt) ** 2, axis=0)
    D = jnp.sqrt(D2)
    mem = jnp.sum((Hn - mt) * (my - mt), axis=0) / D2
    logits = model.logits(params)[idx]
    fitted = jnp.argmax(logits, axis=1) == jnp.asarray(noisy[idx])

    def spread(cols):
        Hs = H[:, cols]
        Y = jax.nn.one_hot(jnp.asarray(true[cols]), K, dtype=H.dtype)
        M = (Hs @ Y) / jnp.sum(Y, axis=0)[None, :]
        within = jnp.sum((Hs - M @ Y.T) ** 2) / Hs.shape[1]
        between = jnp.sum((M - Hs.mean(axis=1)[:, None]) ** 2) / K
        return within / between

    return {
        "memorization": mem,
        "dist_true": jnp.linalg.norm(Hn - mt, axis=0) / D,
        "dist_label": jnp.linalg.norm(Hn - my, axis=0) / D,
        "fitted": fitted,
        "mean_memorization": jnp.mean(mem),
        "mean_dist_true": jnp.mean(jnp.linalg.norm(Hn - mt, axis=0) / D),
        "mean_dist_label": jnp.mean(jnp.linalg.norm(Hn - my, axis=0) / D),
        "fraction_fitted": jnp.mean(fitted.astype(H.dtype)),
        "dilation": spread(np.arange(model.N)),
        "clean_spread": spread(np.flatnonzero(clean)),
    }


# --- the exact optimum of the symmetric layout ------------------------------------------------
def _symmetric_layout(model: NoisyUFM) -> tuple[int, int]:
    """(n_c, r) if the model has the layout of `symmetric_noise`, else NoClosedForm."""
    if not isinstance(model.n, int):
        raise NoClosedForm("the label-noise optimum needs equal class sizes")
    K, n = model.K, model.n
    first = model.noisy[:n]
    n_c = sum(1 for c in first if c == 0)
    r = (n - n_c) // (K - 1) if K > 1 else 0
    if n_c + (K - 1) * r != n or model.noisy != symmetric_noise(K, n_c, r)[1]:
        raise NoClosedForm(
            "the label-noise optimum is known only for the symmetric layout of symmetric_noise "
            "(in every class n_c clean samples and r relabelled to each other class)"
        )
    return n_c, r


def _reduced(x, K, n_c, r, lam_W, lam_H, lam_M):
    """Value and gradient of the reduced objective in x = (s, u, v) (module docstring)."""
    s, u, v = x
    n = n_c + (K - 1) * r
    e = (K - 1) * math.exp(-s)
    Lc, dLc = math.log1p(e), -e / (1 + e)
    a, b = math.exp(v - u), (K - 2) * math.exp(-u)
    Dn = 1 + a + b
    Ln, dLn_u, dLn_v = math.log(Dn), (-a - b) / Dn, a / Dn
    wc, wn = n_c / n, (K - 1) * r / n
    AB = (n_c * s + (K - 1) * r * v - r * u) / n  # the true-class mean's margin, A - B
    dAB = np.array([n_c / n, -r / n, (K - 1) * r / n])
    Z2 = (K - 1) * (n_c * s * s + r * (K * u * u + K * v * v - (u + v) ** 2))
    dZ2 = (K - 1) * np.array(
        [2 * n_c * s, r * (2 * K * u - 2 * (u + v)), r * (2 * K * v - 2 * (u + v))]
    )
    Pi2 = n * (K - 1) * AB * AB
    dPi2 = 2 * n * (K - 1) * AB * dAB
    T = lam_H * Pi2 + lam_M * (Z2 - Pi2)
    dT = lam_H * dPi2 + lam_M * (dZ2 - dPi2)
    pen = math.sqrt(lam_W * (K - 1) * max(T, 0.0))
    f = wc * Lc + wn * Ln + pen
    g = np.array([wc * dLc, wn * dLn_u, wn * dLn_v])
    if T > 0:
        g = g + math.sqrt(lam_W * (K - 1)) * dT / (2 * math.sqrt(T))
    return f, g


def noisy_margins(
    K: int, n_c: int, r: int, lam_W: float, lam_H: float, lam_M: float
) -> tuple[tuple[float, float, float], float]:
    """((s, u, v), f*) of the symmetric layout (module docstring): s the clean margin; a sample of
    true class k labelled j has logits u(e_j - 1/K) + v(e_k - 1/K). Convex; solved by BFGS from
    the analytic gradient and polished by Newton steps on a finite-difference Hessian. The zero
    solution is optimal iff g^T Q^{-1} g <= lam_W (K-1), g the data gradient at 0 and
    T = x^T Q x the quadratic form under the square root."""
    from scipy.optimize import minimize

    if K < 3:
        raise NoClosedForm("the label-noise reduction needs K >= 3")
    Q = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            e = np.eye(3)
            Q[i, j] = 0.25 * (
                _T(e[i] + e[j], K, n_c, r, lam_H, lam_M) - _T(e[i] - e[j], K, n_c, r, lam_H, lam_M)
            )
    g0 = _reduced(np.zeros(3), K, n_c, r, 0.0, lam_H, lam_M)[1]  # lam_W = 0: the data gradient
    # (Q is singular when r = 0 or n_c = 0: directions that change nothing; use the pseudo-inverse)
    if g0 @ np.linalg.pinv(Q) @ g0 <= lam_W * (K - 1):
        return (0.0, 0.0, 0.0), _reduced(np.zeros(3), K, n_c, r, lam_W, lam_H, lam_M)[0]
    args = (K, n_c, r, lam_W, lam_H, lam_M)
    res = minimize(
        _reduced,
        np.array([1.0, 1.0, 0.0]),
        args=args,
        jac=True,
        method="BFGS",
        options={"gtol": 1e-13, "maxiter": 10000},
    )
    x = res.x
    for _ in range(8):  # Newton polish
        g = _reduced(x, *args)[1]
        h = 1e-6
        Hs = np.array(
            [
                (_reduced(x + h * e, *args)[1] - _reduced(x - h * e, *args)[1]) / (2 * h)
                for e in np.eye(3)
            ]
        )
        step = np.linalg.lstsq(0.5 * (Hs + Hs.T), g, rcond=1e-12)[0]
        if _reduced(x - step, *args)[0] <= _reduced(x, *args)[0]:
            x = x - step
    return (float(x[0]), float(x[1]), float(x[2])), float(_reduced(x, *args)[0])


def _T(x, K, n_c, r, lam_H, lam_M):
    s, u, v = x
    n = n_c + (K - 1) * r
    AB = (n_c * s + (K - 1) * r * v - r * u) / n
    Z2 = (K - 1) * (n_c * s * s + r * (K * u * u + K * v * v - (u + v) ** 2))
    Pi2 = n * (K - 1) * AB * AB
    return lam_H * Pi2 + lam_M * (Z2 - Pi2)


@optimum.register
def _(model: NoisyUFM) -> Optimum:
    K, d = model.K, model.d
    lam_W, lam_H, lam_M = as_float(model.lam_W), as_float(model.lam_H), as_float(model.lam_M)
    if lam_W <= 0 or lam_H <= 0:
        raise NoClosedForm(f"the optimum needs lam_W, lam_H > 0, got {lam_W}, {lam_H}")
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
    return Optimum(value, Params(jnp.asarray(W), jnp.asarray(H), b))
