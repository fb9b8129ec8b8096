"""Matplotlib figures of ufm results: each function takes results and returns a Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ufm.geometry import etf_gram

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
    fig = plt.figure(figsize=(13, 4))
    ax0 = fig.add_subplot(1, 3, 1)
    metric_curves(history, ax=ax0)
    ax0.set_title("NC metrics")
    gram_vs_etf(W, target, axes=[fig.add_subplot(1, 3, 2), fig.add_subplot(1, 3, 3)])
    return fig
