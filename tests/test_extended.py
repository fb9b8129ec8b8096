"""Extended and deep UFMs with MSE (docs/theory.md §5; Dang et al. 2023): the deep-linear closed
forms against an independent NumPy minimisation of the 1-D reductions, the first-order jump at
beta_glob, solves from random starts reaching them with collapse at every layer, the ReLU cases,
and the imbalanced MSE UFM without bias."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.theory import NoClosedForm
from ufm.theory.extended import beta_glob, deep_min

GAP = 1e-8  # relative objective gap the best start must reach
GEOM = 1e-6  # Gram tolerance: parameters are accurate to ~sqrt(gap) (docs/theory.md §8)
NC1 = 1e-10  # NC1 is quadratic in the parameter error (docs/theory.md §8)


# --- independent NumPy reference ---------------------------------------------------------------
def golden_min(f, lo, hi, iters=200):
    """Minimum of a unimodal f on [lo, hi] by golden-section search."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(iters):
        if f(c) < f(d):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    x = 0.5 * (a + b)
    return x, f(x)


def np_singular_min(sigma, N, Lam, m):
    """min over s in [0, sigma] of (s - sigma)^2/(2N) + (m/2) Lam s^{2/m}: a grid of 4001
    points, then golden-section search on the bracket around the best grid point (the function
    can have two local minima: s = 0 and one interior point)."""
    f = lambda s: (s - sigma) ** 2 / (2 * N) + 0.5 * m * Lam * s ** (2 / m)  # noqa: E731
    grid = np.linspace(0.0, sigma, 4001)
    vals = f(grid)
    j = int(np.argmin(vals))
    lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
    s, v = golden_min(f, lo, hi)
    return (0.0, f(0.0)) if f(0.0) <= v else (s, v)


def np_deep_value(counts, d, lam_H, lam_Ws, bias):
    """f* of the deep linear MSE UFM: the singular values of the target (Y, or Y minus its row
    means with a free bias) from NumPy's SVD, each minimised independently of ufm, the min(d, rank)
    largest kept."""
    counts = np.asarray(counts)
    K, N, m = len(counts), counts.sum(), len(lam_Ws) + 1
    Lam = (lam_H * np.prod(lam_Ws)) ** (1 / m)
    Y = np.repeat(np.eye(K), counts, axis=1)
    T = Y - Y.mean(axis=1, keepdims=True) if bias else Y
    sig = np.linalg.svd(T, compute_uv=False)
    sig = sig[sig > 1e-9]
    kept, dropped = sig[:d], sig[d:]
    return float(sum(np_singular_min(s, N, Lam, m)[1] for s in kept) + np.sum(dropped**2) / (2 * N))


def beta_of(K, n, lam_H, lam_Ws):
    """beta = K (n lam_H prod lam_l)^{1/m} of docs/theory.md §5 (balanced)."""
    return K * (n * lam_H * np.prod(lam_Ws)) ** (1 / (len(lam_Ws) + 1))


def lams_for_beta(beta, K, n, depth):
    """Equal weight decays lam giving the balanced beta: (beta/K)^m / n = lam^m."""
    m = depth + 1
    lam = ((beta / K) ** m / n) ** (1 / m)
    return lam, (lam,) * depth


def best_start(model, seeds, scale=None, steps=3000):
    """The lowest-objective `ufm.solve` (default L-BFGS) among starts ``model.init(key, scale)``
    (one compilation serves every start and every value of the weight decays)."""
    runs = [
        ufm.solve(model, k, steps=steps, tol=1e-12, init=model.init(k, scale=scale))
        for k in (jax.random.key(s) for s in seeds)
    ]
    return min(runs, key=lambda r: float(r.objective))


def final_metrics(res):
    """``model.metrics`` of the final iterate, as recorded inside the compiled run (the last
    history row: `ufm.solve` records at the start and at the end by default)."""
    return {k: float(v[-1]) for k, v in res.history.items()}


def layer_mean_grams(model, params):
    """Gram matrices of the uncentred class means at every layer, H_1 ... H_L (NumPy)."""
    Y = np.asarray(model.targets) / np.asarray(model.counts, float)
    return [np.asarray(Hl) @ Y for Hl in model.features(params)]


# --- construction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "name"),
    [
        (dict(depth=0), "depth"),
        (dict(depth=1.5), "depth"),
        (dict(activation="tanh"), "activation"),
        (dict(loss="hinge"), "loss"),
        (dict(lam_H=-1e-3), "lam_H"),
        (dict(lam_Ws=(1e-3,)), "lam_Ws"),
        (dict(lam_Ws=(1e-3, -1e-3)), "lam_Ws"),
        (dict(lam_Ws="big"), "lam_Ws"),
        (dict(lam_b=-1.0), "lam_b"),
        (dict(bias=1), "bias"),
        (dict(d=0), "d"),
    ],
)
def test_bad_input(kw, name):
    with pytest.raises(ValueError, match=name):
        ufm.ExtendedUFM(**(dict(K=3, d=4, n=2, depth=2) | kw))


def test_hyperparameters_are_leaves_one_per_layer(key):
    m = ufm.ExtendedUFM(3, 4, 2, depth=3, lam_H=1e-3, lam_Ws=2e-3)
    assert m.lam_Ws == (2e-3, 2e-3, 2e-3)
    leaves, treedef = jax.tree.flatten(m)
    assert leaves == [1e-3, 2e-3, 2e-3, 2e-3, 0.0]
    p = m.init(key)
    assert p.H.shape == (4, 6) and [W.shape for W in p.Ws] == [(4, 4), (4, 4), (3, 4)]
    assert p.W is p.Ws[-1] and p.b is None
    # vmap over a batch of weight decays: one objective per value
    lams = jnp.asarray([1e-3, 1e-2])
    batch = jax.tree.unflatten(treedef, [lams, lams, lams, lams, jnp.zeros(2)])
    f = jax.vmap(lambda mm: mm.objective(p))(batch)
    one = [float(ufm.ExtendedUFM(3, 4, 2, 3, lam_H=x, lam_Ws=x).objective(p)) for x in (1e-3, 1e-2)]
    np.testing.assert_allclose(f, one, rtol=1e-14)


def test_objective_matches_numpy(key):
    lams = dict(lam_H=1e-2, lam_Ws=(1e-3, 2e-3, 3e-3), lam_b=0.5)
    m = ufm.ExtendedUFM(3, 4, (3, 2, 2), depth=3, activation="relu", bias=True, **lams)
    p = m.init(key)
    p = p._replace(b=jnp.asarray([0.1, -0.2, 0.3]))
    H, b = np.asarray(p.H), np.asarray(p.b)
    W1, W2, W3 = (np.asarray(W) for W in p.Ws)
    Z = W3 @ np.maximum(W2 @ np.maximum(W1 @ H, 0), 0) + b[:, None]
    Y = np.repeat(np.eye(3), (3, 2, 2), axis=1)
    pen = 1e-2 * np.sum(H**2) + 1e-3 * np.sum(W1**2) + 2e-3 * np.sum(W2**2) + 3e-3 * np.sum(W3**2)
    expected = np.sum((Z - Y) ** 2) / (2 * 7) + 0.5 * pen + 0.25 * np.sum(b**2)
    assert float(m.objective(p)) == pytest.approx(expected, rel=1e-13)


# --- the 1-D reduction and its jump --------------------------------------------------------------
@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_deep_min_is_the_global_minimiser(m):
    """deep_min against a dense grid of g(t) = (1-t)^2 + m beta t^{2/m} on [0, 1], for beta on
    both sides of beta_glob; at beta_glob(m) the value jumps from (m-2)/(m-1) to 0 (m >= 3)."""
    bg = beta_glob(m)
    if m == 3:
        assert bg == pytest.approx(0.3969, abs=1e-4)  # docs/theory.md §5
    t_grid = np.linspace(0.0, 1.0, 200001)
    for beta in [0.05, 0.5 * bg, 0.97 * bg, 1.03 * bg, 1.5 * bg]:
        t, g = deep_min(beta, m)
        g_grid = (1 - t_grid) ** 2 + m * beta * t_grid ** (2 / m)
        assert g <= g_grid.min() + 1e-15
        assert g == pytest.approx((1 - t) ** 2 + m * beta * t ** (2 / m), rel=1e-15)
        assert g >= g_grid.min() - 1e-9  # the grid's resolution
        assert (t > 0) == (beta < bg)
    if m >= 3:
        t_below, _ = deep_min(bg * (1 - 1e-9), m)
        assert t_below == pytest.approx((m - 2) / (m - 1), abs=1e-4)


DEEP_CASES = [  # (counts, d, depth, lam_H, lam_Ws, bias)
    ((4, 4, 4), 4, 2, 1e-2, (2e-2, 5e-3), False),
    ((4, 4, 4), 3, 2, 1e-2, (2e-2, 5e-3), True),
    ((6, 3, 2), 4, 2, 1e-2, (2e-2, 5e-3), False),
    ((6, 3, 2), 4, 2, 1e-2, (2e-2, 5e-3), True),
    ((5, 5, 5, 5), 4, 3, 3e-3, (3e-3, 3e-3, 3e-3), False),
    ((5, 5, 5, 5), 2, 3, 3e-3, (3e-3, 3e-3, 3e-3), False),  # rank-limited: two classes kept
    ((9, 2, 2, 1), 4, 1, 2e-2, (2e-2,), False),
    ((3, 3), 3, 4, 2e-3, (2e-3,) * 4, True),
]


@pytest.mark.parametrize(("counts", "d", "depth", "lam_H", "lam_Ws", "bias"), DEEP_CASES)
def test_deep_linear_optimum_matches_numpy(counts, d, depth, lam_H, lam_Ws, bias):
    n = counts[0] if len(set(counts)) == 1 else counts
    m = ufm.ExtendedUFM(len(counts), d, n, depth, lam_H=lam_H, lam_Ws=lam_Ws, bias=bias)
    opt = ufm.optimum(m)
    assert opt.value == pytest.approx(np_deep_value(counts, d, lam_H, lam_Ws, bias), rel=1e-10)
    assert float(m.objective(opt.params)) == pytest.approx(opt.value, rel=1e-12)
    if bias:
        np.testing.assert_allclose(opt.params.b, np.asarray(counts) / sum(counts), rtol=1e-15)


def test_balanced_values_and_thresholds_of_theory():
    """docs/theory.md §5: f* = K min g/(2K) without bias, (K-1) min g/(2K) with a free bias; beta
    from K (n lam_H prod lam_l)^{1/m}; zero solution (f* = 1/2) beyond beta_glob."""
    K, n, depth = 4, 3, 2
    for beta in (0.2, 0.99 * beta_glob(3), 1.01 * beta_glob(3)):
        lam_H, lam_Ws = lams_for_beta(beta, K, n, depth)
        assert beta_of(K, n, lam_H, lam_Ws) == pytest.approx(beta, rel=1e-13)
        _, g = deep_min(beta, 3)
        for bias, factor in ((False, K), (True, K - 1)):
            m = ufm.ExtendedUFM(K, K, n, depth, lam_H=lam_H, lam_Ws=lam_Ws, bias=bias)
            assert ufm.optimum(m).value == pytest.approx(factor * g / (2 * K), rel=1e-13)
        if beta > beta_glob(3):
            assert ufm.optimum(m).value == pytest.approx((K - 1) / (2 * K), rel=1e-13)


# --- solves --------------------------------------------------------------------------------------
def test_deep_linear_no_bias_reaches_optimum_with_of_at_every_layer():
    """Depth 2 (m = 3), balanced, no bias, beta on both sides of the jump (one compilation):
    the best of 4 starts reaches f*, with NC1 ~ 0 and an orthogonal frame at every layer, and
    every layer's class-mean Gram equals the closed form's; beyond beta_glob, the zero solution."""
    K, d, n, depth = 3, 4, 4, 2
    betas = [None, 0.97 * beta_glob(3), 1.03 * beta_glob(3)]  # the first: unequal decays
    lams = [(1e-2, (2e-2, 5e-3))] + [lams_for_beta(b, K, n, depth) for b in betas[1:]]
    models = [ufm.ExtendedUFM(K, d, n, depth, lam_H=lh, lam_Ws=lw) for lh, lw in lams]
    # near beta_glob the default scale 1/sqrt(d) starts in the origin's basin: start at scale 1
    # (docs/theory.md §5: the origin and partial-rank points are local minima for m >= 3)
    for m in models:
        res = best_start(m, range(5), scale=1.0)
        opt = ufm.optimum(m)
        gap = (float(res.objective) - opt.value) / opt.value
        assert -1e-12 <= gap <= GAP, (m, gap)
        p = res.params
        if float(jnp.abs(opt.params.H).max()) == 0:  # zero solution
            assert opt.value == pytest.approx(0.5, rel=1e-15)
            assert float(jnp.abs(p.H).max()) <= 1e-6
            continue
        met = final_metrics(res)
        for layer in range(1, depth + 1):
            assert met[f"nc1_layer{layer}"] <= NC1
            assert met[f"of_layer{layer}"] <= GEOM
        for G, G_star in zip(layer_mean_grams(m, p), layer_mean_grams(m, opt.params), strict=True):
            np.testing.assert_allclose(G.T @ G, G_star.T @ G_star, atol=GEOM)
        W, W_star = np.asarray(p.W), np.asarray(opt.params.W)
        np.testing.assert_allclose(W @ W.T, W_star @ W_star.T, atol=GEOM)  # classifier: an OF


def test_deep_linear_free_bias_reaches_etf_at_every_layer():
    """Depth 2 with a free bias, d = K-1 (one compilation): a simplex ETF at every layer."""
    K, d, n, depth = 4, 3, 3, 2
    lams = [(1e-2, (2e-2, 5e-3)), (3e-3, (3e-3, 1e-2))]
    models = [ufm.ExtendedUFM(K, d, n, depth, lam_H=lh, lam_Ws=lw, bias=True) for lh, lw in lams]
    for m in models:
        res = best_start(m, range(3))
        opt = ufm.optimum(m)
        gap = (float(res.objective) - opt.value) / opt.value
        assert -1e-12 <= gap <= GAP, (m, gap)
        p = res.params
        met = final_metrics(res)
        for layer in range(1, depth + 1):
            assert met[f"nc1_layer{layer}"] <= NC1
            assert met[f"etf_layer{layer}"] <= GEOM
        b = np.asarray(p.b)
        np.testing.assert_allclose(b, 1 / K, atol=GEOM)  # b* = (n_k/N)_k
        assert met["nc2_W"] <= GEOM  # the classifier is an ETF too


def test_imbalanced_deep_linear_targets():
    """Dang et al.'s imbalanced deep-linear targets, no bias: classes with beta_k >= beta_glob
    vanish, the others keep t_k > 0; the best start reaches f* and every layer's class-mean Gram
    (an orthogonal frame with class-dependent norms) equals the closed form's."""
    counts, d, depth = (9, 4, 1), 4, 2
    N, m_f = sum(counts), depth + 1
    lam = 0.05
    m = ufm.ExtendedUFM(3, d, counts, depth, lam_H=lam, lam_Ws=lam)
    betas = [N * lam * n_k ** (1 / m_f - 1) for n_k in counts]  # N Lam sigma_k^{2/m - 2}
    assert betas[0] < beta_glob(3) < betas[2]
    opt = ufm.optimum(m)
    means = np.linalg.norm(layer_mean_grams(m, opt.params)[0], axis=0)
    assert means[0] > 0.1 and means[2] == 0
    res = best_start(m, range(4))
    gap = (float(res.objective) - opt.value) / opt.value
    assert -1e-12 <= gap <= GAP
    p = res.params
    for G, G_star in zip(layer_mean_grams(m, p), layer_mean_grams(m, opt.params), strict=True):
        np.testing.assert_allclose(G.T @ G, G_star.T @ G_star, atol=GEOM)


def test_relu_extended_ufm_has_the_linear_value():
    """Tirer & Bruna's W_2 relu(W_1 H), balanced, no bias: the global optimum has the deep-linear
    (m = 3) value; the closed-form minimiser is nonnegative so ReLU is inactive there; the best
    of 4 starts reaches it with relu(W_1 H) an orthogonal frame."""
    K, d, n, depth = 3, 4, 3, 2
    kw = dict(lam_H=1e-2, lam_Ws=(2e-2, 5e-3))
    m = ufm.ExtendedUFM(K, d, n, depth, activation="relu", **kw)
    linear = ufm.ExtendedUFM(K, d, n, depth, **kw)
    opt = ufm.optimum(m)
    assert opt.value == ufm.optimum(linear).value
    assert all(float(W.min()) >= 0 for W in opt.params.Ws) and float(opt.params.H.min()) >= 0
    assert float(m.objective(opt.params)) == pytest.approx(opt.value, rel=1e-13)
    res = best_start(m, range(4))
    gap = (float(res.objective) - opt.value) / opt.value
    assert -1e-12 <= gap <= GAP
    met = final_metrics(res)
    assert met["nc1_layer2"] <= NC1 and met["of_layer2"] <= GEOM


def test_no_closed_form_says_why():
    relu = dict(activation="relu", lam_H=1e-2, lam_Ws=1e-2)
    with pytest.raises(NoClosedForm, match="not optimal"):
        ufm.optimum(ufm.ExtendedUFM(4, 6, 2, depth=3, **relu))  # Sukenik et al. 2024
    ufm.optimum(ufm.ExtendedUFM(2, 3, 2, depth=4, **relu))  # K = 2: deep NC is optimal
    with pytest.raises(NoClosedForm, match="balanced"):
        ufm.optimum(ufm.ExtendedUFM(3, 4, (3, 2, 1), depth=2, **relu))
    with pytest.raises(NoClosedForm, match="CE"):
        ufm.optimum(ufm.ExtendedUFM(3, 4, 2, depth=2, loss="ce"))
    with pytest.raises(NoClosedForm, match="lam_b"):
        ufm.optimum(ufm.ExtendedUFM(3, 4, 2, depth=2, bias=True, lam_b=0.1))
    with pytest.raises(NoClosedForm, match="lam_H > 0"):
        ufm.optimum(ufm.ExtendedUFM(3, 4, 2, depth=2, lam_Ws=(1e-2, 0.0)))
    # depth 1 is the regularised UFM: its CE closed form
    m = ufm.ExtendedUFM(4, 4, 3, depth=1, loss="ce", lam_H=1e-3, lam_Ws=2e-3)
    u = ufm.UFM(4, 4, 3, loss="ce", lam_W=2e-3, lam_H=1e-3, bias=False)
    assert ufm.optimum(m).value == ufm.optimum(u).value


# --- the imbalanced MSE UFM without bias ------------------------------------------------------
def test_imbalanced_mse_ufm_closed_form():
    """optimum(UFM) for MSE without bias and counts n_k: against a per-class golden-section
    minimisation of (n_k/(2N))(1-t)^2 + mu sqrt(n_k) t over [0, 1] (convex), and the same value
    from the depth-1 ExtendedUFM (independent there: NumPy's SVD and a grid + golden search); at the
    returned point the gradient vanishes, class k vanishes iff n_k <= N^2 lam_W lam_H, and the
    survivors form an orthogonal frame with ||w_k||^2 = sqrt(lam_H/lam_W)(sqrt(n_k) - N mu)."""
    counts, lam_W, lam_H = (20, 9, 4, 1), 8e-2, 6e-2  # threshold N^2 lam_W lam_H = 5.55
    K, N, mu = len(counts), sum(counts), math.sqrt(lam_W * lam_H)
    m = ufm.UFM(K, 5, counts, loss="mse", lam_W=lam_W, lam_H=lam_H, bias=False)
    opt = ufm.optimum(m)

    def per_class(n_k):
        return golden_min(lambda t: n_k / (2 * N) * (1 - t) ** 2 + mu * math.sqrt(n_k) * t, 0, 1)

    ref = sum(per_class(n_k)[1] for n_k in counts)
    assert opt.value == pytest.approx(ref, rel=1e-12)
    deep = ufm.ExtendedUFM(K, 5, counts, depth=1, lam_H=lam_H, lam_Ws=lam_W)
    assert ufm.optimum(deep).value == pytest.approx(opt.value, rel=1e-13)
    assert float(m.objective(opt.params)) == pytest.approx(opt.value, rel=1e-13)
    W = np.asarray(opt.params.W)
    survive = np.asarray(counts) > N**2 * lam_W * lam_H
    assert survive.tolist() == [True, True, False, False]
    expected = np.where(survive, math.sqrt(lam_H / lam_W) * (np.sqrt(counts) - N * mu), 0.0)
    np.testing.assert_allclose(W @ W.T, np.diag(expected), atol=1e-13)
    # stationarity of the closed-form point (the objective is smooth): the gradient vanishes
    g = jax.grad(m.objective)(opt.params)
    assert max(float(jnp.abs(g.W).max()), float(jnp.abs(g.H).max())) <= 1e-14


def test_relu_deep_ufm_two_classes():
    """Sukenik, Mondelli & Lampert 2023: with K = 2, the ReLU deep UFM (here depth 3, m = 4
    factors) has the deep-linear no-bias value; the best of 4 starts reaches it, collapsed at
    every layer with orthogonal frames after every ReLU (not at H_1: the angle between its class
    means differs between global optima, since the ReLU discards negative parts)."""
    m = ufm.ExtendedUFM(2, 2, 3, depth=3, activation="relu", lam_H=2e-3, lam_Ws=(1e-3, 3e-3, 2e-3))
    opt = ufm.optimum(m)
    assert opt.value == pytest.approx(np_deep_value((3, 3), 2, 2e-3, (1e-3, 3e-3, 2e-3), False))
    res = best_start(m, range(4))
    gap = (float(res.objective) - opt.value) / opt.value
    assert -1e-12 <= gap <= GAP
    met = final_metrics(res)
    for layer in (1, 2, 3):  # collapse everywhere, orthogonal frames after every ReLU
        assert met[f"nc1_layer{layer}"] <= NC1
        assert layer == 1 or met[f"of_layer{layer}"] <= GEOM
