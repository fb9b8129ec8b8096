"""Smoke tests of every figure function (Agg backend): each returns a Figure with the expected
axes and artists, and rejects malformed input with a ValueError naming it."""

import jax
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import ufm
from ufm.imbalance import MinorityCurve

MODEL = ufm.UFM(K=4, d=5, n=3, lam_W=1e-2, lam_H=1e-2)


@pytest.fixture(scope="module")
def solved():
    return ufm.solve(MODEL, jax.random.key(0), steps=60, record_every=10)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_metric_curves_single_and_seeds(solved):
    fig = ufm.plot.metric_curves(solved.history)
    assert isinstance(fig, Figure) and len(fig.axes[0].get_lines()) >= 3
    batch = {k: np.stack([np.asarray(v)] * 3) for k, v in solved.history.items()}
    fig = ufm.plot.metric_curves(batch, keys=("nc1",))
    assert len(fig.axes[0].get_lines()) == 4  # three seeds and their median


def test_gram_vs_etf_and_demo_figure(solved):
    fig = ufm.plot.gram_vs_etf(solved.params.W)
    assert len(fig.axes) == 3  # two heatmaps and the colour bar
    fig = ufm.plot.demo_figure(solved.history, solved.params.W)
    assert len(fig.axes) >= 3


@pytest.mark.parametrize("dim", [2, 3])
def test_feature_geometry(solved, dim):
    fig = ufm.plot.feature_geometry(solved.params.H, MODEL.labels, W=solved.params.W, dim=dim)
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="dim"):
        ufm.plot.feature_geometry(solved.params.H, MODEL.labels, dim=4)


def test_phase_diagram_with_boundary():
    x, y = np.geomspace(1e-3, 1, 5), np.geomspace(1e-3, 1, 4)
    values = np.outer(x, y)
    fig = ufm.plot.phase_diagram(values, x, y, boundary=lambda t: 0.1 / t, label="nc1")
    assert any(line.get_linestyle() == "--" for line in fig.axes[0].get_lines())
    with pytest.raises(ValueError, match="values"):
        ufm.plot.phase_diagram(values.T, x, y)


def test_minority_collapse_curve_figure():
    R = np.array([1.0, 10.0, 100.0])
    curve = MinorityCurve(R, np.array([-0.2, 0.5, 1.0]), np.array([1.0, 0.5, 0.0]), np.zeros(3))
    fig = ufm.plot.minority_collapse(curve, threshold=12.0)
    assert len(fig.axes[0].get_lines()) == 3


def test_dynamics_figures():
    T = np.arange(1, 6, dtype=float)
    h = {"t": T, "between": T**2, "within": T, "ncc_acc": np.ones(5)}
    assert isinstance(ufm.plot.le_separation({"a": h, "b": h}), Figure)
    hist = {"t": T, "nc1": 1 / T, "nc2": 1 / T, "margin": np.log1p(T), "normalized_margin": T / 10}
    fig = ufm.plot.flow_curves(hist, margin_theory=(T, np.log1p(T)), gamma_star=0.5)
    assert isinstance(fig, Figure)
