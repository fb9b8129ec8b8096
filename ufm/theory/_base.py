"""The optimum dispatcher, its result type, and the theory-vs-simulation report."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from ufm.metrics.nc import gram_gap


class NoClosedForm(ValueError):
    """Theory gives no closed-form optimum for this model (the message says why)."""


class Optimum(NamedTuple):
    """A global minimum value and one minimiser (unique up to rotations of feature space).

    value: the minimum f*.
    params: one minimiser, in the model's parameter layout.
    source: the paper(s) whose closed form gave it, e.g. "Zhu et al. 2021", or the section of
      docs/theory.md where a case no paper covers is derived; "" when it comes from no closed form
      (a certified optimum, `ufm.certify`). `ufm.check` names it in its report.
    """

    value: float
    params: Any
    source: str = ""


@functools.singledispatch
def optimum(model) -> Optimum:
    """The global optimum of ``model.objective`` where theory knows it, with the paper it comes
    from (`Optimum.source`); else raises NoClosedForm."""
    raise NoClosedForm(f"no closed-form optimum is known for {type(model).__name__}")


def _gram_gap(X, X_star) -> float:
    """`gram_gap` of X X^T and X* X*^T: the rotation-invariant shape distance, NaN at 0."""
    return float(gram_gap(X @ X.T, X_star @ X_star.T))


def _factors(model, params) -> tuple[np.ndarray | None, np.ndarray]:
    """(W, H) of a parameter pytree with fields W and H, or of a bare (d, N) feature array with the
    model's fixed classifier ``model.W`` (None for a model without one)."""
    if hasattr(params, "H"):
        W = getattr(params, "W", None)
        return (None if W is None else np.asarray(W)), np.asarray(params.H)
    W = getattr(model, "W", None)
    return (None if W is None else np.asarray(W)), np.asarray(params)


def _norm(x) -> float:
    return float(np.linalg.norm(np.asarray(x)))


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """Theory vs simulation for one run.

    objective, optimum, gap: f, f* and the relative gap (f - f*)/|f*|.
    metrics: the model's NC metrics at `params` (see `ufm.nc_metrics`).
    metrics_predicted: the same metrics at the optimum's parameters: 0 for an ETF, but not for
      every metric of an orthogonal frame (e.g. an OF's Gram is at a fixed distance from the ETF).
    gram_gap_W, gram_gap_H: distance between the normalised Gram of W (of the class means) and
      the predicted one; NaN when the optimum is zero.
    norm_ratio, norm_ratio_predicted: ||W||_F/||H||_F measured and at the optimum.
    zero_optimum: the optimum is W = H = 0 (metrics are then undefined).
    source: where the optimum comes from: "closed form, <paper>" (<paper> its `Optimum.source`),
      "certified, gap <g>" (a certified optimum, `ufm.certify`) or "given optimum".
    """

    objective: float
    optimum: float
    gap: float
    metrics: dict[str, float]
    metrics_predicted: dict[str, float]
    gram_gap_W: float
    gram_gap_H: float
    norm_ratio: float
    norm_ratio_predicted: float
    zero_optimum: bool
    source: str = ""

    def rows(self) -> list[tuple[str, float, float, float]]:
        """(quantity, simulation, theory, gap) rows; the theory column of an NC metric is its
        value at the optimum's parameters."""
        rows = [("objective", self.objective, self.optimum, abs(self.gap))]
        if self.zero_optimum:
            return rows + [("||W||_F/||H||_F", self.norm_ratio, math.nan, math.nan)]
        for k in ("nc1", "nc2", "nc2_W", "nc3", "nc4"):
            if k in self.metrics:
                v, p = self.metrics[k], self.metrics_predicted.get(k, math.nan)
                rows.append((k, v, p, abs(v - p)))
        rows.append(("Gram(W) vs theory", self.gram_gap_W, 0.0, abs(self.gram_gap_W)))
        rows.append(("Gram(means) vs theory", self.gram_gap_H, 0.0, abs(self.gram_gap_H)))
        r, rp = self.norm_ratio, self.norm_ratio_predicted
        rows.append(("||W||_F/||H||_F", r, rp, abs(r - rp) / abs(rp)))
        return rows

    def max_gap(self) -> float:
        """Largest entry of the gap column (objective gap relative, the rest absolute)."""
        return max(g for *_, g in self.rows() if not math.isnan(g))

    def table(self) -> str:
        """The rows as an aligned text table."""
        lines = [f"optimum: {self.source}"] if self.source else []
        lines.append(f"{'quantity':<24}{'simulation':>14}{'theory':>14}{'gap':>11}")
        for name, sim, th, gap in self.rows():
            lines.append(f"{name:<24}{sim:>14.6g}{th:>14.6g}{gap:>11.2e}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _reference(model) -> tuple[Optimum, str]:
    """The optimum to compare with and its source: the closed form where one exists, else the
    certified optimum of `ufm.certify` (its lower bound when d is below the rank it needs)."""
    try:
        opt = optimum(model)
        return opt, f"closed form, {opt.source}" if opt.source else "closed form"
    except NoClosedForm as closed:
        from ufm.theory.certify import NoCertificate, certify

        try:
            cert = certify(model)
        except NoCertificate as e:
            raise NoClosedForm(f"{closed}; and no certificate: {e}") from None
    if cert.status_name == "not_tight":
        source = f"certified lower bound, not attained (d={model.d} < rank {cert.rank})"
        return Optimum(cert.lower, cert.params), source
    status = "" if cert.status_name == "certified" else f" ({cert.status_name})"
    return Optimum(cert.value, cert.params), f"certified, gap {cert.gap:.0e}{status}"


def check(model, params, opt: Optimum | None = None) -> CheckReport:
    """Compare `params` with the model's global optimum: `opt` if given, else its closed form
    (`optimum`) where theory has one, else a certified optimum (`ufm.certify`, docs/theory.md
    §15-§16). The report's `source` says which. Raises NoClosedForm when there is neither."""
    opt, source = (opt, "given optimum") if opt is not None else _reference(model)
    f = float(model.objective(params))
    f_star = float(opt.value)
    metrics = {k: float(v) for k, v in model.metrics(params).items()}
    W, H = _factors(model, params)
    W_s, H_s = _factors(model, opt.params)
    zero = _norm(H_s if W_s is None else W_s) == 0
    predicted = {} if zero else {k: float(v) for k, v in model.metrics(opt.params).items()}
    labels = getattr(model, "labels", None)  # models with classes: compare the class means
    Y = None if labels is None else np.eye(model.K)[np.asarray(labels)]
    means, means_s = (H, H_s) if Y is None else (H @ Y / Y.sum(0), H_s @ Y / Y.sum(0))
    return CheckReport(
        objective=f,
        optimum=f_star,
        gap=(f - f_star) / abs(f_star),
        metrics=metrics,
        metrics_predicted=predicted,
        gram_gap_W=math.nan if W is None else _gram_gap(W, W_s),
        gram_gap_H=_gram_gap(means.T, means_s.T),
        norm_ratio=math.nan if W is None or _norm(H) == 0 else _norm(W) / _norm(H),
        norm_ratio_predicted=math.nan if zero or W is None else _norm(W_s) / _norm(H_s),
        zero_optimum=zero,
        source=source,
    )


def as_float(x) -> float:
    """A concrete hyperparameter as a Python float (theory runs in plain Python)."""
    return float(jnp.asarray(x))


def weight_decays(model, why: str) -> tuple[float, float]:
    """(lam_W, lam_H) of a weight-decayed model as floats; NoClosedForm naming both, and `why`
    no optimum is known without them, unless both are > 0."""
    lam_W, lam_H = as_float(model.lam_W), as_float(model.lam_H)
    if lam_W <= 0 or lam_H <= 0:
        raise NoClosedForm(
            f"the closed forms need lam_W > 0 and lam_H > 0 (got lam_W={lam_W}, lam_H={lam_H}): "
            f"{why}"
        )
    return lam_W, lam_H
