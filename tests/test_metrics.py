"""Tests of ufm.metrics.nc_metrics against theory (exact ETF / OF values) and an independent NumPy
implementation written with loops and d x d pseudo-inverses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ufm.geometry import simplex_etf
from ufm.metrics import gram_gap, nc1_trace, nc_metrics

EXACT = 1e-12  # float64 closed-form values
REL = 1e-10  # agreement with the NumPy reference

H_KEYS = {"nc1", "nc1_trace", "cdnv", "nc2", "nc2_H", "nc2_nearest_H"} | {
    f"nc2_{m}_H" for m in ("equinorm", "equiangular", "maxangle")
}
W_KEYS = {"nc2_W", "nc2_nearest_W", "nc3", "nc3_zhu", "nc4", "bias_mean"} | {
    f"nc2_{m}_W" for m in ("equinorm", "equiangular", "maxangle")
}


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


# --- independent NumPy reference ---------------------------------------------------------------
def _np_frame(X, suffix):
    """NC2 metrics of the columns of X by loops, Procrustes by explicit SVD (X zero-padded)."""
    d, K = X.shape
    norms = np.array([np.linalg.norm(X[:, k]) for k in range(K)])
    cos = np.array(
        [X[:, j] @ X[:, k] / (norms[j] * norms[k]) for j in range(K) for k in range(K) if j != k]
    )
    G = X.T @ X
    E = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    # nearest ETF: B = Helmert basis^T / sqrt(K-1), R = U V^T from the SVD of Xn B^T
    B = np.zeros((K - 1, K))
    for j in range(1, K):
        B[j - 1, :j] = 1.0
        B[j - 1, j] = -j
        B[j - 1] /= np.sqrt(j * (j + 1))
    B /= np.sqrt(K - 1)
    Xn = X / np.linalg.norm(X)
    if d < K - 1:
        Xn = np.vstack([Xn, np.zeros((K - 1 - d, K))])
    U, _, Vt = np.linalg.svd(Xn @ B.T, full_matrices=False)
    return {
        f"nc2_equinorm_{suffix}": np.std(norms) / np.mean(norms),
        f"nc2_equiangular_{suffix}": np.std(cos),
        f"nc2_maxangle_{suffix}": np.mean(np.abs(cos + 1 / (K - 1))),
        f"nc2_{suffix}": np.linalg.norm(G / np.linalg.norm(G) - E),
        f"nc2_nearest_{suffix}": np.linalg.norm(Xn - U @ Vt @ B),
    }


def _np_metrics(H, y, K, W=None, b=None, mean="weighted", rcond=1e-10):
    H, y = np.asarray(H), np.asarray(y)
    d, N = H.shape
    mus = np.stack([H[:, y == k].mean(axis=1) for k in range(K)], axis=1)
    mu_G = {"weighted": H.mean(axis=1), "unweighted": mus.mean(axis=1), "zero": np.zeros(d)}[mean]
    Mbar = mus - mu_G[:, None]
    Sw = sum(np.outer(H[:, i] - mus[:, y[i]], H[:, i] - mus[:, y[i]]) for i in range(N)) / N
    Sb = sum(np.outer(Mbar[:, k], Mbar[:, k]) for k in range(K)) / K
    var = [
        np.mean([np.sum((H[:, i] - mus[:, k]) ** 2) for i in np.flatnonzero(y == k)])
        for k in range(K)
    ]
    pairs = [(j, k) for j in range(K) for k in range(j + 1, K)]
    out = {
        "nc1": np.trace(Sw @ np.linalg.pinv(Sb, rcond=rcond)) / K,
        "nc1_trace": np.trace(Sw) / np.trace(Sb),
        "cdnv": np.mean(
            [(var[j] + var[k]) / (2 * np.sum((mus[:, j] - mus[:, k]) ** 2)) for j, k in pairs]
        ),
        **_np_frame(Mbar, "H"),
    }
    out["nc2"] = out["nc2_H"]
    if W is None:
        return out
    W = np.asarray(W)
    out.update(_np_frame(W.T, "W"))
    out["nc3"] = np.sum((W.T / np.linalg.norm(W) - Mbar / np.linalg.norm(Mbar)) ** 2)
    Z = W @ Mbar
    E = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    out["nc3_zhu"] = np.linalg.norm(Z / np.linalg.norm(Z) - E)
    ncc = [np.argmin([np.linalg.norm(H[:, i] - mus[:, k]) for k in range(K)]) for i in range(N)]
    bb = np.zeros(K) if b is None else np.asarray(b)
    out["nc4"] = np.mean([np.argmax(W @ H[:, i] + bb) != ncc[i] for i in range(N)])
    if b is not None:
        out["nc4_nobias"] = np.mean([np.argmax(W @ H[:, i]) != ncc[i] for i in range(N)])
    out["bias_mean"] = np.linalg.norm(W @ mu_G + bb)
    return out


def _rng(key):
    """A NumPy generator seeded from a JAX key: test data is built in NumPy (no eager compiles)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


def _orthonormal(rng, d, r):
    """A random (d, r) matrix with orthonormal columns."""
    return np.linalg.qr(rng.standard_normal((d, r)))[0]


def _etf(rng, K, d):
    """A randomly rotated simplex ETF from ufm.geometry, as a NumPy (d, K) array."""
    return np.asarray(simplex_etf(K, d, U=jnp.asarray(_orthonormal(rng, d, K - 1))))


def _random_problem(rng, d, counts, spread=0.5):
    K, y = len(counts), _labels(counts)
    H = rng.standard_normal((d, K))[:, y] + spread * rng.standard_normal((d, len(y)))
    return H, y, rng.standard_normal((K, d)), rng.standard_normal(K)


def _metrics(*args, **kwargs):
    return {k: float(v) for k, v in nc_metrics(*args, **kwargs).items()}


# Most tests share K = 4, d = 6, N = 12 so that nc_metrics compiles few times.
K4, D6 = 4, 6


# --- 1. exact ETF and orthogonal frame ----------------------------------------------------------
@pytest.mark.parametrize("K,d,mean", [(2, 1, "weighted"), (K4, 3, "zero"), (K4, D6, "weighted")])
def test_exact_etf_is_collapsed(key, K, d, mean):
    M = _etf(_rng(key), K, d)
    y = _labels([12 // K] * K)  # balanced: mu_G = 0, so every `mean` sees the ETF M
    r = _metrics(2.5 * M[:, y], y, 0.7 * M.T, np.zeros(K), mean=mean)
    for name in H_KEYS | W_KEYS | {"nc4_nobias"}:
        assert abs(r[name]) <= EXACT, (name, r[name])


def test_unweighted_mean_etf_under_imbalance(key):
    M = _etf(_rng(key), K4, D6)
    y = _labels([1, 2, 5, 4])
    r = _metrics(M[:, y], y, M.T, np.zeros(K4), mean="unweighted")
    for name in H_KEYS | W_KEYS:
        assert abs(r[name]) <= EXACT, (name, r[name])


def test_orthogonal_frame_vs_etf(key):
    K = K4
    U = _orthonormal(_rng(key), D6, K)  # an orthogonal frame: K orthonormal columns
    y = _labels([3] * K)
    H, W, b = 1.3 * U[:, y], 0.4 * U.T, np.zeros(K)
    of_to_etf = np.sqrt(2 - 2 * np.sqrt((K - 1) / K))  # docs/theory.md §9
    r = _metrics(H, y, W, b, mean="zero")
    assert abs(r["nc2_W"] - of_to_etf) <= EXACT
    assert abs(r["nc2_H"] - of_to_etf) <= EXACT  # uncentred means: an OF, seen as one
    # Procrustes for an OF: ||X1||^2/(K||X||^2) = 1/K and K-1 singular values 1/sqrt(K), so the
    # squared distance is 1/K + (K-1)(1/sqrt(K) - 1/sqrt(K-1))^2 = 2 - 2 sqrt((K-1)/K) as well.
    assert abs(r["nc2_nearest_W"] - of_to_etf) <= EXACT
    assert abs(r["nc1"]) <= EXACT
    # the pitfall of docs/theory.md §8: centred OF means form an ETF, so centred NC2 and Zhu's NC3
    # are blind
    r = _metrics(H, y, W, b)
    assert abs(r["nc2_H"]) <= EXACT and abs(r["nc3_zhu"]) <= EXACT
    assert abs(r["nc2_W"] - of_to_etf) <= EXACT


# --- 2. agreement with the NumPy reference --------------------------------------------------------
@pytest.mark.parametrize(
    "d,counts,mean",
    [
        (D6, [3, 3, 3, 3], "weighted"),
        (D6, [1, 2, 5, 4], "weighted"),
        (D6, [2, 4, 1, 5], "unweighted"),
        (D6, [4, 2, 3, 3], "zero"),
        (2, [3, 4, 2, 3], "weighted"),  # d < K-1
        (3, [2, 5, 2, 3], "zero"),  # d < K: the rank bound of uncentred means is d
    ],
)
def test_matches_numpy_reference(key, d, counts, mean):
    H, y, W, b = _random_problem(_rng(key), d, counts)
    got = _metrics(H, y, W, b, mean=mean)
    want = _np_metrics(H, y, K4, W, b, mean=mean)
    assert set(got) == set(want) == H_KEYS | W_KEYS | {"nc4_nobias"}
    for name, value in want.items():
        # nearest ETF when X Q is rank deficient (d < K-1): a zero singular value is the sqrt of
        # an eigenvalue known to ~1e-16, so it is known to ~1e-8 only (documented in ufm.metrics)
        rtol = 1e-7 if name.startswith("nc2_nearest") and d < K4 - 1 else REL
        np.testing.assert_allclose(got[name], value, rtol=rtol, err_msg=name)


def test_without_classifier(key):
    H, y, W, b = _random_problem(_rng(key), D6, [3, 3, 3, 3])
    got, full = _metrics(H, y, K=K4), _metrics(H, y, W, b)
    assert set(got) == H_KEYS
    for name in H_KEYS:
        np.testing.assert_allclose(got[name], full[name], rtol=EXACT, err_msg=name)


def test_nc4_counts_disagreements(key):
    """Nonzero nc4 and a bias that changes it: the reference agrees sample by sample."""
    H, y, W, b = _random_problem(_rng(key), D6, [3, 3, 3, 3], spread=2.0)
    got, want = _metrics(H, y, W, b), _np_metrics(H, y, K4, W, b)
    assert 0 < want["nc4"] and want["nc4"] != want["nc4_nobias"]
    for name in ("nc4", "nc4_nobias"):  # fractions of 12 samples, equal up to rounding
        np.testing.assert_allclose(got[name], want[name], rtol=EXACT, err_msg=name)


# --- 3. zero within-class variance ------------------------------------------------------------
def test_zero_within_class_variance(key):
    means = _rng(key).integers(-5, 6, (D6, K4)).astype(float)  # exact sums and means
    y = _labels([3, 1, 6, 2])
    r = _metrics(means[:, y], y, means.T + 0.1, np.ones(K4))
    assert all(np.isfinite(v) for v in r.values())
    assert r["nc1"] == 0 and r["nc1_trace"] == 0 and r["cdnv"] == 0
    assert r["nc2_nearest_H"] > 0.01  # integer means are not an ETF


def test_zero_solution_is_nan():
    r = _metrics(np.zeros((D6, 12)), _labels([3] * K4), K=K4)  # H = 0: metrics undefined
    assert all(np.isnan(v) for v in r.values())


# --- 4. rotation invariance ---------------------------------------------------------------------
def test_rotation_invariance(key):
    rng = _rng(key)
    H, y, W, b = _random_problem(rng, D6, [3, 4, 2, 3])
    O = _orthonormal(rng, D6, D6)
    r, rr = _metrics(H, y, W, b), _metrics(O @ H, y, W @ O.T, b)
    for name in ("nc2_nearest_H", "nc2_nearest_W", "nc2_H", "nc2_W"):
        np.testing.assert_allclose(rr[name], r[name], rtol=REL, err_msg=name)
    M = 3.7 * _etf(rng, K4, D6)  # randomly rotated and scaled ETF
    y = _labels([3] * K4)
    r = _metrics(M[:, y] + 1.0, y, 0.2 * M.T, b)  # the feature shift is removed by centring
    for name in ("nc2_nearest_H", "nc2_nearest_W", "nc2_H", "nc2_W"):
        assert abs(r[name]) <= EXACT, (name, r[name])


# --- 5. jit and vmap ----------------------------------------------------------------------------
def test_jit_and_vmap_match_loop(key):
    rng = _rng(key)
    problems = [_random_problem(rng, D6, [3, 5, 2, 2]) for _ in range(3)]
    _, y, W, b = problems[0]
    Hs = np.stack([p[0] for p in problems])
    jitted = jax.jit(nc_metrics, static_argnames=("K", "mean"))
    batched = jax.vmap(lambda H: nc_metrics(H, y, W, b))(Hs)
    for i, H in enumerate(Hs):
        want, got = _metrics(H, y, W, b), jitted(H, y, W, b)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=EXACT, err_msg=name)
            np.testing.assert_allclose(batched[name][i], value, rtol=EXACT, err_msg=name)


# --- 6. bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"H": jnp.ones(6)}, "H must"),
        ({"H": jnp.ones((3, 6), dtype=jnp.int32)}, "H must"),
        ({"labels": jnp.zeros(5, dtype=int)}, "labels must"),
        ({"labels": jnp.zeros(6)}, "labels must"),
        ({"W": jnp.ones((2, 4))}, "W must"),
        ({"W": jnp.ones((2, 3)), "b": jnp.ones(3)}, "b must"),
        ({"b": jnp.ones(2)}, "b needs W"),
        ({"K": None}, "K must"),
        ({"K": 1}, "K must"),
        ({"W": jnp.ones((2, 3)), "K": 3}, "K must"),
        ({"mean": "median"}, "mean must"),
        ({"rcond": -1.0}, "rcond must"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"H": jnp.ones((3, 6)), "labels": _labels([3, 3]), "K": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        nc_metrics(**args)


# --- 7. float32 -----------------------------------------------------------------------------------
def test_float32_nc1_nonnegative_near_collapse(key):
    rng, y = _rng(key), _labels([1, 2, 4, 5])
    for _ in range(8):
        H32 = (_etf(rng, K4, D6)[:, y] + 1e-4 * rng.standard_normal((D6, 12))).astype(np.float32)
        r = nc_metrics(H32, y, K=K4)
        assert r["nc1"].dtype == jnp.float32
        assert 0 <= float(r["nc1"]) < 1e-5, r["nc1"]
        want = _np_metrics(H32.astype(np.float64), y, K4)["nc1"]
        np.testing.assert_allclose(r["nc1"], want, rtol=1e-2)


# --- 8. the shared pieces: nc1_trace and gram_gap ---------------------------------------------
def test_nc1_trace_and_gram_gap_alone(key):
    rng, y = _rng(key), _labels([1, 2, 4, 5])
    H = rng.standard_normal((D6, 12))
    for mean in ("weighted", "unweighted", "zero"):
        want = _np_metrics(H, y, K4, mean=mean)["nc1_trace"]
        np.testing.assert_allclose(nc1_trace(H, y, K4, mean=mean), want, rtol=REL)
    assert float(nc1_trace(_etf(rng, K4, D6)[:, y], y, K4)) < EXACT  # within-class collapse
    # gram_gap: scale-free, 0 at the target's shape, sqrt(2 - 2 cos) between two unit Grams
    M = _etf(rng, K4, D6)
    E = np.eye(K4) - 1 / K4
    assert float(gram_gap(3.0 * M.T @ M, E)) < EXACT
    O = np.eye(K4) / 2.0  # the OF Gram at unit norm: <O, E/||E||> = tr(E)/(2 sqrt(K-1))
    cos = np.trace(E) / (2 * np.sqrt(K4 - 1))
    assert abs(float(gram_gap(O, E)) - np.sqrt(2 - 2 * cos)) < EXACT
    assert np.isnan(float(gram_gap(np.zeros((K4, K4)), E)))
