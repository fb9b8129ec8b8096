"""The public model protocol: a model written here, outside ufm, with `ufm.Model` and `ufm.leaf`
only, gets solve, sweep (no recompilation for new leaf values), checkpoints, metrics and save/load;
and the protocol's own mechanics (leaves vs static fields, checks on construction, never on
tracers)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ufm

K, d, n = 3, 4, 2
RTOL = 1e-10  # ridge optimum by L-BFGS in float64 against a linear solve


class RidgeParams(NamedTuple):
    H: jax.Array


class FixedClassifierRidge(ufm.Model):
    """Features only, classifier fixed at the simplex ETF rows W (K x d):
    f(H) = 1/(2N) ||W H - Y||_F^2 + lam_H/2 ||H||_F^2, minimised by
    H* = (W^T W + N lam_H I)^{-1} W^T Y."""

    K: int
    d: int
    n: int = ufm.static(default=1, check=lambda name, v: int(v))
    lam_H: float = ufm.leaf(default=1e-2, lower=0.0, strict=True)
    shift: float = ufm.leaf(default=0.0)

    def __check__(self):
        if self.d < self.K - 1:
            raise ValueError(f"d must be >= K-1={self.K - 1}, got d={self.d}")

    @property
    def labels(self):
        return jnp.repeat(jnp.arange(self.K), self.n)

    @property
    def W(self):
        return ufm.geometry.simplex_etf(self.K, self.d, dtype=jnp.float64).T

    def init(self, key):
        return RidgeParams(jax.random.normal(key, (self.d, self.K * self.n)))

    def objective(self, p):
        Y = jax.nn.one_hot(self.labels, self.K).T + self.shift
        N = self.K * self.n
        R = self.W @ p.H - Y
        return 0.5 * jnp.sum(R * R) / N + 0.5 * self.lam_H * jnp.sum(p.H * p.H)

    def metrics(self, p):
        return ufm.nc_metrics(p.H, self.labels, W=self.W)


def ridge_optimum(model: FixedClassifierRidge) -> np.ndarray:
    """The closed form, computed independently in NumPy."""
    W = np.asarray(model.W)
    N = model.K * model.n
    Y = np.repeat(np.eye(model.K), model.n, axis=1) + model.shift
    return np.linalg.solve(W.T @ W + N * model.lam_H * np.eye(model.d), W.T @ Y)


def objective_np(model, H) -> float:
    return float(model.objective(RidgeParams(jnp.asarray(H))))


def test_fields_leaves_and_static():
    m = FixedClassifierRidge(K, d, n, lam_H=0.1)
    leaves, treedef = jax.tree.flatten(m)
    assert leaves == [0.1, 0.0]  # leaves in field order, static fields in the aux data
    assert FixedClassifierRidge._leaves == ("lam_H", "shift")
    back = jax.tree.unflatten(treedef, [0.2, 0.5])
    assert (back.K, back.d, back.n, back.lam_H, back.shift) == (K, d, n, 0.2, 0.5)
    with pytest.raises(dataclass_frozen_error()):
        m.lam_H = 1.0


def dataclass_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lam_H=0.0), r"lam_H must be finite and > 0.0, got lam_H=0.0"),
        (dict(lam_H=float("nan")), r"lam_H must be finite"),
        (dict(shift="a"), r"shift must be a real number, got shift='a'"),
        (dict(d=1), r"d must be >= K-1=2, got d=1"),
    ],
)
def test_checks_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FixedClassifierRidge(**{"K": K, "d": d, "n": n, **kwargs})


def test_checks_normalise_and_never_see_tracers():
    assert FixedClassifierRidge(K, d, n=np.int64(2)).n == 2  # a static check may normalise
    m = FixedClassifierRidge(K, d, n)

    @jax.jit
    def f(lam):  # replace builds a new model with a traced leaf: checks pass tracers through
        return m.replace(lam_H=lam).objective(RidgeParams(jnp.ones((d, K * n))))

    np.testing.assert_allclose(f(0.3), objective_np(m.replace(lam_H=0.3), np.ones((d, K * n))))
    batch = jax.vmap(lambda mm: mm.lam_H * 2 + mm.shift)(
        m.replace(lam_H=jnp.array([0.1, 0.2]), shift=jnp.array([0.0, 1.0]))
    )
    np.testing.assert_allclose(batch, [0.2, 1.4])


def test_post_init_is_refused():
    with pytest.raises(TypeError, match="define __check__ instead of __post_init__"):

        class Bad(ufm.Model):  # noqa: F841
            def __post_init__(self):
                pass


def test_solve_reaches_the_closed_form(key):
    m = FixedClassifierRidge(K, d, n, lam_H=0.05, shift=0.3)
    res = ufm.solve(m, key, steps=200, tol=1e-12)
    H_star = ridge_optimum(m)
    np.testing.assert_allclose(res.objective, objective_np(m, H_star), rtol=RTOL)
    np.testing.assert_allclose(res.params.H, H_star, atol=1e-8)
    ref = ufm.nc_metrics(jnp.asarray(H_star), m.labels, W=m.W)
    for k, v in m.metrics(res.params).items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-6, atol=1e-9, err_msg=k)


OPTIMIZER = optax.lbfgs()


def _sweep(model, lams, **kw):
    return ufm.sweep(
        model, {"lam_H": lams}, seeds=2, steps=150, optimizer=OPTIMIZER, progress=False, **kw
    )


def test_sweep_over_a_leaf_without_recompiling_and_save_load(tmp_path):
    m = FixedClassifierRidge(K, d, n, shift=0.1)
    _sweep(m, [0.01, 0.1])  # first call compiles
    compiles = []

    def listener(name, secs, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        lams = [0.02, 0.2]
        sw = _sweep(m, lams)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    for i, lam in enumerate(lams):
        best = objective_np(m.replace(lam_H=lam), ridge_optimum(m.replace(lam_H=lam)))
        np.testing.assert_allclose(sw.objective[i], [best, best], rtol=RTOL)
    assert set(sw.metrics) >= {"nc1", "nc3"}

    back = ufm.load_sweep(sw.save(tmp_path / "ridge"))
    np.testing.assert_array_equal(back.objective, sw.objective)
    np.testing.assert_array_equal(back.metrics["nc1"], sw.metrics["nc1"])


def test_checkpoint_resume_gives_the_same_sweep(tmp_path):
    m = FixedClassifierRidge(K, d, n)
    path = tmp_path / "ridge.ckpt"
    first = _sweep(m, [0.01, 0.1, 1.0], checkpoint=str(path), chunk_size=2)
    again = _sweep(m, [0.01, 0.1, 1.0], checkpoint=str(path), chunk_size=2)  # all from disk
    np.testing.assert_array_equal(again.objective, first.objective)
    np.testing.assert_array_equal(again.metrics["nc1"], first.metrics["nc1"])


def test_plots_take_a_custom_model(key):
    import matplotlib.pyplot as plt

    m = FixedClassifierRidge(K, d, n, lam_H=0.05)
    res = ufm.solve(m, key, steps=20, record_every=5)
    figs = [
        ufm.plot.metric_curves(res.history, keys=("objective", "nc1", "nc3")),
        ufm.plot.feature_geometry(res.params.H, m.labels, W=m.W),
        ufm.plot.gram_vs_etf(np.asarray(m.W)),
    ]
    assert all(len(f.axes) >= 1 for f in figs)
    curve = figs[0].axes[0].lines[0].get_ydata()
    # the step axis is logarithmic: the curve starts at the first step after 0
    np.testing.assert_allclose(curve, res.history["objective"][1:], rtol=1e-12)
    plt.close("all")
