"""The central path of the MSE UFM (Han, Papyan & Donoho, ICLR 2022; docs/theory.md §14.2).

On the central path the classifier is always the ridge optimum for the current features,

    (W_LS(H), b_LS(H)) = argmin_{W, b} f(W, H, b),   f = (1/(2N))||WH + b1ᵀ - Y||² + lam_W/2 ||W||²,

and the features follow the gradient flow of L_LS(H) = f(W_LS(H), H, b_LS(H)). That loss depends
on H only through the signal-to-noise singular values omega_j of the matrix
(Sigma_W + lam_W I)^{-1/2} Mbar/sqrt(K), as (1/(2K)) sum_j 1/(1 + omega_j^2).

The flow integrated here is the renormalised one. Features start renormalised,
X = Sigma_W^{-1/2}(H - mu_G 1ᵀ), and each feature moves by the class average of its gradient, so
the within-class part (Sigma_W = I) and the global mean (0) stay frozen while the centred class
means Z (d, K) follow dZ/dt = -(1/n) ∇_Z L_LS. Then every omega_j obeys

    log omega + omega^2 + omega^4/4 = t/(K^2 n (1 + lam_W)) + const     (`central_path_omega`),

the singular vectors stay fixed, and NC1 = (1/K) sum_j 1/((1 + lam_W) omega_j^2) -> 0 like t^{-1/2}.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ufm.dynamics.flows import FlowResult, gradient_flow, integrate, time_grid
from ufm.dynamics.laws import check_ufm
from ufm.metrics.dynamics import snr_singular_values
from ufm.metrics.nc import class_stats, nc_metrics
from ufm.models._base import check_choice, check_real, is_concrete
from ufm.models.ufm import Params

__all__ = [
    "CentralPathResult",
    "central_path",
    "ridge_classifier",
    "renormalize",
    "central_path_gap",
]


class CentralPathResult(NamedTuple):
    """Output of `central_path`.

    H: final features on the path (d, N), renormalised (Sigma_W = I, global mean 0).
    history: dict of (T, ...) arrays recorded every record_every steps: "t", "objective"
      (L_LS(H)), "omega" (T, K-1) (largest first), "nc1", "nc2", "nc2_W", "nc3" (`nc_metrics` of H
      and W_LS(H)).
    gd: plain gradient descent on the full model from the same start (a `FlowResult` whose
      history holds "t", "objective" and `central_path_gap`), or None.
    """

    H: Array
    history: dict[str, Array]
    gd: FlowResult | None


def ridge_classifier(H: Array, labels: Array, K: int, lam_W=0.0) -> tuple[Array, Array]:
    """The ridge classifier with free bias: argmin over (W, b) of

        (1/(2N)) ||W H + b 1ᵀ - Y||² + lam_W/2 ||W||²,   Y the one-hot targets (K, N),

    W = C (S + lam_W I)^{-1}, b = ȳ - W mu_G, with S = H̃H̃ᵀ/N, C = ỸH̃ᵀ/N (centred features and
    targets) and ȳ the class frequencies. Needs S + lam_W I invertible.

    Returns:
      (W (K, d), b (K,)).
    """
    d, N = H.shape
    Y = jax.nn.one_hot(labels, K, dtype=H.dtype)  # (N, K)
    mu, ybar = H.mean(1), Y.mean(0)
    Hc = H - mu[:, None]
    S = Hc @ Hc.T / N + lam_W * jnp.eye(d, dtype=H.dtype)
    C = (Y - ybar[None, :]).T @ Hc.T / N
    W = jnp.linalg.solve(S, C.T).T  # S is symmetric
    return W, ybar - W @ mu


def renormalize(H: Array, labels: Array, K: int) -> Array:
    """Sigma_W^{-1/2} (H - mu_G 1ᵀ): features with identity within-class covariance and zero
    global mean (Sigma_W from `nc_metrics`'s conventions; it must be invertible)."""
    _, _, _, mu_G, R = class_stats(H, labels, K, "weighted")
    e, V = jnp.linalg.eigh(R @ R.T / H.shape[1])
    return (V / jnp.sqrt(e)[None, :]) @ V.T @ (H - mu_G[:, None])


def central_path_gap(model, params, params0=None) -> dict[str, Array]:
    """How far UFM parameters (W, H, b) are from the central path at their features H.

    Returns dict: "ls_gap" = f(W, H, b) - f(W_LS(H), H, b_LS(H)) >= 0, the term of the MSE loss
    that Han, Papyan & Donoho find negligible in training, computed without cancellation as
    (1/(2N)) ||ΔW H + Δb 1ᵀ||² + lam_W/2 ||ΔW||² (f is quadratic in (W, b), ∇f = 0 at the
    optimum); "classifier_gap" = ||W - W_LS(H)||/||W_LS(H)||; "omega" (`snr_singular_values`,
    ridge lam_W) and "nc1" of H. A `gradient_flow` stats function (params0 is unused).
    """
    W, H, b = params
    K, labels = model.K, model.labels
    W_ls, b_ls = ridge_classifier(H, labels, K, model.lam_W)
    dW, db = W - W_ls, b - b_ls
    D = dW @ H + db[:, None]
    gap = 0.5 * jnp.sum(D * D) / H.shape[1] + 0.5 * model.lam_W * jnp.sum(dW * dW)
    return {
        "ls_gap": gap,
        "classifier_gap": jnp.linalg.norm(dW) / jnp.linalg.norm(W_ls),
        "omega": snr_singular_values(H, labels, K, model.lam_W),
        "nc1": nc_metrics(H, labels, K=K)["nc1"],
    }


@partial(jax.jit, static_argnames=("n_records", "method"))
def _path(model, X0, dt, n_records, record_every, method):
    K, n, labels = model.K, model.n, model.labels
    Y = jax.nn.one_hot(labels, K, dtype=X0.dtype)  # (N, K)
    Z0 = X0 @ Y / n  # centred class means (the global mean of X0 is 0)
    E = X0 - Z0 @ Y.T  # within-class part, frozen

    def on_path(Z):
        H = Z @ Y.T + E
        W, b = ridge_classifier(H, labels, K, model.lam_W)
        return Params(W, H, b)

    def velocity(Z):  # envelope: ∇L_LS(H) = ∂f/∂H at (W_LS, b_LS); class average of each column
        g = jax.grad(model.objective)(on_path(Z)).H
        return -(g @ Y) / n

    def record(Z, t):
        p = on_path(Z)
        nc = nc_metrics(p.H, labels, W=p.W, b=p.b)
        return {
            "t": t,
            "objective": model.objective(p),
            "omega": snr_singular_values(p.H, labels, K, model.lam_W),
            **{k: nc[k] for k in ("nc1", "nc2", "nc2_W", "nc3")},
        }

    Z, history = integrate(velocity, Z0, dt, n_records, record_every, method, record)
    return Z @ Y.T + E, history


def _check_model(model) -> None:
    check_ufm(model, "the central path", loss="mse", bias=True)
    for name in ("lam_H", "lam_b"):
        value = getattr(model, name)
        if is_concrete(value) and np.any(np.asarray(value) != 0):
            raise ValueError(
                f"{name} must be 0 on the central path (the renormalised flow needs a loss "
                f"invariant under affine maps of the features), got {name}={value!r}"
            )
    if model.d > model.N - model.K:
        raise ValueError(
            f"d must be <= N - K = {model.N - model.K} for an invertible within-class covariance "
            f"(K={model.K}, n={model.n}), got d={model.d}"
        )


def central_path(
    model,
    H0: Array,
    t: float,
    dt: float,
    record_every: int = 1,
    method: str = "rk4",
    gd_dt: float | None = None,
) -> CentralPathResult:
    """Integrate the renormalised central-path flow of the MSE UFM from features H0, and
    optionally plain gradient descent on the full model from the same start.

    The path starts at X0 = Sigma_W^{-1/2}(H0 - mu_G 1ᵀ) with the ridge classifier
    (W_LS(X0), b_LS(X0)); its features then move as in the module docstring (Han, Papyan &
    Donoho 2022; docs/theory.md §14.2), so that F(omega_j(t)) - t/(K^2 n (1 + lam_W)) stays
    constant (`central_path_omega`). With gd_dt, `gradient_flow` also runs Euler steps of size
    gd_dt (gradient descent with learning rate gd_dt) on f(W, H, b) itself from
    (W_LS(X0), X0, b_LS(X0)) up to t, recording `central_path_gap`: its distance from the
    central path at its own features, at the same times as the path.

    Args:
      model: a balanced `ufm.UFM(K, d, n, loss="mse", lam_H=0, lam_b=0)` with free bias and
        K-1 <= d <= N-K; lam_W >= 0 is the ridge of the classifier.
      H0: (d, N) initial features with invertible within-class covariance.
      t: final time (> 0), a multiple of dt. dt: step (> 0).
      record_every: steps of size dt between records.
      method: "rk4" (default) or "euler" for the path.
      gd_dt: step of the gradient descent run (None: no run); record_every * dt must be a
        multiple of it.
    Returns:
      CentralPathResult(H, history, gd).
    """
    _check_model(model)
    check_choice("method", method, ("euler", "rk4"))
    H0 = jnp.asarray(H0)
    if H0.shape != (model.d, model.N):
        raise ValueError(f"H0 must have shape (d, N)={(model.d, model.N)}, got {H0.shape}")
    X0 = renormalize(H0, model.labels, model.K)
    if not np.all(np.isfinite(np.asarray(X0))):
        raise ValueError("H0 must have an invertible within-class covariance, got a singular one")
    dt_, n_records, every = time_grid(t, dt, record_every)
    if gd_dt is not None:
        gd_dt = float(check_real("gd_dt", gd_dt, strict=True))
        gd_every = int(round(record_every * dt / gd_dt))
        if gd_every < 1 or abs(gd_every * gd_dt - record_every * dt) > 1e-9 * record_every * dt:
            raise ValueError(
                f"gd_dt must divide record_every * dt = {record_every * dt}, got gd_dt={gd_dt}"
            )
    H, history = _path(model, X0, dt_, n_records, every, method)
    gd = None
    if gd_dt is not None:
        W, b = ridge_classifier(X0, model.labels, model.K, model.lam_W)
        gd = gradient_flow(model, Params(W, X0, b), t, gd_dt, gd_every, "euler", central_path_gap)
    return CentralPathResult(H, history, gd)
