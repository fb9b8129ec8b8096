"""The README's phase diagram as a benchmark of many small problems: `ufm.sweep` of
UFM(K=4, d=5, n=3) (CE, bias) over 7 x 7 weight decays (lam_W, lam_H in geomspace(1e-3, 1, 7),
lam_b = 5e-4) x 4 seeds = 196 runs of 300 steps of the default optimizer, float32, exactly as
the README writes it (progress bar on), cold (the first call in this process: tracing and
compilation included) and warm (best of --repeats), side by side with a plain Python loop of
`torch.optim.LBFGS(line_search_fn="strong_wolfe", max_iter=300)` (its default tolerances: it
stops early once converged) over the same 196 problems. Both are judged by their median
relative gap to the closed form `ufm.optimum`.

    python benchmarks/phase_diagram.py [--repeats 3] [--no-peer]

Writes benchmarks/results/phase_diagram.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import environment, markdown, timed, verdict, write_json  # noqa: E402

import ufm  # noqa: E402

K, D, N_PER, SEEDS, STEPS = 4, 5, 3, 4, 300
LAMS = np.geomspace(1e-3, 1, 7)
TARGETS = {"warm_vs_lbfgs_loop": 20.0, "cold_vs_lbfgs_loop": 3.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="warm timings (best is reported)")
    p.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "results", "phase_diagram.json"))
    args = p.parse_args()
    env = environment()
    jax.numpy.zeros(()).block_until_ready()  # start the backend outside the cold timing

    def run():
        return ufm.sweep(ufm.UFM(K=K, d=D, n=N_PER), grid={"lam_W": LAMS, "lam_H": LAMS},
                         seeds=SEEDS, steps=STEPS)  # fmt: skip

    cold, sw = timed(run)
    warm = min(timed(run)[0] for _ in range(args.repeats))
    best = np.array([[ufm.optimum(ufm.UFM(K=K, d=D, n=N_PER, lam_W=a, lam_H=b)).value
                      for b in LAMS] for a in LAMS])  # fmt: skip
    gap = np.abs(sw.objective - best[..., None]) / np.abs(best[..., None])
    rows = [
        ["ufm.sweep, warm", f"{warm:.3f}", "1", f"{np.median(gap):.1e}", f"{gap.max():.1e}"],
        ["ufm.sweep, cold (compile included)", f"{cold:.2f}", f"{cold / warm:.1f}", "", ""],
    ]
    out = {"benchmark": "phase_diagram", "runs": int(sw.objective.size), "steps": STEPS,
           "ufm": {"cold_s": cold, "warm_s": warm, "median_gap": float(np.median(gap)),
                   "max_gap": float(gap.max()), "group_size": sw.meta["group_size"],
                   "diverged": int(sw.diverged.sum())}}  # fmt: skip
    ratios = {}
    if _peer.AVAILABLE and not args.no_peer:

        def peer():
            return [_peer.lbfgs_run(K, D, N_PER, (a, b, 5e-4), STEPS, seed=s, converge=True)[1]
                    for a in LAMS for b in LAMS for s in range(SEEDS)]  # fmt: skip

        peer_s, values = timed(peer)
        peer_gap = np.abs(np.reshape(values, gap.shape) - best[..., None]) / best[..., None]
        rows.append(["torch L-BFGS loop (strong Wolfe, max_iter 300)", f"{peer_s:.2f}",
                     f"{peer_s / warm:.1f}", f"{np.nanmedian(peer_gap):.1e}",
                     f"{np.nanmax(peer_gap):.1e}"])  # fmt: skip
        ratios = {"warm_vs_lbfgs_loop": peer_s / warm, "cold_vs_lbfgs_loop": peer_s / cold}
        out["peer_lbfgs_loop"] = {"seconds": peer_s, "median_gap": float(np.nanmedian(peer_gap))}
    devices = f"{len(jax.devices())} {jax.devices()[0].platform} device(s)"
    print(f"README phase diagram: {gap.size} runs of UFM(K={K}, d={D}, n={N_PER}) x {STEPS} "
          f"steps, float32, {devices}; {_peer.describe()}; load average "
          f"{os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print(markdown(rows, ["", "seconds", "x ufm warm", "median gap", "max gap"]))
    for k, v in ratios.items():
        print(f"{k:20s} {v:8.2f}  ({verdict(v, TARGETS[k])})")
    write_json(args.out, dict(out, ratios=ratios, targets=TARGETS, environment=env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
