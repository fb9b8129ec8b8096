"""B3 scaling in runs: B1's problem (CE UFM, K=10, d=64, n=50, float32, GD at
lr 0.5), 200 steps, runs = 1, 4, 16, ..., 4096 (lam_W spread over the runs' seeds).

For each run count: `ufm.sweep` warm run-steps per second (after one cold call), tuned (the
learning rate in the grid of an ``optax.sgd`` factory, no bar) and as a user writes the call (a
new ``optax.sgd(0.5)`` object each call, the progress bar on), its chunking
and the memory one compiled call needs per device (arguments, outputs and temporaries, as XLA
reports it); side by side, the PyTorch vmap peer (timed over --peer-steps steps after a warm-up,
scaled) and the eager loop (one run after a warm-up; its rate does not depend on the run count).
Expected: ufm flat once saturated; memory bounded by the chunk size, not by the number of runs.

    python benchmarks/b3_scaling.py [--max-runs 4096] [--host-devices 2] [--no-peer]

Writes benchmarks/results/b3.json and b3.png.
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
from _common import environment, markdown, timed, write_json  # noqa: E402

import ufm  # noqa: E402

K, D, N_PER, LAM, LR = 10, 64, 50, 5e-4, 0.5


def _point(model, runs: int, steps: int, args, use_peer: bool) -> dict:
    """One run count: the tuned call cold and warm, the user's call warm, the vmap peer."""
    lam_Ws = [1e-4, 5e-4, 1e-3, 5e-3][: min(4, runs)]
    seeds = runs // len(lam_Ws)

    def run():
        return ufm.sweep(model, {"lam_W": lam_Ws, "learning_rate": LR}, seeds=seeds,
                         steps=steps, optimizer=optax.sgd, chunk_size=args.chunk_size,
                         progress=False)  # fmt: skip

    def user():  # as a user writes it: a new optimizer object, the bar on
        return ufm.sweep(model, {"lam_W": lam_Ws}, seeds=seeds, steps=steps,
                         optimizer=optax.sgd(LR), chunk_size=args.chunk_size)  # fmt: skip

    cold, _ = timed(run)
    timed(user)
    warm, sw = timed(run)
    warm = min(warm, timed(run)[0])
    warm_user = min(timed(user)[0] for _ in range(2))
    mem = sw.meta["bytes_per_device_and_call"]
    rate = runs * steps / warm
    point = {
        "runs": runs,
        "cold_s": cold,
        "warm_s": warm,
        "warm_user_call_s": warm_user,
        "user_call_run_steps_per_s": runs * steps / warm_user,
        "run_steps_per_s": rate,
        "gflops": rate * 6 * K * D * K * N_PER / 1e9,
        "chunk_size": sw.meta["chunk_size"],
        "chunks": sw.meta["chunks"],
        "mb_per_device_and_call": None if mem is None else mem / 2**20,
    }
    if use_peer and runs <= args.peer_max_runs:
        _peer.vmap_sweep(K, D, N_PER, lam_Ws, range(seeds), LAM, LAM, LR, 2)  # warm-up
        t, _ = _peer.vmap_sweep(K, D, N_PER, lam_Ws, range(seeds), LAM, LAM, LR,
                                args.peer_steps)  # fmt: skip
        point["peer_vmap_run_steps_per_s"] = runs * args.peer_steps / t
    return point


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--max-runs", type=int, default=4096)
    p.add_argument("--chunk-size", type=int, default=None, help="default: ufm's own choice")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--peer-steps", type=int, default=20, help="vmap peer timed over this many")
    p.add_argument("--peer-max-runs", type=int, default=4096, help="no vmap peer beyond")
    p.add_argument("--host-devices", type=int, default=None, help="CPU devices (cores) to use")
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "results", "b3.json"))
    args = p.parse_args()
    env = environment()
    steps = args.steps
    counts = [4**k for k in range(8) if 4**k <= args.max_runs]
    model = ufm.UFM(K=K, d=D, n=N_PER, loss="ce", lam_W=LAM, lam_H=LAM, lam_b=LAM)
    use_peer = _peer.AVAILABLE and not args.no_peer

    eager_rate = None
    if use_peer:
        _peer.eager_sweep(K, D, N_PER, [LAM], [0], LAM, LAM, LR, 20)  # warm-up
        t, _ = _peer.eager_sweep(K, D, N_PER, [LAM], [0], LAM, LAM, LR, steps)
        eager_rate = steps / t
    rows, points = [], []
    for runs in counts:
        point = _point(model, runs, steps, args, use_peer)
        rate = point["run_steps_per_s"]
        cold, warm_user = point["cold_s"], point["warm_user_call_s"]
        if use_peer:
            point["peer_eager_run_steps_per_s"] = eager_rate
        points.append(point)
        mb = point["mb_per_device_and_call"] or 0
        row = [runs, f"{rate:,.0f}", f"{runs * steps / warm_user:,.0f}",
               f"{point['gflops']:.1f}", f"{point['chunk_size']}", f"{point['chunks']}",
               f"{mb:.1f}", f"{cold:.2f}"]  # fmt: skip
        if "peer_vmap_run_steps_per_s" in point:
            vr = point["peer_vmap_run_steps_per_s"]
            row += [
                f"{vr:,.0f}",
                f"{eager_rate:,.0f}",
                f"{rate / vr:.1f}",
                f"{rate / eager_rate:.1f}",
            ]
        elif use_peer:
            row += ["", f"{eager_rate:,.0f}", "", f"{rate / eager_rate:.1f}"]
        rows.append(row)
        print(f"  runs={runs}: {rate:,.0f} run-steps/s", flush=True)

    head = ["runs", "ufm run-steps/s", "user call", "GFLOP/s", "chunk", "chunks",
            "MB/device/call", "cold s"]  # fmt: skip
    if use_peer:
        head += ["torch vmap", "torch eager", "x vmap", "x eager"]
    devices = f"{len(jax.devices())} {jax.devices()[0].platform} device(s)"
    print(f"\nB3 scaling: {steps} steps per run, float32, {devices}; {_peer.describe()}; "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print(markdown(rows, head))
    write_json(args.out, {"benchmark": "B3", "steps": steps, "host_devices": HOST_DEVICES,
                          "points": points, "environment": env})  # fmt: skip
    plot(points, os.path.splitext(args.out)[0] + ".png", steps)
    return 0


def plot(points, path, steps):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [p["runs"] for p in points]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ax.loglog(runs, [p["run_steps_per_s"] for p in points], "o-", label="ufm.sweep (warm)")
    peer = [p for p in points if "peer_vmap_run_steps_per_s" in p]
    if peer:
        ax.loglog([p["runs"] for p in peer], [p["peer_vmap_run_steps_per_s"] for p in peer], "s--",
                  label="torch.func.vmap")  # fmt: skip
        ax.loglog(runs, [peer[0]["peer_eager_run_steps_per_s"]] * len(runs), ":",
                  label="torch eager loop")  # fmt: skip
    ax.set(xlabel="runs", ylabel="run-steps per second", title=f"B3: throughput ({steps} steps)")
    ax.legend()
    mb = [p["mb_per_device_and_call"] or 0 for p in points]
    bx.loglog(runs, mb, "o-")
    bx.set(xlabel="runs", ylabel="MB per device and call (XLA)", title="memory of one chunk")
    for p, m in zip(points, mb, strict=True):
        bx.annotate(f"chunk {p['chunk_size']}", (p["runs"], m), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
