"""B6 certified optima: `ufm.certify` on an imbalanced CE-UFM (K = 10, counts 500 x 5 and 50 x 5,
all lams 5e-4, free bias) to a 1e-8 relative duality gap, side by side with cvxpy (Clarabel) on
the same convex problem and with multi-start L-BFGS on the factored problem; then a 20 x 20
certified phase diagram over (lam_W, lam_H).

Every method's result is judged by the same certificate: the relative gap between its objective
and the best dual bound (`ufm.theory.certify.dual_bound` at its point, and the certified lower
bound). cvxpy solves the class-mean convex form (the problem `certify` solves; the per-sample form
is an SDP of side K + N = 2760), with Clarabel's tolerances tightened until its gap is <= 1e-8.

    python benchmarks/b6_certify.py [--repeats 5] [--starts 8] [--no-cvxpy]

Writes benchmarks/results/b6.json. Needs the `bench` extra (cvxpy) for the cvxpy column.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import environment, markdown, timed, write_json  # noqa: E402

import ufm  # noqa: E402
from ufm.theory.certify import convex_form, dual_bound  # noqa: E402

K, COUNTS, LAM, TOL, GRID = 10, (500,) * 5 + (50,) * 5, 5e-4, 1e-8, 20


def model(lam_W=LAM, lam_H=LAM):
    return ufm.UFM(K=K, d=K, n=COUNTS, loss="ce", lam_W=lam_W, lam_H=lam_H, lam_b=0.0)


def run_certify(repeats: int) -> dict:
    m = model()
    cold, cert = timed(lambda: ufm.certify(m, tol=TOL))
    warm = min(timed(lambda: ufm.certify(m, tol=TOL))[0] for _ in range(repeats))
    return {"cold_s": cold, "warm_s": warm, "value": cert.value, "lower": cert.lower,
            "gap": cert.gap, "gap_own_dual": dual_bound(m, cert.params)[1], "steps": cert.steps,
            "rank": cert.rank}  # fmt: skip


def cvxpy_solve(tol: float):
    """The class-mean convex form min sum_k pi_k CE(z_k + b) + mu ||Z D^{1/2}||_* by cvxpy."""
    import cvxpy as cp

    form = convex_form(model())
    w, R = np.asarray(form.weights), np.asarray(form.metric)
    Z, b = cp.Variable((K, K)), cp.Variable(K)
    logits = Z + cp.reshape(b, (K, 1), order="F") @ np.ones((1, K))
    loss = cp.sum(cp.multiply(w, cp.log_sum_exp(logits, axis=0) - cp.diag(logits)))
    mu = float(np.sqrt(LAM * LAM))
    problem = cp.Problem(cp.Minimize(loss + mu * cp.normNuc(Z @ np.diag(R))))
    opts = {"tol_gap_abs": tol, "tol_gap_rel": tol, "tol_feas": tol, "tol_ktratio": tol}
    problem.solve(solver=cp.CLARABEL, **opts)
    return Z.value, b.value


def cvxpy_gap(Z: np.ndarray, b: np.ndarray) -> float:
    """The certificate's relative gap at cvxpy's point, through the factored parameters."""
    m = model()
    U, s, Vt = np.linalg.svd(Z * np.sqrt(np.asarray(COUNTS, float))[None, :])
    W = U * np.sqrt(s)[None, :]
    Ha = (np.sqrt(s)[:, None] * Vt) / np.sqrt(np.asarray(COUNTS, float))[None, :]
    params = ufm.Params(jax.numpy.asarray(W), jax.numpy.asarray(np.repeat(Ha, COUNTS, 1)),
                        jax.numpy.asarray(b))  # fmt: skip
    return dual_bound(m, params)[1]


def run_cvxpy(repeats: int) -> dict:
    """Clarabel's tolerances from 1e-8 down until the certificate's gap at its point is <= TOL."""
    tries = []
    for tol in (1e-8, 1e-9, 1e-10, 1e-11, 1e-12):
        seconds, (Z, b) = timed(lambda t=tol: cvxpy_solve(t))
        tries.append({"clarabel_tol": tol, "gap": cvxpy_gap(Z, b), "seconds": seconds})
        if tries[-1]["gap"] <= TOL:
            break
    tol = tries[-1]["clarabel_tol"]
    warm = min(timed(lambda: cvxpy_solve(tol))[0] for _ in range(repeats))
    return {"clarabel_tol": tol, "gap": tries[-1]["gap"], "warm_s": warm,
            "first_s": tries[-1]["seconds"], "tries": tries}  # fmt: skip


def run_lbfgs(starts: int, cert_lower: float) -> dict:
    """`ufm.solve` (L-BFGS, the default) from `starts` seeds, best objective kept."""
    m = model()

    def all_starts():
        runs = [ufm.solve(m, jax.random.key(s), steps=2000, tol=1e-10, metrics=False)
                for s in range(starts)]  # fmt: skip
        return jax.block_until_ready(runs)

    cold, runs = timed(all_starts)
    warm, runs = timed(all_starts)
    best = min(runs, key=lambda r: float(r.objective))
    f = float(best.objective)
    return {"starts": starts, "cold_s": cold, "warm_s": warm, "best": f,
            "gap_vs_certified_lower": (f - cert_lower) / f,
            "gap_own_dual": dual_bound(m, best.params)[1],
            "steps": [int(r.steps) for r in runs]}  # fmt: skip


def run_diagram() -> dict:
    lams = np.logspace(-4, -2, GRID)
    m = model(lams[:, None], lams[None, :])
    cold, cert = timed(lambda: ufm.certify(m, tol=TOL))
    warm, cert = timed(lambda: ufm.certify(m, tol=TOL))
    return {"points": int(cert.value.size), "cold_s": cold, "warm_s": warm,
            "worst_gap": float(cert.gap.max()), "certified": int(np.sum(cert.status == 0)),
            "max_steps": int(cert.steps.max())}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="warm timings (best is reported)")
    p.add_argument("--starts", type=int, default=8, help="L-BFGS starts")
    p.add_argument("--no-cvxpy", action="store_true")
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "results", "b6.json"))
    args = p.parse_args()
    jax.config.update("jax_enable_x64", True)
    env = environment()
    out = {"benchmark": "B6", "problem": {"K": K, "counts": COUNTS, "lams": LAM, "tol": TOL}}
    out["certify"] = run_certify(args.repeats)
    if not args.no_cvxpy:
        out["cvxpy_clarabel"] = run_cvxpy(args.repeats)
    out["lbfgs"] = run_lbfgs(args.starts, out["certify"]["lower"])
    out["diagram"] = run_diagram()
    c, lb = out["certify"], out["lbfgs"]
    rows = [["ufm.certify", f"{c['warm_s']:.4f}", f"{c['cold_s']:.2f}", f"{c['gap']:.1e}", "1"]]
    if "cvxpy_clarabel" in out:
        cv = out["cvxpy_clarabel"]
        out["ratio_cvxpy_over_certify"] = cv["warm_s"] / c["warm_s"]
        rows.append(["cvxpy + Clarabel", f"{cv['warm_s']:.4f}", f"{cv['first_s']:.2f}",
                     f"{cv['gap']:.1e}", f"{out['ratio_cvxpy_over_certify']:.0f}"])  # fmt: skip
    out["ratio_lbfgs_over_certify"] = lb["warm_s"] / c["warm_s"]
    rows.append([f"L-BFGS x {lb['starts']} starts", f"{lb['warm_s']:.4f}", f"{lb['cold_s']:.2f}",
                 f"{lb['gap_vs_certified_lower']:.1e}",
                 f"{out['ratio_lbfgs_over_certify']:.0f}"])  # fmt: skip
    d = out["diagram"]
    rows.append([f"certify {GRID}x{GRID} diagram", f"{d['warm_s']:.3f}", f"{d['cold_s']:.2f}",
                 f"{d['worst_gap']:.1e}", "-"])  # fmt: skip
    print(markdown(rows, ["method", "warm s", "first call s", "gap", "x certify"]))
    out["environment"] = env
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
