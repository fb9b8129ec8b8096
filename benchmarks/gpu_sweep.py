"""B4 GPU sweep: B3's problem (CE UFM, K=10, d=64, n=50, float32, GD at lr 0.5,
200 steps) for runs = 4^k up to 10^5 on one accelerator, in one `ufm.sweep` call each.

For each run count: warm run-steps per second (after one cold call), achieved GFLOP/s (6 K d N
flops per run-step) as a fraction of the device's float32 matmul rate measured in the same process
(a large matmul at HIGHEST precision, so TF32 does not inflate the peak), the chunk size ufm chose
from the device's free memory, and the device's peak memory in use. On a CPU it runs too (smaller
--max-runs), which is how it is smoke-checked without a GPU.

Install the CUDA build of JAX first (the version must match jax's):
    pip install -U "jax[cuda12]"        # or jax[cuda13] on a CUDA 13 driver
    python benchmarks/gpu_sweep.py [--max-runs 100000] [--steps 200]

Writes benchmarks/results/b4.json and b4.png.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402
import optax  # noqa: E402
from _common import environment, jax_matmul_gflops, markdown, timed, write_json  # noqa: E402

import ufm  # noqa: E402

K, D, N_PER, LAM, LR = 10, 64, 50, 5e-4, 0.5


def peak_device_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--max-runs", type=int, default=100_000)
    p.add_argument("--matmul-size", type=int, default=8192)
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "results", "b4.json"))
    args = p.parse_args()
    env = environment()
    device = jax.devices()[0]
    peak = jax_matmul_gflops(args.matmul_size, precision=jax.lax.Precision.HIGHEST)
    model = ufm.UFM(K=K, d=D, n=N_PER, loss="ce", lam_W=LAM, lam_H=LAM, lam_b=LAM)
    flops_per_run_step = 6 * K * D * K * N_PER
    counts = sorted({*(4**k for k in range(10) if 4**k <= args.max_runs), args.max_runs})
    rows, points = [], []
    for runs in counts:
        lam_Ws = [1e-4, 5e-4, 1e-3, 5e-3][: min(4, runs)]
        seeds = max(1, runs // len(lam_Ws))

        def run(lam_Ws=lam_Ws, seeds=seeds):
            return ufm.sweep(model, {"lam_W": lam_Ws, "learning_rate": LR}, seeds=seeds,
                             steps=args.steps, optimizer=optax.sgd, progress=False)  # fmt: skip

        cold, _ = timed(run)
        warm, sw = timed(run)
        n = len(lam_Ws) * seeds
        rate = n * args.steps / warm
        gflops = rate * flops_per_run_step / 1e9
        mem = peak_device_bytes()
        point = {"runs": n, "cold_s": cold, "warm_s": warm, "run_steps_per_s": rate,
                 "gflops": gflops, "fraction_of_peak": gflops / peak,
                 "chunk_size": sw.meta["chunk_size"], "chunks": sw.meta["chunks"],
                 "peak_device_mb": None if mem is None else mem / 2**20,
                 "diverged": int(sw.diverged.sum())}  # fmt: skip
        points.append(point)
        rows.append([n, f"{rate:,.0f}", f"{gflops:,.1f}", f"{gflops / peak:.1%}",
                     point["chunk_size"], point["chunks"],
                     "-" if mem is None else f"{mem / 2**20:,.0f}", f"{cold:.2f}"])  # fmt: skip
        print(f"  runs={n}: {rate:,.0f} run-steps/s ({gflops / peak:.1%} of peak)", flush=True)
    print(f"\nB4 GPU sweep on {device.device_kind} ({device.platform}): {args.steps} steps per "
          f"run, float32; matmul peak {peak:,.0f} GFLOP/s\n")  # fmt: skip
    head = ["runs", "run-steps/s", "GFLOP/s", "of peak", "chunk", "chunks", "peak MB", "cold s"]
    print(markdown(rows, head))
    write_json(args.out, {"benchmark": "B4", "device": str(device), "kind": device.device_kind,
                          "steps": args.steps, "matmul_peak_gflops": peak, "points": points,
                          "environment": env})  # fmt: skip
    plot(points, os.path.splitext(args.out)[0] + ".png", device.device_kind)
    return 0


def plot(points, path, kind):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog([p["runs"] for p in points], [p["run_steps_per_s"] for p in points], "o-")
    ax.set(xlabel="runs", ylabel="run-steps per second", title=f"B4: ufm.sweep on {kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
