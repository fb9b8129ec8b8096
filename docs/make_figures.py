"""Regenerate the README's figures: `python docs/make_figures.py` (about a minute on a CPU)."""

import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
jax.config.update("jax_enable_x64", True)

import ufm  # noqa: E402
from ufm import dynamics, imbalance  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def save(fig, name):
    fig.savefig(os.path.join(HERE, name), dpi=90, bbox_inches="tight")
    print("wrote", name)


# the demo: CE UFM solved to its optimum, metrics vs step and Gram of W vs the ETF
m = ufm.UFM(K=10, d=64, n=50)
res = ufm.solve(m, jax.random.key(0), steps=500, record_every=1, tol=1e-12)
hist = {k: np.asarray(v)[np.asarray(res.history["step"]) >= 0] for k, v in res.history.items()}
save(ufm.plot.demo_figure(hist, res.params.W), "demo.png")

# the phase diagram of the tour: collapse to zero beyond K^2 n lam_W lam_H = 1
lams = np.geomspace(1e-3, 1, 7)
sw = ufm.sweep(ufm.UFM(K=4, d=5, n=3), grid={"lam_W": lams, "lam_H": lams}, seeds=4, steps=300,
               progress=False)  # fmt: skip
fig = ufm.plot.phase_diagram(np.log(4) - np.median(sw.objective, -1), lams, lams, xlabel="lam_W",
                             ylabel="lam_H", label="log K - f",
                             boundary=lambda x: 1 / (4**2 * 3 * x))  # fmt: skip
save(fig, "phase_diagram.png")

# minority collapse in the layer-peeled model, with the exact threshold R_0
K_A = K_B = 2
R0 = imbalance.lpm_threshold(K_A, K_B, E_W=1.0, E_H=2.0, rtol=1e-6)
runs = []
for R in (1, 2, 4, 6, 8, 16):
    model = ufm.LayerPeeled(K=4, d=4, n=imbalance.two_group_counts(K_A, K_B, 2 * R, 2), E_H=2.0)
    best = min((ufm.solve(model, jax.random.key(s), steps=3000) for s in range(3)),
               key=lambda r: float(r.objective))  # fmt: skip
    runs.append((model, best))
save(ufm.plot.minority_collapse(imbalance.minority_collapse_curve(runs), threshold=R0),
     "minority_collapse.png")  # fmt: skip

# the locally elastic SDE: separation above alpha = beta, none at or below
gaps = jnp.array([-0.2, 0.0, 0.3])
cfg = dynamics.LESDE(K=3, n=50, surrogate="I", alpha=0.2, beta=0.2, sigma=1.0)
le = dynamics.le_sweep(cfg, jax.random.key(0), alpha=0.2 + gaps, beta=jnp.full(3, 0.2), trials=16,
                       steps=1000, h=0.1, record_every=20)  # fmt: skip
results = {f"alpha-beta={float(g):+.1f}": {k: np.asarray(v)[i] for k, v in le.history.items()}
           for i, g in enumerate(gaps)}  # fmt: skip
save(ufm.plot.le_separation(results), "le_phase_transition.png")
