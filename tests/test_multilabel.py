"""Multi-label NC under the pick-all-label CE (Li et al. 2024): the loss against a loop, the exact
optimum of ufm.multilabel against free L-BFGS runs (value, ETF of single-label means, set means at
scaled sums of their members' means), and a sweep of the weight decay against the predicted
tag-wise scale."""

import math

import jax
import numpy as np
import optax
import pytest

import ufm
from ufm.multilabel import MultiLabelUFM, all_label_sets, multilabel_margins, tagwise_geometry
from ufm.solve import run

GAP = 1e-10  # relative objective agreement
SHAPE = 1e-5  # geometry of a converged run (parameters ~ sqrt(gap))
OPT = optax.lbfgs()
K, D = 4, 4


@jax.jit
def _solve(model, key):
    return run(model, model.init(key), OPT, 5000, 5000, 1e-11, metrics=False)


_geometry = jax.jit(tagwise_geometry)


def test_layout_and_pick_all_label_loss(key):
    sets = all_label_sets(K, (1, 2))
    assert len(sets) == 4 + 6 and sets[4] == (0, 1)
    m = MultiLabelUFM(K=K, d=D, label_sets=sets, n=(2,) * 4 + (1,) * 6, bias=False)
    assert m.N == 14 and m.targets.shape == (14, K)
    p = m.init(key)
    Z = np.asarray(m.logits(p))
    ref = 0.0
    for i, S in enumerate(np.asarray(m.set_index)):
        lse = np.log(np.sum(np.exp(Z[i])))
        ref += sum(lse - Z[i, k] for k in sets[S])  # the sum of the CE of every label in the set
    assert abs(float(m.data_loss(p)) - ref / 14) < 1e-12
    with pytest.raises(ValueError, match="label_sets"):
        MultiLabelUFM(K=3, d=2, label_sets=((0,), (0, 3)))
    with pytest.raises(ValueError, match="n must have one count"):
        MultiLabelUFM(K=3, d=2, label_sets=((0,), (1,)), n=(1, 2, 3))


def test_optimum_against_free_optimisation(key):
    # K = 4, every single label (n_1 = 3) and every pair (n_2 = 2), with a regularised bias
    sets = all_label_sets(K, (1, 2))
    m = MultiLabelUFM(K=K, d=D, label_sets=sets, n=(3,) * 4 + (2,) * 6, lam_W=3e-3, lam_H=2e-3)
    opt = ufm.optimum(m)
    assert abs(float(m.objective(opt.params)) - opt.value) < 1e-12 * opt.value
    best = min((_solve(m, k) for k in jax.random.split(key, 2)), key=lambda r: float(r.objective))
    assert abs(float(best.objective) - opt.value) <= GAP * opt.value
    g = {k: float(v) for k, v in _geometry(m, best.params).items()}
    # multi-label NC: collapse within sets, ETF classifier and single-label means, set means at
    # the predicted multiple of the sum of their members' means
    assert g["nc1"] < SHAPE and g["nc1_trace"] < SHAPE
    assert g["etf_W"] < SHAPE and g["etf_singles"] < SHAPE
    assert g["tagwise_residual_2"] < SHAPE
    s, _ = multilabel_margins(K, {1: 3, 2: 2}, 3e-3, 2e-3)
    assert abs(g["tagwise_scale_2"] - s[2] / s[1]) < SHAPE
    # the same through an independent reading of the free solution: the logit margins
    Z = np.asarray(m.logits(best.params))
    T = np.asarray(m.targets)
    for size in (1, 2):
        rows = T.sum(1) == size
        gap = Z[rows][T[rows] == 1].mean() - Z[rows][T[rows] == 0].mean()
        assert abs(gap - s[size]) < SHAPE


def test_weight_decay_sweep_follows_the_predicted_tagwise_scale():
    # one ufm.sweep over the weight decay (a leaf: one compilation). Theory gives s_m/s_1 at each
    # lam and the zero solution once sum_m a_m(0)^2/c_m <= mu^2 (K-1)^2; the runs follow both.
    sets = all_label_sets(K, (1, 2, 3))
    counts = (2,) * 4 + (1,) * 6 + (1,) * 4
    lams = [1e-3, 5e-3, 2e-2, 4e-2, 0.2]
    m = MultiLabelUFM(K=K, d=D, label_sets=sets, n=counts, bias=False)
    sw = ufm.sweep(
        m,
        grid={"lam_W": lams, "lam_H": lams},
        zip_axes=[("lam_W", "lam_H")],
        steps=5000,
        tol=1e-11,
        optimizer=OPT,
        keep_params=True,
        progress=False,
    )
    assert sw.objective.shape == (len(lams), 1) and np.all(sw.status == 0)
    predicted, measured = [], []
    for i, lam in enumerate(lams):
        s, value = multilabel_margins(K, {1: 2, 2: 1, 3: 1}, lam, lam)
        assert abs(float(sw.objective[i, 0]) - value) <= GAP * value
        if s[1] == 0:  # the zero solution
            assert float(np.linalg.norm(np.asarray(sw.params.W[i, 0]))) < SHAPE
            # every label of every sample at probability 1/K: (1/N) sum_i |S_i| log K
            assert abs(value - math.log(K) * (8 * 1 + 6 * 2 + 4 * 3) / 18) < 1e-12
            continue
        assert sw.metrics["tagwise_residual_2"][i, 0] < SHAPE
        assert sw.metrics["tagwise_residual_3"][i, 0] < SHAPE
        predicted.append((s[2] / s[1], s[3] / s[1]))
        measured.append((sw.metrics["tagwise_scale_2"][i, 0], sw.metrics["tagwise_scale_3"][i, 0]))
    assert len(measured) >= 3  # the sweep crosses into the zero solution only at its end
    np.testing.assert_allclose(measured, predicted, atol=SHAPE)
    # the trend is the predicted one, point by point
    assert np.array_equal(
        np.sign(np.diff(np.asarray(measured), axis=0)),
        np.sign(np.diff(np.asarray(predicted), axis=0)),
    )


def test_no_closed_form_without_within_multiplicity_balance():
    sets = all_label_sets(K, (1, 2))[:-1]  # one pair missing
    with pytest.raises(ufm.NoClosedForm, match="within-multiplicity balance"):
        ufm.optimum(MultiLabelUFM(K=K, d=D, label_sets=sets))
    with pytest.raises(ufm.NoClosedForm, match="d >= K-1"):
        ufm.optimum(MultiLabelUFM(K=K, d=2, label_sets=all_label_sets(K, (1, 2))))
