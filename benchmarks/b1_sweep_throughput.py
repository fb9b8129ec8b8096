"""B1 sweep throughput: CE UFM, K=10, d=64, n=50, bias, lam_H = lam_b = 5e-4,
lam_W in {1e-4, 5e-4, 1e-3, 5e-3}, 8 seeds (32 runs), 1000 GD steps at lr 0.5, float32.

Times `ufm.sweep` cold (first call in the process: tracing and compilation included) and warm
(best of --repeats) in two forms: the call a user writes, ``ufm.sweep(model, {"lam_W": [...]},
seeds=8, steps=1000, optimizer=optax.sgd(0.5))`` (a new optimizer object each call, progress bar
on), and the tuned one (``optimizer=optax.sgd`` with the learning rate in the grid, no bar).
Side by side in the same process, the PyTorch peer: the eager loop of the public NC code (32
runs one after the other) and the peer at its best (torch.func.vmap of the gradient over the 32
runs). Reports ratios (the targets are for the user's call), achieved GFLOP/s (6 K d N per
run-step) and their fraction of this machine's float32 matmul peak (2048 x 2048, best of JAX
and torch, same run). A floor for scale: the same 32 runs as a bare jitted loop of the GD step
in plain JAX (no objective, no divergence check, no records), sharded over the same devices.

    python benchmarks/b1_sweep_throughput.py [--host-devices 2] [--repeats 5] [--no-peer]

JAX uses one CPU device per core (``import ufm``); --host-devices N sets N devices instead
(XLA_FLAGS set before JAX starts). Writes benchmarks/results/b1.json.
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
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import (  # noqa: E402
    environment,
    jax_matmul_gflops,
    markdown,
    timed,
    verdict,
    write_json,
)

import ufm  # noqa: E402

K, D, N_PER, LAM, LR = 10, 64, 50, 5e-4, 0.5
LAM_WS = [1e-4, 5e-4, 1e-3, 5e-3]
SEEDS = 8
TARGETS = {"warm_vs_eager": 20.0, "warm_vs_vmap": 5.0, "cold_vs_eager": 5.0, "peak_fraction": 0.5}


def _timings(steps: int, args) -> dict:
    """Cold and warm seconds of the user's and the tuned call, and the peers' (interleaved with
    the first warm timings: same machine state)."""
    model = ufm.UFM(K=K, d=D, n=N_PER, loss="ce", lam_W=LAM, lam_H=LAM, lam_b=LAM)

    def user():  # as a user writes it: a new optimizer object every call, the bar on
        return ufm.sweep(model, {"lam_W": LAM_WS}, seeds=SEEDS, steps=steps,
                         optimizer=optax.sgd(LR))  # fmt: skip

    def tuned():
        return ufm.sweep(model, {"lam_W": LAM_WS, "learning_rate": LR}, seeds=SEEDS,
                         steps=steps, optimizer=optax.sgd, progress=False)  # fmt: skip

    t = {"cold": timed(user)[0], "cold_tuned": timed(tuned)[0], "warm_all": [],
         "tuned_all": [], "peer": {}, "peer_obj": None}  # fmt: skip
    for r in range(args.repeats):
        t["warm_all"].append(timed(user)[0])
        seconds, sw = timed(tuned)
        t["tuned_all"].append(seconds)
        if _peer.AVAILABLE and not args.no_peer and r == 0:
            t["peer"]["eager"], t["peer_obj"] = _peer.eager_sweep(
                K, D, N_PER, LAM_WS, range(SEEDS), LAM, LAM, LR, steps
            )
            s, _ = _peer.vmap_sweep(K, D, N_PER, LAM_WS, range(SEEDS), LAM, LAM, LR,
                                    args.vmap_steps)  # fmt: skip
            t["peer"]["vmap"] = s * steps / args.vmap_steps
    t["warm"], t["warm_tuned"], t["sweep"] = min(t["warm_all"]), min(t["tuned_all"]), sw
    return t


def _bare_step_seconds(steps: int, repeats: int) -> float:
    """Warm seconds of the floor: B1's 32 runs as a bare jitted loop of the hand-written GD step
    (no objective, no divergence check, no records, no progress), vmapped over the runs and
    sharded over the devices like a sweep. What ufm adds is the rest of its row."""
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    N = K * N_PER
    Y = (jnp.arange(N)[None, :] // N_PER == jnp.arange(K)[:, None]).astype(jnp.float32)

    def step(W, H, b, lam_W):
        Z = W @ H + b[:, None]
        L = Z - jax.nn.logsumexp(Z, axis=0, keepdims=True)
        dZ = (jnp.exp(L) - Y) / N
        return (W - LR * (dZ @ H.T + lam_W * W), H - LR * (W.T @ dZ + LAM * H),
                b - LR * (dZ.sum(1) + LAM * b))  # fmt: skip

    @jax.jit
    def run(W, H, b, lam_W):
        body = lambda i, p: jax.vmap(step)(*p, lam_W)  # noqa: E731
        return jax.lax.fori_loop(0, steps, body, (W, H, b))

    R = len(LAM_WS) * SEEDS
    runs = NamedSharding(Mesh(np.asarray(jax.devices()), ("runs",)), P("runs"))
    key_W, key_H = jax.random.split(jax.random.key(0))
    lam_W = jnp.repeat(jnp.asarray(LAM_WS, jnp.float32), SEEDS)
    args = [jax.device_put(x, runs) for x in (
        jax.random.normal(key_W, (R, K, D), jnp.float32) / np.sqrt(D),
        jax.random.normal(key_H, (R, D, N), jnp.float32) / np.sqrt(D),
        jnp.zeros((R, K), jnp.float32), lam_W)]  # fmt: skip
    jax.block_until_ready(run(*args))
    return min(timed(lambda: jax.block_until_ready(run(*args)))[0] for _ in range(repeats))


def _ratios(t: dict, warm: float, cold: float, gflops: float, peak: float) -> dict:
    out = {}
    if t["peer"]:
        out = {"warm_vs_eager": t["peer"]["eager"] / warm, "warm_vs_vmap": t["peer"]["vmap"] / warm,
               "cold_vs_eager": t["peer"]["eager"] / cold}  # fmt: skip
    return dict(out, peak_fraction=gflops / peak)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="warm timings (best is reported)")
    p.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    p.add_argument("--vmap-steps", type=int, default=200,
                   help="time the vmap peer over this many steps and scale to --steps")  # fmt: skip
    p.add_argument("--host-devices", type=int, default=None, help="CPU devices (cores) to use")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "b1.json"))
    args = p.parse_args()
    steps, runs = args.steps, len(LAM_WS) * SEEDS
    env = environment()
    jax.numpy.zeros(()).block_until_ready()  # start the backend outside the cold timing
    t = _timings(steps, args)
    warm, warm_tuned, cold, cold_tuned = (t[k] for k in ("warm", "warm_tuned", "cold",
                                                          "cold_tuned"))  # fmt: skip
    bare = _bare_step_seconds(steps, args.repeats)
    peak_jax = jax_matmul_gflops()
    peak_torch = _peer.matmul_gflops() if _peer.AVAILABLE else 0.0
    peak = max(peak_jax, peak_torch)
    flops = 6 * K * D * (K * N_PER) * runs * steps
    gflops, gflops_tuned = flops / warm / 1e9, flops / warm_tuned / 1e9
    rows = [
        ["ufm.sweep as a user writes it, warm", f"{warm:.3f}", "1", f"{gflops:.1f}",
         f"{gflops / peak:.0%}"],
        ["ufm.sweep as a user writes it, cold", f"{cold:.3f}", f"{cold / warm:.1f}", "", ""],
        ["ufm.sweep tuned (factory, no bar), warm", f"{warm_tuned:.3f}",
         f"{warm_tuned / warm:.2f}", f"{gflops_tuned:.1f}", f"{gflops_tuned / peak:.0%}"],
        ["ufm.sweep tuned, cold", f"{cold_tuned:.3f}", f"{cold_tuned / warm:.1f}", "", ""],
        ["floor: a bare jitted GD step, no checks (warm)", f"{bare:.3f}", f"{bare / warm:.2f}",
         f"{flops / bare / 1e9:.1f}", f"{flops / bare / 1e9 / peak:.0%}"],
    ]  # fmt: skip
    for name, label in (("eager", "torch eager loop"), ("vmap", "torch.func.vmap peer")):
        if name in t["peer"]:
            s = t["peer"][name]
            note = f" ({args.vmap_steps} steps, scaled)" if name == "vmap" else ""
            rows.append([label + note, f"{s:.3f}", f"{s / warm:.1f}", f"{flops / s / 1e9:.1f}",
                         f"{flops / s / 1e9 / peak:.0%}"])  # fmt: skip
    ratios = _ratios(t, warm, cold, gflops, peak)
    tuned_ratios = _ratios(t, warm_tuned, cold_tuned, gflops_tuned, peak)
    devices = f"{len(jax.devices())} {jax.devices()[0].platform} device(s)"
    print(f"B1 sweep throughput: {runs} runs x {steps} steps, float32, {devices}; "
          f"{_peer.describe()}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"float32 matmul peak (2048^2): jax {peak_jax:.0f}, torch {peak_torch:.0f} GFLOP/s\n")
    print(markdown(rows, ["", "seconds", "x ufm warm", "GFLOP/s", "of peak"]))
    print()
    for k, v in ratios.items():
        print(f"{k:15s} {v:8.2f}  ({verdict(v, TARGETS[k])}); tuned call {tuned_ratios[k]:.2f}")
    lam_med = np.median(t["sweep"].objective, axis=-1)
    print("\nfinal objective (median over seeds) per lam_W:", np.round(lam_med, 4).tolist())
    if t["peer_obj"] is not None:
        peer_med = np.median(np.reshape(t["peer_obj"], (len(LAM_WS), SEEDS)), axis=-1)
        print("torch eager, same problem:                   ", np.round(peer_med, 4).tolist())
    seconds = {"ufm_cold": cold, "ufm_warm": warm, "ufm_warm_all": t["warm_all"], "bare_step": bare,
               "ufm_tuned_cold": cold_tuned, "ufm_tuned_warm": warm_tuned,
               "ufm_tuned_warm_all": t["tuned_all"],
               **{f"peer_{k}": v for k, v in t["peer"].items()}}  # fmt: skip
    write_json(args.out, {"benchmark": "B1", "runs": runs, "steps": steps,
                          "host_devices": HOST_DEVICES, "seconds": seconds, "gflops": gflops,
                          "gflops_tuned": gflops_tuned,
                          "peak_gflops": {"jax": peak_jax, "torch": peak_torch},
                          "ratios": ratios, "ratios_tuned": tuned_ratios, "targets": TARGETS,
                          "objective_median_per_lam_W": lam_med.tolist(),
                          "environment": env})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
