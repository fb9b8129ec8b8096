"""The simplex ETF and orthogonal frames satisfy their defining identities (docs/theory.md §9)."""

import jax
import numpy as np
import pytest

from ufm import geometry

TOL = 1e-12


@pytest.mark.parametrize(("K", "d"), [(2, 1), (3, 2), (5, 4), (5, 9), (10, 64)])
@pytest.mark.parametrize("random", [False, True])
def test_simplex_etf_identities(K, d, random, key):
    M = np.asarray(geometry.simplex_etf(K, d, key=key if random else None))
    assert M.shape == (d, K)
    G = M.T @ M
    expected = np.full((K, K), -1.0 / (K - 1))
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(G, expected, atol=TOL)
    np.testing.assert_allclose(M.sum(1), 0.0, atol=TOL)
    assert np.linalg.matrix_rank(M, tol=1e-8) == K - 1
    # pairwise squared distance 2K/(K-1)
    D = ((M[:, :, None] - M[:, None, :]) ** 2).sum(0)
    np.testing.assert_allclose(D[~np.eye(K, dtype=bool)], 2 * K / (K - 1), rtol=TOL)


def test_etf_and_of_grams_unit_frobenius_and_distance():
    for K in (3, 5, 10):
        E, O = np.asarray(geometry.etf_gram(K)), np.asarray(geometry.of_gram(K))
        assert abs(np.linalg.norm(E) - 1) < TOL and abs(np.linalg.norm(O) - 1) < TOL
        np.testing.assert_allclose(
            np.linalg.norm(E - O), np.sqrt(2 - 2 * np.sqrt((K - 1) / K)), rtol=TOL
        )


def test_orthonormal_basis_spans_centered_space():
    for K in (2, 3, 7):
        Q = np.asarray(geometry.orthonormal_basis(K))
        np.testing.assert_allclose(Q.T @ Q, np.eye(K - 1), atol=TOL)
        np.testing.assert_allclose(Q @ Q.T, np.eye(K) - 1 / K, atol=TOL)


def test_orthogonal_frame(key):
    U = np.asarray(geometry.orthogonal_frame(4, 6, key=key))
    np.testing.assert_allclose(U.T @ U, np.eye(4), atol=TOL)
    U2 = np.asarray(geometry.orthogonal_frame(4, 6, key=jax.random.key(1)))
    assert np.abs(U - U2).max() > 1e-3  # different keys, different frames


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: geometry.simplex_etf(1, 3), "K"),
        (lambda: geometry.simplex_etf(2.0, 3), "K"),
        (lambda: geometry.simplex_etf(5, 3), "d"),
        (lambda: geometry.orthogonal_frame(5, 4), "d"),
        (lambda: geometry.simplex_etf(3, 4, U=np.eye(4, 3)), "U"),
    ],
)
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()
