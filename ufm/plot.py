"""Matplotlib figures of ufm results: each function takes results and returns a Figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ufm.geometry import etf_gram

if TYPE_CHECKING:  # pyplot is imported inside each figure function: `import ufm` stays light
    from matplotlib.figure import Figure

__all__ = ["metric_curves", "gram_vs_etf", "demo_figure"]


def _normalised_gram(X: np.ndarray) -> np.ndarray:
    G = np.asarray(X) @ np.asarray(X).T
    n = np.linalg.norm(G)
    return G / n if n > 0 else G


def metric_curves(history: dict, keys=("nc1", "nc2", "nc2_W", "nc3"), ax=None) -> Figure:
    """NC metrics (and the objective gap when history has "gap") against step, on log axes.

    `history` is a `Result.history`: name -> (T,) arrays, or (S, T) for S seeds, in which case
    one thin line per seed is drawn with the median on top.
    """
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 4))
    step = np.asarray(history["step"], dtype=float)
    for i, k in enumerate([k for k in keys if k in history]):
        y = np.atleast_2d(np.asarray(history[k], dtype=float))
        x = np.atleast_2d(step)[0]
        ok = x > 0
        color = f"C{i}"
        if y.shape[0] > 1:
            for row in y:
                ax.plot(x[ok], np.abs(row[ok]), color=color, alpha=0.25, lw=0.8)
        ax.plot(x[ok], np.median(np.abs(y), axis=0)[ok], color=color, lw=2, label=k)
    ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-18))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("metric")
    ax.legend()
    return fig


def gram_vs_etf(W: np.ndarray, target: np.ndarray | None = None, axes=None, title="W") -> Figure:
    """Heatmaps of the unit-Frobenius Gram of the rows of W next to a target Gram, normalised
    the same way (default: the simplex ETF Gram P/sqrt(K-1))."""
    import matplotlib.pyplot as plt

    W = np.asarray(W)
    K = W.shape[0]
    target = np.asarray(etf_gram(K)) if target is None else np.asarray(target)
    target = target / np.linalg.norm(target)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    fig = axes[0].figure
    G = _normalised_gram(W)
    lim = max(np.abs(G).max(), np.abs(target).max())
    for ax, M, name in zip(axes, (G, target), (f"Gram of {title}", "theory"), strict=True):
        im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


def demo_figure(history: dict, W: np.ndarray, target: np.ndarray | None = None) -> Figure:
    """The `ufm demo` figure: NC metrics vs step (log axes) and the Gram of W next to the ETF."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 4))
    ax0 = fig.add_subplot(1, 3, 1)
    metric_curves(history, ax=ax0)
    ax0.set_title("NC metrics")
    gram_vs_etf(W, target, axes=[fig.add_subplot(1, 3, 2), fig.add_subplot(1, 3, 3)])
    return fig


# --- dynamics (ufm.dynamics) ----------------------------------------------------------------------
__all__ += ["le_separation", "flow_curves"]


def _dyn_runs(y) -> np.ndarray:
    """(T,) or (..., T) -> (R, T): one row per run."""
    y = np.asarray(y, dtype=float)
    return y.reshape(-1, y.shape[-1])


def le_separation(results: dict, axes=None) -> Figure:
    """Class-mean separation against time for LE-SDE runs on either side of the transition.

    `results` maps a label (e.g. "alpha-beta=+0.3") to an `SDEResult.history` whose arrays are
    (T,) or (trials, T). Left: the between/within ratio sqrt(between/within) (median over trials,
    10-90% band), log y: it grows like exp((alpha-beta) t/K)/sqrt(t) above the critical point
    alpha = beta, stays near sqrt((1-1/K)/n) at it and shrinks like 1/sqrt(t) below it. Right: the
    fraction of trials whose features are NCC-separable (every sample nearest its own class mean).
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    fig = axes[0].figure
    for i, (label, h) in enumerate(results.items()):
        t = _dyn_runs(h["t"])[0]
        ratio = np.sqrt(_dyn_runs(h["between"]) / _dyn_runs(h["within"]))
        lo, med, hi = np.percentile(ratio, [10, 50, 90], axis=0)
        axes[0].plot(t, med, color=f"C{i}", lw=2, label=label)
        axes[0].fill_between(t, lo, hi, color=f"C{i}", alpha=0.2, lw=0)
        sep = (_dyn_runs(h["ncc_acc"]) == 1.0).mean(0)
        axes[1].plot(t, sep, color=f"C{i}", lw=2, label=label)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("t")
    axes[0].set_ylabel("sqrt(between / within)")
    axes[0].set_title("class-mean separation")
    axes[0].legend()
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_xlabel("t")
    axes[1].set_ylabel("P[NCC separable]")
    axes[1].set_title("separability")
    return fig


def flow_curves(
    history: dict,
    keys=("nc1", "nc2", "nc2_W", "nc3"),
    margin_theory: tuple | None = None,
    gamma_star: float | None = None,
    axes=None,
) -> Figure:
    """NC metrics and margin along a `gradient_flow` history (arrays (T,) or (runs, T)).

    Left: the NC metrics against t on log-log axes (median over runs, thin lines per run).
    Right: the min margin against t on a log t axis (the unregularised CE flow grows it like
    log t + log log t), with `margin_theory = (t, q)` dashed when given; when `gamma_star` is given,
    the normalised margin divided by gamma* = 1/((K-1) sqrt(n)) on a twin axis (it tends to 1).
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    fig = axes[0].figure
    t = _dyn_runs(history["t"])[0]
    ok = t > 0
    for i, k in enumerate([k for k in keys if k in history]):
        y = np.abs(_dyn_runs(history[k]))
        if y.shape[0] > 1:
            for row in y:
                axes[0].plot(t[ok], row[ok], color=f"C{i}", alpha=0.25, lw=0.8)
        axes[0].plot(t[ok], np.median(y, axis=0)[ok], color=f"C{i}", lw=2, label=k)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("t")
    axes[0].set_ylabel("metric")
    axes[0].set_title("NC metrics")
    axes[0].legend()
    if "margin" in history:
        q = np.median(_dyn_runs(history["margin"]), 0)
        axes[1].plot(t[ok], q[ok], "C0", lw=2, label="margin")
    if margin_theory is not None:
        tt, q = (np.asarray(a, dtype=float) for a in margin_theory)
        axes[1].plot(tt[tt > 0], q[tt > 0], "k--", lw=1, label="theory")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("t")
    axes[1].set_ylabel("min margin")
    axes[1].set_title("margin")
    if gamma_star is not None and "normalized_margin" in history:
        tw = axes[1].twinx()
        g = np.median(_dyn_runs(history["normalized_margin"]), 0) / gamma_star
        tw.plot(t[ok], g[ok], "C1", lw=1.5, label="normalised margin / gamma*")
        tw.axhline(1.0, color="C1", ls=":", lw=1)
        tw.set_ylabel("normalised margin / gamma*")
        tw.legend(loc="lower right")
    axes[1].legend(loc="upper left")
    return fig


# --- geometry, phase diagrams, minority collapse ---------------------------------------------
__all__ += ["feature_geometry", "phase_diagram", "minority_collapse"]


def feature_geometry(H, labels, W=None, dim: int = 2, ax=None) -> Figure:
    """Class means (and classifier rows) projected on their top `dim` (2 or 3) principal axes.

    The class means mu_k are centred by the global mean; W's rows are drawn on the same axes,
    rescaled to the mean norm of the centred means, so a collapsed solution shows each classifier
    arrow through its class mean (self-duality) and the means on a regular simplex.
    """
    import matplotlib.pyplot as plt

    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got dim={dim!r}")
    H, labels = np.asarray(H), np.asarray(labels)
    K = int(labels.max()) + 1 if W is None else np.asarray(W).shape[0]
    Y = np.eye(K)[labels]  # (N, K)
    means = (H @ Y / Y.sum(0)).T  # (K, d)
    centred = means - H.mean(1)
    _, _, Vt = np.linalg.svd(centred, full_matrices=False)
    axes_ = Vt[:dim].T  # (d, dim)
    if axes_.shape[1] < dim:
        axes_ = np.pad(axes_, ((0, 0), (0, dim - axes_.shape[1])))
    if ax is None:
        fig = plt.figure(figsize=(4.5, 4.5))
        ax = fig.add_subplot(projection="3d" if dim == 3 else None)
    fig = ax.figure
    pts = (H - H.mean(1, keepdims=True)).T @ axes_
    mu = centred @ axes_
    for k in range(K):
        sel = labels == k
        ax.scatter(*pts[sel].T, s=6, alpha=0.3, color=f"C{k % 10}")
        ax.scatter(*mu[k], s=60, marker="o", color=f"C{k % 10}", edgecolor="k")
    if W is not None:
        W = np.asarray(W)
        w = W @ axes_
        scale = np.linalg.norm(centred, axis=1).mean() / max(
            np.linalg.norm(W, axis=1).mean(), 1e-300
        )
        for k in range(K):
            ax.plot(*np.stack([np.zeros(dim), scale * w[k]]).T, color=f"C{k % 10}", lw=2)
    ax.set_title("class means (dots) and classifiers (lines), PCA")
    return fig


def phase_diagram(
    values,
    x,
    y,
    xlabel: str = "x",
    ylabel: str = "y",
    label: str = "metric",
    boundary=None,
    log=(True, True),
    log_values: bool = True,
    floor: float = 1e-16,
    ax=None,
) -> Figure:
    """A metric over a two-axis sweep grid, as a heatmap, with a theoretical boundary on top.

    Args:
      values: (len(x), len(y)) array (e.g. the median over seeds of a sweep's metric).
      x, y: grid values of the two axes.
      boundary: optional callable y = boundary(x) (drawn as a dashed line) or a pair (xs, ys).
      log: log scale for the (x, y) axes; log_values: colour by log10 max(|values|, floor).
    """
    import matplotlib.pyplot as plt

    values, x, y = np.asarray(values, dtype=float), np.asarray(x), np.asarray(y)
    if values.shape != (len(x), len(y)):
        raise ValueError(
            f"values must have shape (len(x), len(y))={(len(x), len(y))}, got {values.shape}"
        )
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5.5, 4.2))
    shown = np.log10(np.maximum(np.abs(values), floor)) if log_values else values
    mesh = ax.pcolormesh(x, y, shown.T, shading="nearest", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=f"log10 {label}" if log_values else label)
    if boundary is not None:
        if callable(boundary):
            xs = (
                np.geomspace(x.min(), x.max(), 200)
                if log[0]
                else np.linspace(x.min(), x.max(), 200)
            )
            ys = boundary(xs)
        else:
            xs, ys = boundary
        ax.plot(xs, ys, "w--", lw=2, label="theory")
        ax.set_ylim(y.min(), y.max())
        ax.legend(loc="best")
    ax.set_xscale("log" if log[0] else "linear")
    ax.set_yscale("log" if log[1] else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def minority_collapse(curve, threshold: float | None = None, ax=None) -> Figure:
    """Cosine between minority classifiers against the imbalance ratio R = n_A/n_B.

    `curve` is an `ufm.imbalance.MinorityCurve` (fields R, cosine, spread); the theoretical
    threshold R_0 beyond which the minority classifiers coincide is drawn when given.
    """
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 3.8))
    ax.plot(curve.R, curve.cosine, "o-", label="cosine of minority classifiers")
    ax.plot(curve.R, curve.spread, "s--", label="minority spread (relative)")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls=":", label=f"theory R_0 = {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("imbalance ratio R = n_A / n_B")
    ax.legend()
    return fig
