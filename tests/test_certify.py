"""Certified optima (`ufm.certify`, docs/theory.md §15-§16) against closed forms, against values
computed independently (cvxpy/Clarabel and multi-start L-BFGS on the factored problem, quoted
with 12 digits), against a live L-BFGS run, and the thresholds of minority collapse."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ufm
from ufm.label_noise import symmetric_noise
from ufm.multilabel import all_label_sets
from ufm.theory.certified import (
    certified_hong_ling_threshold,
    certified_lpm_curve,
    certified_lpm_threshold,
    certified_minority_curve,
)
from ufm.theory.certify import STATUS, dual_bound

TIGHT = 1e-9  # certificate vs closed form, and the certified relative gap
REF = 1e-9  # vs the 12-digit reference values (their own accuracy ~1e-12)
LIVE = 1e-8  # vs a live L-BFGS run on the factored problem
BOUND = 1e-12  # slack of "lower <= any objective value" (rounding)


def batch(cls, **fields):
    """A model whose array-valued leaves (broadcast together) make a batch for `certify`."""
    return cls(**{k: np.asarray(v, float) if k.startswith(("lam", "alpha", "E_")) else v
                  for k, v in fields.items()})  # fmt: skip


def element(model, i):
    """The i-th model of a batch (flat index over its batch shape), leaves as floats."""
    names = type(model)._leaves
    shape = np.broadcast_shapes(*(np.shape(getattr(model, k)) for k in names))
    leaves = {k: float(np.broadcast_to(getattr(model, k), shape).ravel()[i]) for k in names}
    return dataclasses.replace(model, **leaves)


def assert_matches_closed_forms(model, cert):
    """Every certificate of the batch equals the closed form, within TIGHT, and bounds it."""
    value, lower, gap, status = (np.ravel(x) for x in (cert.value, cert.lower, cert.gap,
                                                       cert.status))  # fmt: skip
    for i in range(value.size):
        opt = ufm.optimum(element(model, i))
        assert value[i] == pytest.approx(opt.value, rel=TIGHT, abs=TIGHT)
        assert lower[i] <= opt.value + BOUND
        assert gap[i] <= TIGHT and status[i] == STATUS.certified


# --- closed forms -------------------------------------------------------------------------------
LAMS = np.array([1e-3, 2e-2, 0.2])  # K c = 0.009, 0.18, 1.79: the last is the zero solution


def test_balanced_ce_every_bias_mode_matches_closed_form():
    m = batch(ufm.UFM, K=4, d=4, n=5, lam_W=LAMS, lam_H=LAMS, bias=False)
    cert = ufm.certify(m)
    assert_matches_closed_forms(m, cert)
    assert cert.rank.tolist() == [3, 3, 0]  # rank K-1 (an ETF), then W = H = 0
    lam_b = np.array([[0.0], [5e-3]])  # free and regularised bias in one batch
    m = batch(ufm.UFM, K=4, d=4, n=5, lam_W=LAMS, lam_H=LAMS, lam_b=lam_b)
    cert = ufm.certify(m)
    assert cert.value.shape == (2, 3)
    assert_matches_closed_forms(m, cert)


def test_mse_three_bias_regimes_match_closed_form():
    """Free bias, and a regularised one (lam_b = 1) in its three regimes: K c below lam_b/(1 +
    lam_b) (rank K, needs d = K), between it and 1 (ETF), above 1 (W = 0)."""
    lam = np.array([0.01, 0.08, 0.2])
    m = batch(ufm.UFM, K=4, d=4, n=5, loss="mse", lam_W=lam, lam_H=lam, lam_b=[[0.0], [1.0]])
    cert = ufm.certify(m)
    assert_matches_closed_forms(m, cert)
    assert cert.rank.tolist() == [[3, 3, 0], [4, 3, 0]]


def test_imbalanced_mse_without_bias_and_label_smoothing_match_closed_forms():
    lam = np.array([0.05, 0.12, 0.2])  # N^2 lam^2 = 0.25, 1.44, 4: classes vanish one by one
    m = batch(ufm.UFM, K=3, d=3, n=(6, 3, 1), loss="mse", lam_W=lam, lam_H=lam, bias=False)
    cert = ufm.certify(m)
    assert_matches_closed_forms(m, cert)
    assert cert.rank.tolist() == [3, 2, 1]  # classes with n_k <= N^2 lam_W lam_H vanish
    m = batch(ufm.UFM, K=4, d=4, n=5, loss="ls", lam_W=1e-3, lam_H=1e-3, alpha=[0.05, 0.3],
              bias=False)  # fmt: skip
    assert_matches_closed_forms(m, ufm.certify(m))


def test_layer_peeled_balanced_matches_closed_form():
    for h_budget in ("class", "sample"):
        m = ufm.LayerPeeled(K=4, d=3, n=3, E_W=1.0, E_H=2.0, h_budget=h_budget)
        cert = ufm.certify(m)
        assert cert.value == pytest.approx(ufm.optimum(m).value, rel=TIGHT)
        assert cert.value == pytest.approx(0.375147290159, rel=REF)
        assert cert.gap <= TIGHT


def test_noisy_and_multilabel_match_their_closed_forms():
    n, noisy = symmetric_noise(3, 4, 1)
    m = batch(ufm.NoisyUFM, K=3, d=3, n=n, noisy=noisy, lam_W=1e-2, lam_H=1e-2,
              lam_M=[1e-3, 5e-2], bias=False)  # fmt: skip
    assert_matches_closed_forms(m, ufm.certify(m))
    sets = all_label_sets(4, (1, 2))
    m = ufm.MultiLabelUFM(K=4, d=4, label_sets=sets, n=3, lam_W=1e-2, lam_H=1e-2, bias=False)
    cert = ufm.certify(m)
    assert cert.value == pytest.approx(ufm.optimum(m).value, rel=TIGHT) and cert.gap <= TIGHT


def test_dual_bound_certifies_a_closed_form_optimum():
    """The dual point at the closed-form parameters is optimal too: the closed form is a global
    minimum (an independent check of both)."""
    m = ufm.UFM(K=4, d=4, n=5, lam_W=2e-2, lam_H=2e-2, lam_b=0.0)
    opt = ufm.optimum(m)
    lower, gap = dual_bound(m, opt.params)
    assert lower <= opt.value + BOUND and gap <= BOUND


# --- imbalanced: independent computations ---------------------------------------------------
# counts (6, 3, 1); rows lam_W, lam_H = (0.02, 0.05), (0.08, 0.18); LS alpha = 0.2; a
# regularised bias lam_b = 0.1. Each value agrees between multi-start L-BFGS on the factored
# problem, cvxpy/Clarabel on the convex one and the dual certificate (docs/theory.md §15).
REFERENCE = {
    ("ce", "none"): (0.424286298645, 0.953320965774),
    ("ce", "free"): (0.376132688907, 0.815211229136),
    ("ce", "reg"): (0.411470561192, 0.862943645000),
    ("ls", "none"): (0.725400591051, 1.054347638953),
    ("mse", "none"): (0.148854699276, 0.407784866042),
    ("mse", "free"): (0.090237617766, 0.236494159635),
    ("mse", "reg"): (0.109596813872, 0.257250117891),
}
ROWS = (np.array([0.02, 0.08]), np.array([0.05, 0.18]))


@pytest.mark.parametrize("loss", ["ce", "ls", "mse"])
def test_imbalanced_reference_values(loss):
    lam_W, lam_H = ROWS
    alpha = 0.2 if loss == "ls" else 0.0
    m = batch(ufm.UFM, K=3, d=3, n=(6, 3, 1), loss=loss, lam_W=lam_W, lam_H=lam_H, alpha=alpha,
              bias=False)  # fmt: skip
    cert = ufm.certify(m)
    np.testing.assert_allclose(cert.value, REFERENCE[loss, "none"], rtol=REF)
    assert np.all(cert.gap <= TIGHT) and np.all(cert.lower <= cert.value + BOUND)
    if loss == "ls":  # one point alone: the batch is a vmap of the same computation
        single = ufm.certify(element(m, 1))
        assert single.value == pytest.approx(cert.value[1], rel=1e-12)
        return
    m = batch(ufm.UFM, K=3, d=3, n=(6, 3, 1), loss=loss, lam_W=lam_W, lam_H=lam_H,
              lam_b=[[0.0], [0.1]])  # fmt: skip
    cert = ufm.certify(m)
    ref = [REFERENCE[loss, "free"], REFERENCE[loss, "reg"]]
    np.testing.assert_allclose(cert.value, ref, rtol=REF)
    assert np.all(cert.gap <= TIGHT) and np.all(cert.status == STATUS.certified)


def test_live_lbfgs_check_and_warm_start(key):
    """The issue's example: imbalanced CE with a free bias has no closed form. L-BFGS on the
    factored problem reaches the certified value, `check` says the optimum is certified, and
    `solve` started at the certificate's parameters stays there."""
    m = ufm.UFM(K=4, d=5, n=(10, 10, 2, 2), loss="ce", lam_W=1e-3, lam_H=1e-3, lam_b=0.0)
    cert = ufm.certify(m)
    assert cert.status_name == "certified" and cert.gap <= TIGHT and cert.rank == 3
    res = ufm.solve(m, key, steps=1000, tol=1e-12, metrics=False)
    assert float(res.objective) == pytest.approx(cert.value, rel=LIVE)
    assert float(res.objective) >= cert.lower - BOUND
    report = ufm.check(m, res.params)
    assert report.source.startswith("certified, gap") and abs(report.gap) <= LIVE
    assert report.table().startswith("optimum: certified")
    warm = ufm.solve(m, key, steps=1000, tol=1e-12, init=cert.params, metrics=False)
    assert float(warm.objective) == pytest.approx(cert.value, rel=1e-12)
    balanced = ufm.UFM(K=4, d=5, n=4, lam_W=1e-3, lam_H=1e-3)
    source = ufm.check(balanced, ufm.optimum(balanced).params).source
    assert source == "closed form, Zhu et al. 2021"
    with pytest.raises(ufm.NoClosedForm):
        ufm.optimum(m)  # a certificate is not a closed form


@pytest.mark.parametrize(
    "counts, E_W, E_H, values",
    [((4, 3, 2, 1), 1.0, 2.0, (0.327899898450, 0.353263871225)),
     ((6, 3, 1), 0.7, 3.0, (0.164162579724, 0.186079589514))],
)  # fmt: skip
def test_layer_peeled_imbalanced_reference_values(counts, E_W, E_H, values):
    """Both budgets, d = K - 1 for the per-class budget and d = K for the sample-averaged one;
    the recovered parameters meet both budgets."""
    K = len(counts)
    for h_budget, d, value in zip(("class", "sample"), (K - 1, K), values, strict=True):
        m = ufm.LayerPeeled(K=K, d=d, n=counts, E_W=E_W, E_H=E_H, h_budget=h_budget)
        cert = ufm.certify(m)
        assert cert.value == pytest.approx(value, rel=REF) and cert.gap <= TIGHT
        np.testing.assert_allclose(m.budgets(cert.params), (E_W, E_H), rtol=1e-12)


# --- d below the rank ---------------------------------------------------------------------------
def test_below_the_rank_the_bound_is_valid_but_not_tight():
    """CE, counts (6, 3, 1), d = 1 < rank 2: the factored optimum is 0.499990086262 (best of
    L-BFGS starts) against the convex 0.424286298645. MSE without bias, d = 2 < rank 3: the
    truncated soft-thresholding is optimal (0.172231922675), the bound is 0.148854699276."""
    m = ufm.UFM(K=3, d=1, n=(6, 3, 1), lam_W=0.02, lam_H=0.05, bias=False)
    cert = ufm.certify(m)
    assert cert.status_name == "not_tight" and "not tight" in cert.message and cert.rank == 2
    assert cert.lower == pytest.approx(0.424286298645, rel=REF)
    assert cert.lower < 0.499990086262 <= cert.value + BOUND
    m = ufm.UFM(K=3, d=2, n=(6, 3, 1), loss="mse", lam_W=0.02, lam_H=0.05, bias=False)
    cert = ufm.certify(m)
    assert cert.status_name == "not_tight"
    assert cert.value == pytest.approx(0.172231922675, rel=REF)
    assert cert.lower == pytest.approx(0.148854699276, rel=REF)


# --- the protocol hook ------------------------------------------------------------------------
class MyMSE(ufm.Model):
    """A user's MSE-UFM without bias, certified through its ``convex_form``."""

    K: int
    d: int
    n: int
    lam_W: float = ufm.leaf(default=1e-2, lower=0.0)
    lam_H: float = ufm.leaf(default=1e-2, lower=0.0)

    def init(self, key):
        return ufm.Params(jnp.zeros((self.K, self.d)), jnp.zeros((self.d, self.K * self.n)), None)

    def objective(self, p):
        r = p.W @ p.H - jnp.repeat(jnp.eye(self.K), self.n, axis=1)
        penalty = self.lam_W * jnp.sum(p.W**2) + self.lam_H * jnp.sum(p.H**2)
        return 0.5 * jnp.sum(r * r) / (self.K * self.n) + 0.5 * penalty

    def convex_form(self):
        return ufm.ConvexForm(targets=jnp.eye(self.K), weights=jnp.full((self.K,), 1 / self.K),
                              metric=jnp.full((self.K,), math.sqrt(self.n)), loss="mse",
                              c_W=self.lam_W, c_H=self.lam_H,
                              atoms=tuple(np.repeat(np.arange(self.K), self.n)))  # fmt: skip


def test_a_model_of_the_protocol_with_a_convex_form():
    """Value from theory: soft-thresholding sqrt(n) at N mu gives, per class,
    mu sqrt(n) - N mu^2/2 when sqrt(n) > N mu."""
    K, n, lam = 3, 4, np.array([0.01, 0.03])
    cert = ufm.certify(MyMSE(K=K, d=3, n=n, lam_W=lam, lam_H=lam))
    mu, N = lam, K * n
    np.testing.assert_allclose(cert.value, K * (mu * math.sqrt(n) - N * mu**2 / 2), rtol=TIGHT)
    assert np.all(cert.gap <= TIGHT)


# --- bad input ----------------------------------------------------------------------------------
def test_models_without_a_convex_form_say_why():
    with pytest.raises(ufm.NoCertificate, match="focal loss is not convex"):
        ufm.certify(ufm.UFM(K=3, d=3, n=2, loss="focal", gamma=1.0))
    with pytest.raises(ufm.NoCertificate, match="sphere"):
        ufm.certify(ufm.NormalizedUFM(K=3, d=3, n=2))
    with pytest.raises(ufm.NoCertificate, match="Schatten"):
        ufm.certify(ufm.ExtendedUFM(K=3, d=3, n=2, depth=2))
    with pytest.raises(ufm.NoCertificate, match="define convex_form"):
        ufm.certify(ufm.MaxMarginUFM(K=3, d=3, n=2))
    with pytest.raises(ufm.NoCertificate, match="lam_W must be > 0"):
        ufm.certify(ufm.UFM(K=3, d=3, n=2, lam_W=[1e-3, 0.0]))


def test_bad_arguments_are_named():
    m = ufm.UFM(K=3, d=3, n=2)
    with pytest.raises(ValueError, match="d must be an integer >= 1"):
        ufm.UFM(K=3, d=0, n=2)
    with pytest.raises(ValueError, match="tol"):
        ufm.certify(m, tol=0.0)
    with pytest.raises(ValueError, match="max_steps"):
        ufm.certify(m, max_steps=0)
    with pytest.raises(ValueError, match="dtype"):
        ufm.certify(m, dtype=jnp.int32)
    leaves, treedef = jax.tree.flatten(m)  # unflattened models skip the constructor's checks
    nan = jax.tree.unflatten(treedef, [math.nan] + leaves[1:])
    with pytest.raises(ValueError, match="lam_W must be finite"):
        ufm.certify(nan)
    with pytest.raises(ValueError, match="alpha must be in"):
        certified_minority_curve(2, 2, 8, [1.0], 0.05, 0.1, "ls", alpha=3.0)
    with pytest.raises(ValueError, match="tol"):
        certified_minority_curve(2, 2, 8, [1.0], 0.05, 0.1, tol=-1.0)


# --- minority collapse from certificates ---------------------------------------------------------
def test_hong_ling_threshold_in_every_bias_mode():
    """K_A = K_B = 2, n_A = 8, lam_W lam_H = 2.5/21^2: the threshold n_B <= N^2 lam_W lam_H puts
    collapse at n_B = 2.5 exactly (docs/theory.md §15)."""
    lam_W, lam_H = 0.05, 2.5 / (21**2 * 0.05)
    curve = certified_minority_curve(2, 2, 8, [1, 2, 3, 4], lam_W, lam_H)
    assert np.all(curve.spread[:2] <= 1e-6) and np.all(curve.spread[2:] >= 0.3)
    assert np.all(curve.gap <= TIGHT)
    for bias, lam_b in ((False, 0.0), (True, 0.0), (True, 0.1)):
        n_B = certified_hong_ling_threshold(2, 2, 8, lam_W, lam_H, bias, lam_b)
        assert n_B == pytest.approx(2.5, rel=1e-7)


def test_layer_peeled_R0_from_the_convex_form():
    """R_0 = 7.618013 (K_A = K_B = 2, E_W = 1, E_H = 2) and 12.19245 (K_A = K_B = 5, E_W = 1,
    E_H = 5), per-class budget; cosines of the minority classifiers on both sides."""
    R0 = certified_lpm_threshold(2, 2, E_W=1.0, E_H=2.0)
    assert R0 == pytest.approx(7.618013, rel=2e-7)
    assert certified_lpm_threshold(5, 5, E_W=1.0, E_H=5.0) == pytest.approx(12.19245, rel=1e-6)
    curve = certified_lpm_curve(2, 2, R0 * np.array([0.9, 0.99, 1.01, 1.1]), 1.0, 2.0)
    np.testing.assert_allclose(curve.cosine[:2], [0.80681647, 0.97983763], atol=1e-6)
    assert np.all(curve.cosine[2:] > 1 - 1e-9)
