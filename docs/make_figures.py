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

# K > d+1 on the sphere: K = 6 classes in d = 2 land on the regular hexagon (best of 3 starts)
import matplotlib.pyplot as plt  # noqa: E402

sph = ufm.NormalizedUFM(K=6, d=2, n=3, tau=0.5)
best = min((ufm.solve(sph, jax.random.key(s), steps=500) for s in range(3)),
           key=lambda r: float(r.objective))  # fmt: skip
fig = ufm.plot.feature_geometry(best.params.H, sph.labels, W=best.params.W, dim=2)
fig.axes[0].set_title(f"K=6, d=2: f = {float(best.objective):.6f}, "
                      f"hexagon {ufm.optimum(sph).value:.6f}")  # fmt: skip
save(fig, "k_gon.png")

# label smoothing: the optimal margin against alpha, theory vs solve; zero solution at Kc+alpha=1
from ufm.theory.regularized import ls_margin  # noqa: E402

K, n, lam = 5, 4, 5e-3
c = np.sqrt(n) * lam
alphas = np.linspace(0.0, 1.0, 11)
ls = ufm.UFM(K=K, d=K, n=n, loss="ls", lam_W=lam, lam_H=lam, lam_b=lam, alpha=0.1)
sw_ls = ufm.sweep(ls, grid={"alpha": alphas}, seeds=1, steps=500, keep_params=True,
                  progress=False)  # fmt: skip
Z = np.einsum("akd,adn->ank", np.asarray(sw_ls.params.W[:, 0]), np.asarray(sw_ls.params.H[:, 0]))
y = np.asarray(ls.labels)
true = Z[:, np.arange(len(y)), y]
other = (Z.sum(-1) - true) / (K - 1)
fig, ax = plt.subplots(figsize=(5, 3.6))
fine = np.linspace(0, 1, 200)
ax.plot(fine, [ls_margin(K, c, a) for a in fine], "-", label="theory s*(alpha)")
ax.plot(alphas, (true - other).mean(1), "o", fillstyle="none", label="sweep (mean margin)")
ax.axvline(1 - K * c, color="k", ls=":", label="Kc + alpha = 1")
ax.set(xlabel="alpha (label smoothing)", ylabel="margin", title="LS: CE with Kc -> Kc + alpha")
ax.legend()
save(fig, "label_smoothing.png")

# label noise: memorisation and dilation against the memorisation cost lam_M
lam_Ms = [1e-2, 3e-2, 1e-1, 3e-1, 1.0]
mem, dil = [], []
for lam_M in lam_Ms:
    noisy = ufm.NoisyUFM.with_rate(K=4, d=6, n=10, rate=0.2, key=jax.random.key(1), lam_M=lam_M,
                                   lam_W=5e-3, lam_H=5e-3)  # fmt: skip
    rep = ufm.label_noise.memorization_report(noisy, ufm.solve(noisy, jax.random.key(0)).params)
    mem.append(float(rep["mean_memorization"]))
    dil.append(float(rep["dilation"]))
fig, ax = plt.subplots(figsize=(5, 3.6))
ax.semilogx(lam_Ms, mem, "o-", label="mean memorisation (1 = at the label's mean)")
ax.semilogx(lam_Ms, dil, "s--", label="dilation of the true classes")
ax.set(xlabel="lam_M (cost of memorising)", title="label noise, 20% flipped")
ax.legend()
save(fig, "label_noise.png")

# multi-label: set means are scaled sums of their members' means, t_2 = s_2/s_1 against lam
from ufm.multilabel import all_label_sets, multilabel_margins, tagwise_geometry  # noqa: E402

lams = np.geomspace(2e-3, 5e-2, 6)
ml = ufm.MultiLabelUFM(K=4, d=4, label_sets=all_label_sets(4, (1, 2)), n=(3,) * 4 + (2,) * 6,
                       bias=False)  # fmt: skip
sw_ml = ufm.sweep(ml, grid={"lam_W": lams, "lam_H": lams}, zip_axes=[("lam_W", "lam_H")], seeds=1,
                  steps=500, keep_params=True, progress=False)  # fmt: skip
sim = []
for i, lam in enumerate(lams):
    model = ufm.MultiLabelUFM(K=4, d=4, label_sets=ml.label_sets, n=ml.n, lam_W=lam, lam_H=lam,
                              bias=False)  # fmt: skip
    params = jax.tree.map(lambda x, i=i: jnp.asarray(x[i, 0]), sw_ml.params)
    sim.append(float(tagwise_geometry(model, params)["tagwise_scale_2"]))
theory = []
for lam in lams:
    s, _ = multilabel_margins(4, {1: 3, 2: 2}, lam, lam)
    theory.append(s[2] / s[1] if s[1] > 0 else np.nan)
fig, ax = plt.subplots(figsize=(5, 3.6))
ax.semilogx(lams, theory, "-", label="theory s_2/s_1")
ax.semilogx(lams, sim, "o", fillstyle="none", label="sweep: mean of a 2-set / sum of members")
ax.set(xlabel="lam_W = lam_H", ylabel="scale t_2", title="multi-label (pick-all-label CE)")
ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
ax.legend()
save(fig, "multilabel.png")
