"""The solver behind `ufm.certify`: accelerated proximal gradient on the convex form of a model,
stopped by its Fenchel duality gap (docs/theory.md §15-§16).

Variables X = Z R (K x M) and b: in X the nuclear-norm term is ||X||_* (or the ball ||X||_* <= r),
whose proximal map is singular-value thresholding, computed through the eigendecomposition of
the K x K Gram X X^T as X -> U diag((1 - tau/sigma)_+) U^T X. The smooth part
F(X R^{-1} + b 1^T) + lam_b/2 ||b||^2 has a block-diagonal curvature bound (2 L_X for X,
2 L_b + lam_b for b, or L_X alone without a bias), which gives the step sizes; FISTA with
gradient-based adaptive restart (O'Donoghue & Candes 2015) then converges linearly near the
optimum. Steps grow beyond those bounds while a sufficient-decrease test passes (the local
curvature of CE is far below its global bound once the softmax saturates).

Every `check_every` steps the dual point G = -grad F at the iterate is made feasible (bias
constraint G 1 = 0 for a free bias, ||G R^{-T}||_op <= mu by scaling in the penalty form) and

    D(G) = -F*(-G) [- ||G 1||^2/(2 lam_b)] [- r ||G R^{-T}||_op in the ball form]  <=  min P,
    -F*(-G) = sum_a w_a m_a Entropy(q_a),  q_a = (t_a - g_a/w_a)/m_a stochastic      (CE)
    -F*(-G) = sum_a <g_a, t_a> - ||g_a||^2/(2 w_a)                                     (MSE)

bounds the optimum from below; the loop stops once P - D <= tol |P|. All pure JAX: `solve_form`
traces under jit and vmap (over the form's leaves: a phase diagram in one call).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from ufm.theory._certify_form import ConvexForm


class Solution(NamedTuple):
    """The solver's result for one form (a batch stacks it).

    X: (K, M) the best iterate X = Z R (lowest P). b: (K,) its bias (zeros without one).
    value: () P at (X, b), the convex objective. lower: () the best dual bound D.
    dual_norm: () ||G R^{-T}||_op of the dual point of the bound, before any scaling: mu at a
      nonzero penalised optimum, the budget's multiplier in the ball form.
    steps: () int, proximal steps taken.
    """

    X: Array
    b: Array
    value: Array
    lower: Array
    dual_norm: Array
    steps: Array


class _Problem(NamedTuple):
    T: Array  # (K, M) targets
    w: Array  # (1, M) atom weights
    m: Array  # (1, M) target sums (CE) or ones (MSE)
    Rinv: Array  # (1, M) diagonal or (M, M)
    diag: bool  # R diagonal
    t_X: Array  # step in X
    t_b: Array  # step in b
    lam_b: Array


def _setup(form: ConvexForm) -> _Problem:
    T = jnp.asarray(form.targets)
    w = jnp.asarray(form.weights, T.dtype)
    R = jnp.asarray(form.metric, T.dtype)
    m = T.sum(0) if form.loss == "ce" else jnp.ones_like(w)
    wh = w * (0.5 * m if form.loss == "ce" else 1.0)  # curvature bound of each atom's loss
    if R.ndim == 1:
        Rinv = 1.0 / R[None, :]
        L_X = jnp.max(wh * Rinv[0] ** 2)
    else:
        Rinv = jnp.linalg.inv(R)
        L_X = jnp.linalg.eigvalsh((Rinv * wh[None, :]) @ Rinv.T)[-1]
    lam_b = jnp.asarray(form.lam_b, T.dtype) if form.bias else jnp.zeros((), T.dtype)
    t_X = 1.0 / (2.0 * L_X) if form.bias else 1.0 / L_X
    t_b = 1.0 / (2.0 * jnp.sum(wh) + lam_b)
    return _Problem(T, w[None, :], m[None, :], Rinv, R.ndim == 1, t_X, t_b, lam_b)


def _logits(p: _Problem, X: Array, b: Array) -> Array:
    Z = X * p.Rinv if p.diag else X @ p.Rinv
    return Z + b[:, None]


def _in_metric(p: _Problem, G: Array) -> Array:
    """G R^{-T}: a gradient in Z as one in X."""
    return G * p.Rinv if p.diag else G @ p.Rinv.T


def _loss(form: ConvexForm, p: _Problem, Zb: Array) -> tuple[Array, Array, Array]:
    """(F, grad F (K, M), q): q the softmax (CE) or the logits (MSE)."""
    if form.loss == "ce":
        lse = jax.nn.logsumexp(Zb, axis=0, keepdims=True)
        q = jnp.exp(Zb - lse)
        value = jnp.sum(p.w * (p.m * lse - jnp.sum(p.T * Zb, axis=0, keepdims=True)))
        return value, p.w * (p.m * q - p.T), q
    r = Zb - p.T
    return 0.5 * jnp.sum(p.w * r * r), p.w * r, Zb


def _op_norm(A: Array) -> Array:
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(A @ A.T)[-1], 0.0))


def _shrink(form: ConvexForm, X: Array, tau: Array) -> Array:
    """Proximal map of tau ||.||_* (penalty form) or projection onto ||.||_* <= mu (ball form),
    through the Gram X X^T = U diag(sigma^2) U^T."""
    lam, U = jnp.linalg.eigh(X @ X.T)
    s = jnp.sqrt(jnp.maximum(lam, 0.0))
    if form.ball:  # threshold theta with sum (s - theta)_+ = r, 0 when inside the ball
        r = form.mu
        desc = jnp.sort(s)[::-1]
        j = jnp.arange(1, s.shape[0] + 1, dtype=s.dtype)
        theta_j = (jnp.cumsum(desc) - r) / j
        rho = jnp.max(jnp.where(desc > theta_j, j, 1.0)).astype(int) - 1
        tau = jnp.where(jnp.sum(s) > r, jnp.maximum(theta_j[rho], 0.0), 0.0)
    pos = s > tau
    f = jnp.where(pos, 1.0 - tau / jnp.where(pos, s, 1.0), 0.0)
    return (U * f[None, :]) @ (U.T @ X)


def _entropy(q: Array) -> Array:
    """(1, M) column entropies -sum_k q log q (0 log 0 = 0)."""
    pos = q > 0
    return -jnp.sum(jnp.where(pos, q * jnp.log(jnp.where(pos, q, 1.0)), 0.0), 0, keepdims=True)


def _free_bias_ce(p: _Problem, q: Array) -> Array:
    """Stochastic columns q' with sum_a w_a (t_a - m_a q'_a) = 0: q shifted by a common vector,
    then mixed with the prior pi = sum_a w_a t_a / sum_a w_a m_a just enough to stay >= 0."""
    wm = p.w * p.m
    G = p.w * (p.T - p.m * q)
    qc = q + (G.sum(1) / wm.sum())[:, None]
    pi = ((p.w * p.T).sum(1) / wm.sum())[:, None]
    neg = qc < 0
    theta = jnp.max(jnp.where(neg, -qc / jnp.where(neg, pi - qc, 1.0), 0.0))
    return (1.0 - theta) * qc + theta * pi


def _dual(form: ConvexForm, p: _Problem, Zb: Array, q: Array) -> tuple[Array, Array]:
    """(D(G), ||G R^{-T}||_op) for the dual point made feasible from G = -grad F (docstring)."""
    free = form.bias & (p.lam_b <= 0)
    if form.loss == "ce":
        if form.bias:
            q = jnp.where(free, _free_bias_ce(p, q), q)
        G = p.w * (p.T - p.m * q)
    else:
        G = p.w * (p.T - Zb)
        if form.bias:
            G = jnp.where(free, G - p.w * (G.sum(1) / p.w.sum())[:, None], G)
    op = _op_norm(_in_metric(p, G))
    if form.ball:
        s = jnp.ones_like(op)
    else:
        s = jnp.minimum(1.0, form.mu / jnp.where(op > 0, op, 1.0))
    if form.loss == "ce":
        q = (1.0 - s) * p.T / p.m + s * q
        D = jnp.sum(p.w * p.m * _entropy(q))
    else:
        D = jnp.sum(s * G * p.T) - jnp.sum((s * G) ** 2 / (2.0 * p.w))
    if form.bias:
        g1 = s * G.sum(1)
        D = D - jnp.where(free, 0.0, jnp.sum(g1 * g1) / (2.0 * jnp.where(free, 1.0, p.lam_b)))
    if form.ball:
        D = D - form.mu * op
    return D, op


def dual_at(form: ConvexForm, Zb: Array) -> tuple[Array, Array]:
    """(D, ||G R^{-T}||_op): the dual bound <= min P from the atoms' logits Zb (K, M), any point
    (G = -grad F there, made feasible)."""
    p = _setup(form)
    return _dual(form, p, Zb, _loss(form, p, Zb)[2])


GROW = 1.25  # growth of the step scale after an accepted step


class _State(NamedTuple):
    X: Array
    b: Array
    X_prev: Array
    b_prev: Array
    k: Array  # momentum counter, reset to 1 on restart
    scale: Array  # step multiplier over the global curvature bound (>= 1)
    steps: Array
    X_best: Array
    b_best: Array
    value: Array  # P at the best iterate
    lower: Array  # best D
    dual_norm: Array


def _smooth(form: ConvexForm, p: _Problem, X: Array, b: Array) -> tuple[Array, Array, Array]:
    """(f, grad_X f, grad_b f) of the smooth part f = F(X R^{-1} + b 1^T) + lam_b/2 ||b||^2."""
    F, gZ, _ = _loss(form, p, _logits(p, X, b))
    return F + 0.5 * p.lam_b * jnp.sum(b * b), _in_metric(p, gZ), gZ.sum(1) + p.lam_b * b


def _prox_step(form: ConvexForm, p: _Problem, s: _State) -> _State:
    """One accelerated proximal step from the extrapolated point Y, with steps s.scale times the
    global ones. A step longer than the global one must pass the sufficient-decrease test
    f(x+) <= f(Y) + <grad f(Y), x+ - Y> + ||x+ - Y||^2/(2t); if it fails the state is kept and
    the scale halved (never below 1, where the test holds by the curvature bound), else the scale
    grows by GROW. Momentum restarts when the step goes against the last move."""
    beta = (s.k - 1.0) / (s.k + 2.0)
    Yx, Yb = s.X + beta * (s.X - s.X_prev), s.b + beta * (s.b - s.b_prev)
    t_X, t_b = p.t_X * s.scale, p.t_b * s.scale
    fY, gX, gb = _smooth(form, p, Yx, Yb)
    X = _shrink(form, Yx - t_X * gX, t_X * form.mu)
    b = Yb - t_b * gb if form.bias else Yb
    dX, db = X - Yx, b - Yb
    bound = fY + jnp.sum(gX * dX) + jnp.sum(gb * db)
    bound = bound + 0.5 * (jnp.sum(dX * dX) / t_X + jnp.sum(db * db) / t_b)
    ok = (_smooth(form, p, X, b)[0] <= bound) | (s.scale <= 1.0)
    restart = jnp.sum((Yx - X) * (X - s.X)) / t_X + jnp.sum((Yb - b) * (b - s.b)) / t_b > 0
    k = jnp.where(restart, 1.0, s.k + 1.0)
    moved = s._replace(X=X, b=b, X_prev=s.X, b_prev=s.b, k=k, scale=s.scale * GROW)
    kept = s._replace(scale=jnp.maximum(s.scale / 2.0, 1.0))
    new = jax.tree.map(lambda a, o: jnp.where(ok, a, o), moved, kept)
    return new._replace(steps=s.steps + 1)


def _evaluate(form: ConvexForm, p: _Problem, s: _State) -> _State:
    Zb = _logits(p, s.X, s.b)
    F, _, q = _loss(form, p, Zb)
    P = F + 0.5 * p.lam_b * jnp.sum(s.b * s.b)
    if not form.ball:
        P = P + form.mu * jnp.sum(jnp.linalg.svd(s.X, compute_uv=False))
    D, op = _dual(form, p, Zb, q)
    better, higher = P < s.value, D > s.lower
    return s._replace(
        X_best=jnp.where(better, s.X, s.X_best),
        b_best=jnp.where(better, s.b, s.b_best),
        value=jnp.where(better, P, s.value),
        lower=jnp.where(higher, D, s.lower),
        dual_norm=jnp.where(higher, op, s.dual_norm),
    )


def solve_form(
    form: ConvexForm, tol: float | Array, max_steps: int, check_every: int = 10
) -> Solution:
    """Minimise the convex form to a relative duality gap (P - D)/|P| <= tol, or `max_steps`.

    Pure and traceable (jit it; vmap it over forms with batched leaves). The dual bound is
    evaluated every `check_every` proximal steps; the best primal iterate and the best bound are
    kept. A non-finite value stops the loop (the result then carries it).
    """
    p = _setup(form)
    K, M = p.T.shape
    zX, zb = jnp.zeros((K, M), p.T.dtype), jnp.zeros((K,), p.T.dtype)
    inf = jnp.asarray(jnp.inf, p.T.dtype)
    one = jnp.ones((), p.T.dtype)
    s0 = _State(zX, zb, zX, zb, one, one, jnp.zeros((), int), zX, zb, inf, -inf,
                jnp.zeros((), p.T.dtype))  # fmt: skip

    def cond(s):
        going = s.value - s.lower > tol * jnp.abs(s.value)
        finite = jnp.isfinite(s.value) & jnp.isfinite(s.lower)
        return (s.steps == 0) | (going & finite & (s.steps < max_steps))

    def body(s):
        s = jax.lax.fori_loop(0, check_every, lambda _, s: _prox_step(form, p, s), s)
        return _evaluate(form, p, s)

    s = jax.lax.while_loop(cond, body, s0)
    return Solution(s.X_best, s.b_best, s.value, s.lower, s.dual_norm, s.steps)
