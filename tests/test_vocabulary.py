"""One NC vocabulary: a metric key means the same quantity for every built-in model. For each
model, every key that ``model.metrics(params)`` shares with `ufm.nc_metrics` must equal
`nc_metrics` computed independently on the arrays (features, labels, classifier, bias, mean
convention) that the model's ``metrics`` docstring names."""

import jax
import numpy as np
import pytest

import ufm
from ufm.label_noise import symmetric_noise
from ufm.multilabel import all_label_sets

SAME = 1e-12  # relative agreement of two computations of one float64 quantity


def _ufm_arrays(m, p):
    mean = "zero" if (m.loss == "mse" and not m.bias) else "weighted"
    return p.H, m.labels, p.W, p.b, None, mean


def _plain_arrays(m, p):  # LayerPeeled, NormalizedUFM: no bias, weighted mean
    return p.H, m.labels, p.W, None, None, "weighted"


def _extended_arrays(m, p):  # the last features H_L with the classifier W_L
    mean = "zero" if (m.loss == "mse" and not m.bias) else "weighted"
    return m.features(p)[-1], m.labels, p.Ws[-1], p.b, None, mean


def _multilabel_arrays(m, p):  # label sets as the classes, features only
    return p.H, np.asarray(m.set_index), None, None, len(m.label_sets), "weighted"


def _noisy_arrays(m, p):  # the TRUE classes
    return p.H, m.labels, p.W, p.b, None, "weighted"


def _max_margin_arrays(m, p):  # no bias, weighted mean
    return p.H, m.labels, p.W, None, None, "weighted"


def _supcon_arrays(m, H):  # the retracted (unit) features, no classifier
    return m.project(H), m.labels, None, None, m.K, "weighted"


def _fixed_etf_arrays(m, H):  # H against the fixed classifier rows
    return H, m.labels, m.W, None, None, "weighted"


n_noisy, noisy = symmetric_noise(3, 2, 1)
CASES = [
    (ufm.UFM(K=3, d=4, n=2), _ufm_arrays),
    (ufm.UFM(K=3, d=4, n=(2, 3, 1), loss="mse", bias=False), _ufm_arrays),
    (ufm.LayerPeeled(K=3, d=4, n=2), _plain_arrays),
    (ufm.NormalizedUFM(K=3, d=4, n=2), _plain_arrays),
    (ufm.ExtendedUFM(K=3, d=4, n=2, depth=2), _extended_arrays),
    (ufm.ExtendedUFM(K=3, d=4, n=2, depth=2, loss="mse", bias=False), _extended_arrays),
    (ufm.MultiLabelUFM(K=3, d=4, label_sets=all_label_sets(3, (1, 2)), n=2), _multilabel_arrays),
    (ufm.NoisyUFM(K=3, d=4, n=n_noisy, noisy=noisy), _noisy_arrays),
    (ufm.MaxMarginUFM(K=3, d=4, n=(2, 3, 1)), _max_margin_arrays),
    (ufm.SupConUFM(K=3, d=4, n=2, tau=0.5), _supcon_arrays),
    (ufm.FixedETFUFM(K=3, d=4, n=(2, 3, 1), E_H=1.0), _fixed_etf_arrays),
]
# RegressionUFM has real targets, no classes: its metrics are the regression NRC1-3 and share no
# key with nc_metrics (test_regression checks them)


@pytest.mark.parametrize("model, arrays", CASES, ids=lambda c: type(c).__name__)
def test_shared_keys_mean_what_nc_metrics_means(model, arrays, key):
    p = model.init(key)
    got = {k: float(v) for k, v in model.metrics(p).items() if np.ndim(v) == 0}
    H, labels, W, b, K, mean = arrays(model, p)
    ref = ufm.nc_metrics(H, jax.numpy.asarray(labels), W, b, K=K, mean=mean)
    shared = sorted(set(got) & set(ref))
    assert "nc1" in shared and "nc1_trace" in shared  # every model reports NC1 in both forms
    for k in shared:
        np.testing.assert_allclose(got[k], float(ref[k]), rtol=SAME, atol=SAME, err_msg=k)
