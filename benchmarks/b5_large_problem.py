"""B5 one large problem: CE UFM, K=1000, d=512, n=10 (N = 10^4), GD (lr 0.5, all
lams 5e-4), float32: time per GD step of `ufm.solve` vs the eager PyTorch peer, and the fraction
of this machine's float32 matmul peak (6 K d N FLOPs per step).

The ufm step time is (T(steps) - T(1)) / (steps - 1) for two warm `ufm.solve` calls as a user
writes them (a new ``optax.sgd`` object each call; the budget is an argument of the compiled
loop, so both calls share it), which cancels the fixed costs (start, NC metrics at the first and
last step, transfers); the peer's is the mean over --peer-steps eager steps after one warm-up
step.

    python benchmarks/b5_large_problem.py [--steps 100] [--no-peer]

Writes benchmarks/results/b5.json.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import set_host_devices  # noqa: E402

HOST_DEVICES = set_host_devices(sys.argv)

import _peer  # noqa: E402
import jax  # noqa: E402
import optax  # noqa: E402
from _common import environment, jax_matmul_gflops, markdown, timed, write_json  # noqa: E402

import ufm  # noqa: E402

K, D, N_PER, LAM, LR = 1000, 512, 10, 5e-4, 0.5


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--peer-steps", type=int, default=20)
    p.add_argument("--host-devices", type=int, default=None, help="CPU devices (cores) to use")
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "results", "b5.json"))
    args = p.parse_args()
    env = environment()
    jax.numpy.zeros(()).block_until_ready()
    model = ufm.UFM(K=K, d=D, n=N_PER, loss="ce", lam_W=LAM, lam_H=LAM, lam_b=LAM)
    key = jax.random.key(0)

    def solve(steps):  # as a user writes it: a new optimizer object every call
        res = ufm.solve(model, key, steps=steps, optimizer=optax.sgd(LR))
        return jax.block_until_ready(res)

    cold, res = timed(lambda: solve(args.steps))
    solve(1)
    long = min(timed(lambda: solve(args.steps))[0] for _ in range(args.repeats))
    short = min(timed(lambda: solve(1))[0] for _ in range(args.repeats))
    step = (long - short) / (args.steps - 1)
    flops = 6 * K * D * K * N_PER
    peak_jax = jax_matmul_gflops()
    peak_torch = _peer.matmul_gflops() if _peer.AVAILABLE else 0.0
    peak = max(peak_jax, peak_torch)
    rows = [["ufm.solve (fused value_and_grad)", f"{step * 1e3:.1f}", "1",
             f"{flops / step / 1e9:.0f}", f"{flops / step / 1e9 / peak:.0%}"]]  # fmt: skip
    out = {
        "benchmark": "B5",
        "steps": args.steps,
        "ufm": {"cold_s": cold, "warm_s": long, "one_step_call_s": short, "step_s": step},
        "gflops_per_step": flops / 1e9,
        "peak_gflops": {"jax": peak_jax, "torch": peak_torch},
        "final_objective": float(res.objective),
        "environment": env,
    }
    if _peer.AVAILABLE and not args.no_peer:
        peer_step = _peer.large_problem_step_seconds(K, D, N_PER, LAM, LR, args.peer_steps)
        peer_gflops = flops / peer_step / 1e9
        rows.append(["torch eager", f"{peer_step * 1e3:.1f}", f"{peer_step / step:.2f}",
                     f"{peer_gflops:.0f}", f"{peer_gflops / peak:.0%}"])  # fmt: skip
        out["peer_eager_step_s"] = peer_step
        out["ratio_peer_over_ufm"] = peer_step / step
    out["peak_fraction"] = flops / step / 1e9 / peak
    print(f"B5 one large problem: K={K}, d={D}, N={K * N_PER}, float32, "
          f"{len(jax.devices())} {jax.devices()[0].platform} device(s); {_peer.describe()}; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"float32 matmul peak (2048^2): jax {peak_jax:.0f}, torch {peak_torch:.0f} GFLOP/s; "
          f"ufm cold ({args.steps} steps, compile included) {cold:.1f} s\n")  # fmt: skip
    print(markdown(rows, ["", "ms per step", "x ufm", "GFLOP/s", "of peak"]))
    if "ratio_peer_over_ufm" in out:
        r = out["ratio_peer_over_ufm"]
        print(f"\nufm vs peer: {r:.2f}x (target >= 1: {'meets' if r >= 1 else 'below'}); "
              f"fraction of peak {out['peak_fraction']:.0%} (target >= 50%)")  # fmt: skip
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
