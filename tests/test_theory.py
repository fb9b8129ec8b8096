"""Closed-form optima of the regularised UFM (docs/theory.md §1, §2 and §10) against independent
1-D reductions, and `solve` reaching them from random starts with the predicted geometry."""

import math

import jax
import numpy as np
import pytest

import ufm
from ufm.label_noise import symmetric_noise
from ufm.multilabel import all_label_sets
from ufm.theory import NoClosedForm

GAP = 1e-9  # relative objective gap the default optimizer must reach
GEOM = (
    1e-5  # Gram / norm-ratio tolerance: parameters are accurate to ~sqrt(gap) (docs/theory.md §8)
)


def bisect(fprime, lo, hi, iters=200):
    """Root of an increasing function on [lo, hi] (plain bisection)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fprime(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def ce_reduced(K, c):
    """min_{s>=0} log(1 + (K-1)e^{-s}) + (K-1) c s, by bisection on the derivative."""
    phi = lambda s: math.log1p((K - 1) * math.exp(-s)) + (K - 1) * c * s  # noqa: E731
    dphi = lambda s: -(K - 1) / (math.exp(s) + K - 1) + (K - 1) * c  # noqa: E731
    if dphi(0.0) >= 0:
        return phi(0.0)
    return phi(bisect(dphi, 0.0, 100.0))


def mse_reduced(K, c):
    """min_{0<=t<=1} (1/(2K))(1-t)^2 + c t, by bisection on the derivative: one singular value."""
    phi = lambda t: (1 - t) ** 2 / (2 * K) + c * t  # noqa: E731
    dphi = lambda t: -(1 - t) / K + c  # noqa: E731
    if dphi(0.0) >= 0:
        return phi(0.0)
    return phi(bisect(dphi, 0.0, 1.0))


# (K, d, n, lam_W, lam_H): Kc from 0.03 to 2.2, the last one in the zero regime Kc >= 1.
GRID = [(4, 5, 3, 1e-3, 2e-3), (10, 64, 50, 5e-4, 5e-4), (5, 4, 6, 2e-2, 1e-2), (3, 3, 2, 0.5, 0.4)]


@pytest.mark.parametrize(("K", "d", "n", "lam_W", "lam_H"), GRID)
@pytest.mark.parametrize("bias", [(True, 5e-4), (True, 0.0), (False, 0.0)])
def test_ce_optimum_matches_1d_reduction(K, d, n, lam_W, lam_H, bias):
    m = ufm.UFM(K=K, d=d, n=n, loss="ce", lam_W=lam_W, lam_H=lam_H, bias=bias[0], lam_b=bias[1])
    opt = ufm.optimum(m)
    c = math.sqrt(n * lam_W * lam_H)
    np.testing.assert_allclose(opt.value, ce_reduced(K, c), rtol=1e-12)
    np.testing.assert_allclose(float(m.objective(opt.params)), opt.value, rtol=1e-12)
    if K * c >= 1:
        assert opt.value == pytest.approx(math.log(K), rel=1e-15)
        assert np.abs(np.asarray(opt.params.W)).max() == 0


@pytest.mark.parametrize(("K", "d", "n", "lam_W", "lam_H"), GRID)
@pytest.mark.parametrize("bias", [False, True])
def test_mse_optimum_matches_1d_reduction(K, d, n, lam_W, lam_H, bias):
    m = ufm.UFM(K=K, d=d, n=n, loss="mse", lam_W=lam_W, lam_H=lam_H, bias=bias, lam_b=0.0)
    opt = ufm.optimum(m)
    c = math.sqrt(n * lam_W * lam_H)
    # K unit singular values of Y (K-1 with a free bias, which absorbs the mean, docs/theory.md
    # §2.2); with d < K only d of them can be fitted, the others cost phi(0) = 1/(2K) each (§2.1).
    copies = K - 1 if bias else min(d, K)
    dropped = 0 if bias else max(K - d, 0)
    expected = copies * mse_reduced(K, c) + dropped / (2 * K)
    np.testing.assert_allclose(opt.value, expected, rtol=1e-12)
    np.testing.assert_allclose(float(m.objective(opt.params)), opt.value, rtol=1e-12)


def test_mse_regularised_bias_regimes():
    """docs/theory.md §2.3: three regimes split at Kc = lam_b/(1+lam_b) and Kc = 1; the value at the
    constructed parameters equals the formula, and it is continuous across the boundaries."""
    K, n, lam_b = 4, 5, 0.5
    t = lam_b / (1 + lam_b)
    values = []
    for Kc in (0.5 * t, t * (1 - 1e-9), t * (1 + 1e-9), 0.7, 1 - 1e-9, 1 + 1e-9, 1.5):
        lam = Kc / (K * math.sqrt(n))
        m = ufm.UFM(K=K, d=K, n=n, loss="mse", lam_W=lam, lam_H=lam, lam_b=lam_b)
        opt = ufm.optimum(m)
        np.testing.assert_allclose(float(m.objective(opt.params)), opt.value, rtol=1e-12)
        values.append(opt.value)
    assert abs(values[1] - values[2]) < 1e-8 and abs(values[4] - values[5]) < 1e-8


def test_mse_imbalanced_no_bias_soft_thresholding():
    """Class k vanishes iff n_k <= N^2 lam_W lam_H (docs/theory.md §4); survivors keep ||w_k||^2 =
    sqrt(lam_H/lam_W)(sqrt(n_k) - N sqrt(lam_W lam_H)); d < K keeps the d largest classes."""
    counts, lam = [40, 20, 9, 2], 0.02
    N = sum(counts)
    m = ufm.UFM(K=4, d=4, n=counts, loss="mse", lam_W=lam, lam_H=lam, bias=False)
    opt = ufm.optimum(m)
    norms = np.linalg.norm(np.asarray(opt.params.W), axis=1) ** 2
    thresh = N**2 * lam * lam  # = 15.68
    expected = np.where(np.array(counts) > thresh, np.sqrt(counts) - N * lam, 0.0)
    np.testing.assert_allclose(norms, expected, atol=1e-12)
    m2 = ufm.UFM(K=4, d=2, n=[9, 40, 2, 20], loss="mse", lam_W=1e-3, lam_H=1e-3, bias=False)
    w2 = np.linalg.norm(np.asarray(ufm.optimum(m2).params.W), axis=1)
    assert (w2 > 0).tolist() == [False, True, False, True]


def _solve_and_check(m, starts=1):
    opt = ufm.optimum(m)
    best = None
    for s in range(starts):
        res = ufm.solve(m, jax.random.key(s), steps=500)
        if best is None or res.objective < best.objective:
            best = res
    rep = ufm.check(m, best.params, opt)
    return best, rep


SOLVE_CASES = [
    dict(K=5, d=7, n=6, loss="ce", lam_W=5e-3, lam_H=5e-3, lam_b=5e-3),  # docs/theory.md §1 GD demo
    dict(K=4, d=3, n=3, loss="ce", lam_W=1e-2, lam_H=2e-3, lam_b=0.0),  # free bias, d = K-1
    dict(K=4, d=6, n=2, loss="ce", lam_W=3e-2, lam_H=2e-2, bias=False),  # near the threshold
    dict(K=3, d=4, n=2, loss="ce", lam_W=0.5, lam_H=0.5),  # zero regime, Kc = 1.5
    dict(K=5, d=6, n=4, loss="mse", lam_W=1e-2, lam_H=5e-3, bias=False),  # orthogonal frame
    dict(K=5, d=4, n=4, loss="mse", lam_W=1e-2, lam_H=5e-3, lam_b=0.0),  # ETF, d = K-1
    dict(K=4, d=5, n=3, loss="mse", lam_W=1e-2, lam_H=1e-2, lam_b=1.0),  # ETF + mean regime
    dict(K=4, d=5, n=3, loss="mse", lam_W=0.4, lam_H=0.4, bias=False),  # zero, f* = 1/2
]


@pytest.mark.parametrize("kw", SOLVE_CASES, ids=lambda kw: f"{kw['loss']}-K{kw['K']}d{kw['d']}")
def test_solve_reaches_optimum_with_predicted_geometry(kw):
    m = ufm.UFM(**kw)
    res, rep = _solve_and_check(m)
    assert rep.gap <= GAP, rep.table()
    assert rep.gap >= -1e-12  # nothing beats the global optimum
    if rep.zero_optimum:
        assert float(np.linalg.norm(res.params.W)) < 1e-3
        return
    assert rep.metrics["nc1"] <= 1e-10
    assert rep.gram_gap_W <= GEOM and rep.gram_gap_H <= GEOM, rep.table()
    assert abs(rep.norm_ratio / rep.norm_ratio_predicted - 1) <= GEOM
    np.testing.assert_allclose(rep.norm_ratio_predicted, math.sqrt(m.lam_H / m.lam_W), rtol=1e-12)
    if m.loss == "ce" or (m.bias and m.lam_b == 0):  # an ETF: the NC2/NC3 metrics vanish too
        assert rep.metrics["nc2_W"] <= GEOM and rep.metrics["nc3"] <= GEOM
    if m.loss == "ce" and m.bias and m.lam_b == 0:  # free bias: flat along b 1, not b = 0
        b = np.asarray(res.params.b)
        assert np.abs(b - b.mean()).max() <= GEOM
    assert rep.metrics["nc4"] == 0


def test_check_report_table_and_gap():
    m = ufm.UFM(K=3, d=3, n=2, lam_W=1e-2, lam_H=1e-2)
    opt = ufm.optimum(m)
    rep = ufm.check(m, opt.params, opt)
    assert abs(rep.gap) <= 1e-14 and rep.max_gap() <= 1e-10
    assert "objective" in rep.table() and "nc1" in rep.table()
    worse = m.init(jax.random.key(0))
    assert ufm.check(m, worse, opt).gap > 1e-3


@pytest.mark.parametrize(
    "kw",
    [
        dict(K=3, d=4, n=[2, 3, 4], loss="ce"),
        dict(K=5, d=3, n=2, loss="ce"),
        dict(K=3, d=4, n=2, lam_W=0.0),
        dict(K=3, d=4, n=[2, 3, 4], loss="mse"),
    ],
)
def test_no_closed_form_says_why(kw):
    with pytest.raises(NoClosedForm):
        ufm.optimum(ufm.UFM(**kw))


def test_root_finder_bracket_tolerance_and_log_scale():
    from ufm.theory._roots import bisect, bracket

    def cube(x):  # increasing, root 2^(1/3)
        return x**3 - 2.0

    root = 2.0 ** (1 / 3)
    assert abs(bisect(cube, 0.0, 2.0) - root) <= 2 * math.ulp(root)  # to adjacent floats
    assert abs(bisect(cube, 0.0, 2.0, xtol=1e-3) - root) <= 1e-3
    # a root 30 decades up: doubling brackets it, log-scale bisection reaches rtol
    lo, hi = bracket(lambda x: math.log(x) - 69.0, 1.0, 2.0)
    assert lo < math.exp(69.0) <= hi and hi == 2 * lo
    x = bisect(lambda x: math.log(x) - 69.0, lo, hi, log=True, rtol=1e-12)
    assert abs(x / math.exp(69.0) - 1) < 1e-12
    with pytest.raises(ValueError, match="no sign change"):
        bracket(lambda x: -1.0, 1.0, 2.0, limit=1e6)
    with pytest.raises(ValueError, match="lo < hi"):
        bisect(cube, 2.0, 1.0)


@pytest.mark.parametrize(
    "model",
    [
        ufm.SupConUFM(K=3, d=4, n=2, tau=0.5),  # bare features, no classifier
        ufm.FixedETFUFM(K=3, d=4, n=(2, 3, 1), E_H=1.0),  # bare features, fixed classifier
        ufm.RegressionUFM(d=3, Y=np.linspace(-1, 1, 10).reshape(2, 5), lam_W=1e-2, lam_H=1e-2),
        ufm.MaxMarginUFM(K=3, d=4, n=2),
    ],
    ids=lambda m: type(m).__name__,
)
def test_check_takes_every_parameter_layout(model, key):
    """At the closed-form optimum the report is exact; at a random start it is not."""
    at_opt = ufm.check(model, ufm.optimum(model).params)
    assert abs(at_opt.gap) < 1e-12 and at_opt.gram_gap_H < 1e-12
    assert math.isnan(at_opt.gram_gap_W) == (type(model) is ufm.SupConUFM)  # no classifier
    start = ufm.check(model, model.init(key))
    assert start.gap > 1e-3 and start.gram_gap_H > 1e-3
    assert start.table().splitlines()[0] == f"optimum: closed form, {ufm.optimum(model).source}"


_RELU = dict(activation="relu", lam_H=1e-2, lam_Ws=1e-2)
_NOISY_N, _NOISY = symmetric_noise(3, 2, 1)
# (model, the paper or docs/theory.md section its closed form cites): every registered family,
# and the cases where one family's closed forms come from different papers.
SOURCES = [
    (ufm.UFM(K=4, d=5, n=2, lam_W=1e-3, lam_H=1e-3), "Zhu et al. 2021"),
    (ufm.UFM(K=5, d=2, n=2, lam_W=5e-3, lam_H=5e-3, bias=False), "Jiang et al. 2024"),  # K-gon
    (ufm.UFM(K=3, d=3, n=2, loss="mse", bias=False), "Tirer & Bruna 2022"),
    (ufm.UFM(K=3, d=3, n=2, loss="mse"), "Zhou et al. 2022"),
    (ufm.UFM(K=3, d=3, n=2, loss="ls", alpha=0.1), "Zhou et al. 2022"),
    (ufm.ExtendedUFM(3, 4, 2, depth=2), "Dang et al. 2023"),
    (ufm.ExtendedUFM(3, 4, 2, depth=2, **_RELU), "Dang et al. 2023; Tirer & Bruna 2022"),
    (ufm.ExtendedUFM(2, 3, 2, depth=4, **_RELU), "Dang et al. 2023; Sukenik et al. 2023"),
    (ufm.ExtendedUFM(3, 4, 2, depth=1, loss="ce"), "Zhu et al. 2021"),  # delegates to the UFM
    (ufm.LayerPeeled(3, 3, 2), "Fang et al. 2021"),
    (ufm.NormalizedUFM(3, 3, 2), "Yaras et al. 2022"),
    (ufm.NormalizedUFM(5, 2, 1), "Jiang et al. 2024"),  # K > d+1: the K-gon
    (ufm.FixedETFUFM(K=3, d=4, n=2), "Yang et al. 2022"),
    (ufm.FixedETFUFM(K=3, d=4, n=(2, 3, 1), h_budget="class"), "docs/theory.md §19"),
    (ufm.RegressionUFM(d=3, Y=np.linspace(-1, 1, 10).reshape(2, 5)), "Andriopoulos et al. 2024"),
    (ufm.MultiLabelUFM(K=3, d=2, label_sets=all_label_sets(3, (1, 2))), "Li et al. 2024"),
    (ufm.NoisyUFM(K=3, d=2, n=_NOISY_N, noisy=_NOISY), "docs/theory.md §6.4"),
    (ufm.SupConUFM(K=3, d=4, n=2, tau=0.5), "Graf et al. 2021"),
    (ufm.MaxMarginUFM(K=3, d=4, n=2), "Thrampoulidis et al. 2022"),
]


def test_every_closed_form_names_its_source():
    """Every family registered with `ufm.optimum` is listed, and each closed form's `source` is
    the paper (or section) it cites, a delegated case keeping the source of its delegate."""
    assert set(ufm.optimum.registry) - {object} == {type(m) for m, _ in SOURCES}
    for model, source in SOURCES:
        assert ufm.optimum(model).source == source, model


@pytest.mark.parametrize("i", [0, 9], ids=["UFM-ce", "LayerPeeled"])
def test_check_report_names_the_closed_form_source(i):
    model, source = SOURCES[i]
    report = ufm.check(model, ufm.optimum(model).params)
    assert report.source == f"closed form, {source}"
    assert report.table().splitlines()[0] == f"optimum: closed form, {source}"
