"""ufm.sweep: equal to independent ufm.solve runs, no recompilation when only values, budgets or
optimizer objects change, the default optimizer vmapped on small problems, chunking,
checkpoint/resume after SIGKILL (between and within chunks), refusal of a foreign checkpoint,
divergence isolation, progress, files, records and summaries, validation, the TOML CLI, and the
fused UFM gradient.

Every sweep here is tiny and most share one compiled function (same structure and run count),
so the module stays fast on two slow cores. Values are compared in float64."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compiles import count_compiles

import ufm
from ufm.cli.config import ConfigError, read_config
from ufm.solve import MAX_STEPS, NONFINITE

MODEL = ufm.UFM(K=3, d=4, n=2, lam_W=1e-2, lam_H=1e-2, lam_b=1e-2)
GRID = {"lam_W": [1e-3, 1e-2], "learning_rate": [0.1, 0.3]}
KW = dict(seeds=2, steps=20, optimizer=optax.sgd, record_every=5, progress=False)
SAME = 1e-10  # batched vs unbatched float64: agreement up to the rounding of matrix products
GAP = 1e-12  # relative gap to the closed-form optimum of a run converged to tol=1e-10

# the sweep of the SIGKILL test, run by a child process and by this one
RESUME_SCRIPT = """
import sys, time
import jax
jax.config.update("jax_enable_x64", True)
import optax, ufm
MODEL = ufm.UFM(K=3, d=4, n=2, lam_W=1e-2, lam_H=1e-2, lam_b=1e-2)
GRID = {"lam_W": [1e-3, 1e-2], "learning_rate": [0.1, 0.3]}

def run(checkpoint=None, on_chunk=None):
    return ufm.sweep(MODEL, GRID, seeds=2, steps=20, optimizer=optax.sgd, record_every=5,
                     progress=False, chunk_size=2, checkpoint=checkpoint, on_chunk=on_chunk)

def stall(done, total):
    if done == 2:
        print("saved 2 chunks", flush=True)
        time.sleep(600)

def run_long(checkpoint=None):  # one chunk of 8 runs, its state written every 0.05 s
    return ufm.sweep(MODEL, GRID, seeds=2, steps=600, optimizer=optax.sgd, record_every=50,
                     progress=False, checkpoint=checkpoint, checkpoint_every=0.05)

def stall_after_state():
    from ufm.sweep.checkpoint import Checkpoint
    save = Checkpoint.save_state

    def save_then_stall(self, *args):
        save(self, *args)
        print("saved a state", flush=True)
        time.sleep(600)

    Checkpoint.save_state = save_then_stall

if __name__ == "__main__":
    if sys.argv[2:] == ["mid"]:
        stall_after_state()
        run_long(sys.argv[1])
    else:
        run(sys.argv[1], stall)
"""


@pytest.fixture(scope="module")
def base():
    return ufm.sweep(MODEL, GRID, **KW)


@pytest.fixture(scope="module")
def resume_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "resume_sweep.py"
    path.write_text(RESUME_SCRIPT)
    sys.path.insert(0, str(path.parent))
    try:
        import resume_sweep
    finally:
        sys.path.remove(str(path.parent))
    return path, resume_sweep


def _solve(lam_W, lr, seed, model=MODEL, steps=20, record_every=5):
    model = dataclasses.replace(model, lam_W=lam_W)
    key = jax.random.key(seed)
    return ufm.solve(model, key, steps=steps, optimizer=optax.sgd(lr), record_every=record_every)


# --- results --------------------------------------------------------------------------------------
def test_sweep_equals_independent_solves(base):
    """Run (i, j, s) is ufm.solve(UFM(lam_W_i), key(s), optax.sgd(lr_j)): same final values,
    metrics and history."""
    assert base.shape == (2, 2, 2) and base.axes == [("lam_W",), ("learning_rate",)]
    np.testing.assert_array_equal(base.seeds, [0, 1])
    for i, lam_W in enumerate(GRID["lam_W"]):
        for j, lr in enumerate(GRID["learning_rate"]):
            for s in range(2):
                res = _solve(lam_W, lr, s)
                at = (i, j, s)
                np.testing.assert_allclose(base.objective[at], res.objective, rtol=SAME)
                np.testing.assert_allclose(base.grad_norm[at], res.grad_norm, rtol=SAME)
                assert base.steps_taken[at] == 20 and base.status[at] == MAX_STEPS
                for k in ("nc1", "nc2", "nc3", "nc4"):
                    np.testing.assert_allclose(
                        base.metrics[k][at], res.history[k][-1], rtol=1e-8, atol=1e-12
                    )
                for k, h in res.history.items():
                    np.testing.assert_allclose(base.history[k][at], h, rtol=1e-8, atol=1e-12)


def test_zipped_axes_tie_values(base):
    """zip_axes turns two lists into one axis; its runs equal the matching product points."""
    grid = {"lam_W": [1e-3, 1e-2, 1e-3, 1e-2], "learning_rate": [0.1, 0.1, 0.3, 0.3]}
    sw = ufm.sweep(MODEL, grid, zip_axes=[("lam_W", "learning_rate")], **KW)
    assert sw.shape == (4, 2) and sw.axes == [("lam_W", "learning_rate")]
    np.testing.assert_allclose(sw.objective[1], base.objective[1, 0], rtol=SAME)
    np.testing.assert_allclose(sw.objective[2], base.objective[0, 1], rtol=SAME)


def test_fixed_values_and_seed_lists():
    """A number in grid fixes a hyperparameter without an axis; seeds may be a list."""
    grid = {"lam_W": 2e-3, "learning_rate": [0.1, 0.3, 0.2, 0.4]}
    sw = ufm.sweep(MODEL, grid, **dict(KW, seeds=[3, 5]))
    assert sw.shape == (4, 2) and sw.axes == [("learning_rate",)] and sw.grid["lam_W"] == 2e-3
    res = _solve(2e-3, 0.3, 5)
    np.testing.assert_allclose(sw.objective[1, 1], res.objective, rtol=SAME)


def test_changing_values_does_not_recompile(base):
    """Other grid values, other model leaves, other seeds: no backend compilation."""
    grid = {"lam_W": [2e-3, 5e-2], "learning_rate": [0.05, 0.2]}
    model = dataclasses.replace(MODEL, lam_H=3e-2, lam_b=0.0)
    with count_compiles() as compiles:
        sw = ufm.sweep(model, grid, **dict(KW, seeds=[7, 11]))
    assert compiles == []
    assert not np.allclose(sw.objective, base.objective)  # the new values were used
    res = _solve(5e-2, 0.2, 11, model=model)
    np.testing.assert_allclose(sw.objective[1, 1, 1], res.objective, rtol=SAME)


def test_the_call_a_user_writes_compiles_once(capfd):
    """The call as a user writes it, repeated with a new equal optimizer object (progress on),
    new values and a new step budget, with and without a history: no backend compilation the
    second time, and the numbers of independent solves."""

    def call(lam_W, steps, record_every=None):
        return ufm.sweep(MODEL, {"lam_W": [lam_W, 2 * lam_W]}, seeds=2, steps=steps,
                         optimizer=optax.sgd(0.3), record_every=record_every)  # fmt: skip

    call(1e-3, 20)
    call(1e-3, 20, record_every=5)
    with count_compiles() as compiles:
        sw = call(5e-3, 27)
        hist = call(5e-3, 17, record_every=4)
    assert compiles == []
    assert "sweep 4 runs" in capfd.readouterr().err
    res = _solve(1e-2, 0.3, 1, steps=27, record_every=None)
    np.testing.assert_allclose(sw.objective[1, 1], res.objective, rtol=SAME)
    res = _solve(1e-2, 0.3, 1, steps=17, record_every=4)
    np.testing.assert_array_equal(hist.history["step"][1, 1], [0, 4, 8, 12, 16, 17])
    np.testing.assert_allclose(hist.history["objective"][1, 1], res.history["objective"],
                               rtol=SAME)  # fmt: skip


def test_default_optimizer_vmaps_small_problems_to_the_optimum():
    """Defaults on a small problem: the runs of a device step together in one vmapped loop of
    `ufm.optimizers.lbfgs` and each reaches the closed-form optimum."""
    lams = [1e-3, 1e-2, 5e-2]
    sw = ufm.sweep(MODEL, {"lam_W": lams}, seeds=2, steps=200, tol=1e-10, progress=False)
    assert sw.meta["group_size"] == 6
    assert (sw.status == 0).all()
    for i, lam in enumerate(lams):
        opt = ufm.optimum(dataclasses.replace(MODEL, lam_W=lam))
        np.testing.assert_allclose(sw.objective[i], [opt.value] * 2, rtol=GAP)


@pytest.mark.parametrize("group_size", [1, 4])
def test_divergence_is_isolated(group_size):
    """A huge learning rate at one grid point: those runs are frozen finite and marked; the
    others run all their steps and equal independent solves, also when 4 runs share one
    vmapped loop (group_size=4, the accelerator layout) with diverging ones."""
    grid = {"lam_W": [1e-3, 1e-2], "learning_rate": [0.1, 1e100]}
    sw = ufm.sweep(MODEL, grid, **KW, group_size=group_size)
    assert sw.meta["group_size"] == group_size
    assert sw.diverged[:, 1].all() and not sw.diverged[:, 0].any()
    assert (sw.status[:, 1] == NONFINITE).all() and (sw.steps_taken[:, 1] < 20).all()
    assert np.isfinite(sw.objective).all()
    assert (sw.steps_taken[:, 0] == 20).all()
    res = _solve(1e-2, 0.1, 1)
    np.testing.assert_allclose(sw.objective[1, 0, 1], res.objective, rtol=SAME)
    assert [r["diverged"] for r in sw.summary(keys=["objective"])] == [0, 2, 0, 2]


def test_divergence_mid_run_does_not_depend_on_where_stretches_end():
    """lr = 1e6 diverges after 26 or 27 steps, at a different step in different runs of one
    vmapped group. The group steps unguarded until an attempt fails, then steps again from the
    previous event (a record point, a stop) up to the failed run's last finite iterate, so
    different record intervals step again from different places: every result must still be
    bitwise the same, each
    diverged run frozen at its last finite iterate (the objective of an independent solve
    stopped one step before its failure), and the other runs must equal independent solves."""
    grid = {"lam_W": [1e-3, 1e-2], "learning_rate": [0.3, 1e6]}
    kw = dict(seeds=2, steps=40, optimizer=optax.sgd, progress=False, group_size=4)
    sweeps = [ufm.sweep(MODEL, grid, **kw, record_every=r) for r in (None, 7, 3)]
    taken = sweeps[0].steps_taken[:, 1]
    assert (sweeps[0].status[:, 1] == NONFINITE).all() and len(np.unique(taken)) > 1
    for sw in sweeps[1:]:
        for name in ("objective", "steps_taken", "status", "grad_norm"):
            np.testing.assert_array_equal(getattr(sw, name), getattr(sweeps[0], name))
    for i, lam in enumerate(grid["lam_W"]):
        for s in range(2):
            frozen = _solve(lam, 1e6, s, steps=int(taken[i, s]), record_every=1)
            np.testing.assert_allclose(sweeps[0].objective[i, 1, s], frozen.objective, rtol=SAME)
            going = _solve(lam, 0.3, s, steps=40)
            np.testing.assert_allclose(sweeps[0].objective[i, 0, s], going.objective, rtol=SAME)


def test_chunks_to_a_memory_budget_give_the_same_results(base):
    """memory_budget=1 byte: one run per chunk; same numbers, and (keep_params) the final
    parameters of every run."""
    sw = ufm.sweep(MODEL, GRID, **KW, memory_budget=1, keep_params=True)
    assert sw.meta["chunks"] == 8 and sw.meta["chunk_size"] == 1
    np.testing.assert_allclose(sw.objective, base.objective, rtol=SAME)
    np.testing.assert_allclose(sw.history["nc1"], base.history["nc1"], rtol=1e-8, atol=1e-12)
    assert sw.params.W.shape == (2, 2, 2, 3, 4) and sw.params.H.shape == (2, 2, 2, 4, 6)
    res = _solve(1e-2, 0.3, 1)
    np.testing.assert_allclose(sw.params.H[1, 1, 1], res.params.H, rtol=SAME)
    assert sw.params.b is not None and sw.params.b.shape == (2, 2, 2, 3)


# --- checkpoints ----------------------------------------------------------------------------------
def _kill_when(script, ckpt, line: str, *args) -> None:
    """Run the resume script in a child process and SIGKILL it once it prints `line`."""
    cmd = [sys.executable, str(script), str(ckpt), *args]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as child:  # fmt: skip
        try:
            got = child.stdout.readline()
            assert got.strip() == line, child.stderr.read()
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=60) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()


def _assert_identical(a, b) -> None:
    for name in ("objective", "grad_norm", "steps_taken", "status"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for k in b.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])
    for k in b.history:
        np.testing.assert_array_equal(a.history[k], b.history[k])


def test_resume_after_sigkill_is_identical(tmp_path, resume_module):
    """A child process is killed (SIGKILL) after 2 of 4 chunks; the same call resumes from the
    checkpoint and ends with exactly the results of an uninterrupted sweep."""
    script, mod = resume_module
    ckpt = tmp_path / "ckpt"
    _kill_when(script, ckpt, "saved 2 chunks")
    names = sorted(os.listdir(ckpt))
    assert names[:3] == ["chunk-000000.npz", "chunk-000001.npz", "sweep.json"], names
    (ckpt / "chunk-000002.npz.tmp123").write_bytes(b"partial")  # a write cut short: ignored

    resumed = mod.run(str(ckpt))
    assert resumed.meta["resumed_chunks"] == 2
    fresh = mod.run()
    _assert_identical(resumed, fresh)
    again = mod.run(str(ckpt))  # a finished checkpoint: nothing left to compute
    assert again.meta["resumed_chunks"] == 4
    np.testing.assert_array_equal(again.objective, fresh.objective)


def test_resume_within_a_chunk_after_sigkill_is_identical(tmp_path, resume_module):
    """One chunk of 8 runs x 600 steps whose state (parameters, optimizer state, steps, history
    so far) is written every 0.05 s: killed (SIGKILL) right after a write, the same call
    continues from the written steps and ends bit-identical to an uninterrupted sweep."""
    script, mod = resume_module
    ckpt, cut = tmp_path / "ckpt", tmp_path / "cut"
    _kill_when(script, ckpt, "saved a state", "mid")
    assert sorted(os.listdir(ckpt)) == ["state-000000.npz", "sweep.json"]
    shutil.copytree(ckpt, cut)
    resumed = mod.run_long(str(ckpt))
    assert resumed.meta["resumed_chunks"] == 0 and 0 < resumed.meta["resumed_steps"] < 600
    assert sorted(os.listdir(ckpt)) == ["chunk-000000.npz", "sweep.json"]  # state dropped
    fresh = mod.run_long()
    _assert_identical(resumed, fresh)
    state = (cut / "state-000000.npz").read_bytes()  # a state cut short: named, recomputed
    (cut / "state-000000.npz").write_bytes(state[: len(state) // 2])
    with pytest.warns(RuntimeWarning, match=r"state-000000\.npz is unreadable"):
        again = mod.run_long(str(cut))
    assert again.meta["resumed_steps"] == 0
    _assert_identical(again, fresh)


def test_unreadable_checkpoint_chunk_is_named_and_recomputed(tmp_path, resume_module):
    """A chunk file cut short (a disk that filled up, a copy interrupted) is reported by name and
    its chunk recomputed; the results equal an uninterrupted sweep's."""
    _, mod = resume_module
    ckpt = tmp_path / "ckpt"
    fresh = mod.run(str(ckpt))
    data = (ckpt / "chunk-000001.npz").read_bytes()
    (ckpt / "chunk-000001.npz").write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match=r"chunk-000001\.npz is unreadable"):
        again = mod.run(str(ckpt))
    assert again.meta["resumed_chunks"] == 3
    np.testing.assert_array_equal(again.objective, fresh.objective)
    for k in fresh.history:
        np.testing.assert_array_equal(again.history[k], fresh.history[k])


def test_checkpoint_of_another_sweep_is_refused(tmp_path, resume_module):
    _, mod = resume_module
    ckpt = tmp_path / "ckpt"
    mod.run(str(ckpt))
    with pytest.raises(ValueError, match="different sweep.*grid"):
        ufm.sweep(MODEL, {"lam_W": [1e-3, 2e-2], "learning_rate": [0.1, 0.3]}, **KW,
                  chunk_size=2, checkpoint=ckpt)  # fmt: skip
    with pytest.raises(ValueError, match="different sweep.*steps"):
        ufm.sweep(MODEL, GRID, **dict(KW, steps=21), chunk_size=2, checkpoint=ckpt)
    with pytest.raises(ValueError, match="different sweep.*optimizer"):
        ufm.sweep(MODEL, GRID, **dict(KW, optimizer=optax.adam), chunk_size=2, checkpoint=ckpt)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        ufm.sweep(MODEL, GRID, **KW, checkpoint=tmp_path / "file")


# --- progress, files, tables ----------------------------------------------------------------------
def test_progress_bar_visible_or_quiet(base, capfd):
    ufm.sweep(MODEL, GRID, **dict(KW, progress=True))
    err = capfd.readouterr().err
    assert "sweep 8 runs" in err and "runs 8/8" in err and "step/s" in err and "100%" in err
    ufm.sweep(MODEL, GRID, **KW)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_save_and_load_round_trip(base, tmp_path):
    path = base.save(tmp_path / "sw")
    assert path.endswith(".npz")
    back = ufm.load_sweep(path)
    assert back.model == MODEL and back.axes == base.axes and back.max_steps == 20
    for name in ("objective", "grad_norm", "steps_taken", "status", "seeds"):
        np.testing.assert_array_equal(getattr(back, name), getattr(base, name))
    for k in base.metrics:
        np.testing.assert_array_equal(back.metrics[k], base.metrics[k])
    np.testing.assert_array_equal(back.history["step"], base.history["step"])
    np.testing.assert_array_equal(back.grid["learning_rate"], GRID["learning_rate"])
    meta = back.meta
    assert meta["versions"]["jax"] == jax.__version__ and len(meta["config_hash"]) == 64
    assert meta["optimizer"].startswith("optax") and meta["config"]["seeds"] == [0, 1]
    with np.load(path, allow_pickle=False) as z:  # an open format: plain arrays and JSON
        assert json.loads(str(z["meta.json"]))["model"]["class"] == "ufm.models.ufm.UFM"
    assert back.tol is None and back.max_steps == base.max_steps == 20
    with pytest.warns(DeprecationWarning, match="renamed Sweep.max_steps"):
        assert base.steps == 20  # the budget's old name, for one release


def test_load_of_a_truncated_or_foreign_file_names_it(base, tmp_path):
    path = base.save(tmp_path / "sw")
    data = Path(path).read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz is not a readable ufm sweep file"):
        ufm.load_sweep(cut)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz is not a readable ufm sweep file"):
        ufm.load_sweep(other)
    with pytest.raises(FileNotFoundError):
        ufm.load_sweep(tmp_path / "missing.npz")


def test_records_and_summary(base):
    records = base.to_records()
    assert len(records) == 8
    r = records[3]  # lam_W[0], learning_rate[1], seed 1
    assert (r["lam_W"], r["learning_rate"], r["seed"]) == (1e-3, 0.3, 1)
    assert r["objective"] == base.objective[0, 1, 1] and r["status"] == "max_steps"
    assert r["nc1"] == base.metrics["nc1"][0, 1, 1] and r["diverged"] is False
    rows = base.summary(level=0.95)
    assert len(rows) == 4 and rows[1]["learning_rate"] == 0.3 and rows[1]["runs"] == 2
    x = base.objective[0, 1]
    assert rows[1]["objective_median"] == pytest.approx(np.median(x), rel=1e-12)
    assert rows[1]["objective_lo"] == pytest.approx(np.percentile(x, 2.5), rel=1e-12)
    assert rows[1]["objective_hi"] == pytest.approx(np.percentile(x, 97.5), rel=1e-12)
    assert "Sweep(UFM: lam_W[2], learning_rate[2], seed[2]" in repr(base)


# --- other models ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, grid",
    [
        (ufm.LayerPeeled(K=3, d=4, n=2), {"E_H": [0.5, 2.0]}),
        (ufm.NormalizedUFM(K=3, d=4, n=2), {"tau": [0.5, 1.0]}),
        (ufm.ExtendedUFM(K=3, d=4, n=2, depth=2), {"lam_Ws": [(1e-3, 1e-3), (1e-2, 1e-3)]}),
    ],
    ids=["LayerPeeled", "NormalizedUFM", "ExtendedUFM"],
)
def test_every_model_sweeps(model, grid):
    """Any pytree model with init/objective: each run decreases its objective from its start."""
    sw = ufm.sweep(model, {**grid, "learning_rate": 0.05}, seeds=1, steps=5, optimizer=optax.sgd,
                   progress=False)  # fmt: skip
    assert sw.shape == (2, 1) and not sw.diverged.any()
    name, values = next(iter(grid.items()))
    for i, v in enumerate(values):
        m = dataclasses.replace(model, **{name: v})
        start = float(m.objective(m.init(jax.random.key(0))))
        assert sw.objective[i, 0] < start
    assert "nc1" in sw.metrics


# --- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid={"lam_X": [1]}), "lam_X.*neither leaves of UFM.*nor parameters"),
        (dict(grid={"lam_X": [1]}, optimizer=optax.sgd(0.1)), "not leaves of UFM.*factory"),
        (dict(grid={"lam_W": [1e-3, -1.0], "learning_rate": 0.1}), "lam_W must be finite and >= 0"),
        (dict(grid={"lam_W": [], "learning_rate": 0.1}), r"grid\['lam_W'\] is an empty list"),
        (dict(grid={"learning_rate": [0.1, float("nan")]}), "must be finite"),
        (dict(grid={"learning_rate": ["a"]}), "must be real numbers"),
        (dict(grid={"momentum": 0.9}), "needs \\['learning_rate'\\]"),
        (dict(grid=[1, 2]), "grid must be a dict"),
        (dict(seeds=0), "seeds must be an integer >= 1"),
        (dict(seeds=[1, 1]), "seeds must be distinct"),
        (dict(seeds=[-1]), "seeds must hold integers in"),
        (dict(steps=0), "steps must be an integer >= 1"),
        (dict(record_every=0), "record_every must be"),
        (dict(tol=-1.0), "tol must be a finite number > 0"),
        (dict(chunk_size=0), "chunk_size must be an integer >= 1"),
        (dict(memory_budget=-5), "memory_budget must be"),
        (dict(optimizer=3), "optimizer must be an optax GradientTransformation or a factory"),
        (dict(optimizer=lambda learning_rate: 3), "must return an optax GradientTransformation"),
        (dict(zip_axes=[("lam_W",)]), "groups of two or more"),
        (
            dict(grid={"learning_rate": [0.1]}, zip_axes=[("learning_rate", "lam_H")]),
            "'lam_H', which is not a grid key",
        ),
        (
            dict(
                grid={"learning_rate": [0.1], "lam_H": [1, 2]},
                zip_axes=[("learning_rate", "lam_H")],
            ),
            "unequal",
        ),
        (dict(progress="yes"), "progress must be True or False"),
    ],
)
def test_bad_arguments_raise_before_tracing(kwargs, match):
    args = dict(grid={"learning_rate": 0.1}, seeds=1, steps=3, optimizer=optax.sgd)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ufm.sweep(MODEL, **args)


# --- the command line -----------------------------------------------------------------------------
CONFIG = """
x64 = true
[model]
type = "UFM"
K = 3
d = 4
n = 2
lam_W = 1e-2
lam_H = 1e-2
lam_b = 1e-2
[optimizer]
name = "sgd"
[grid]
lam_W = [1e-3, 1e-2]
learning_rate = [0.1, 0.3]
[sweep]
seeds = 2
steps = 20
record_every = 5
out = "ce.npz"
"""


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    """The command's compilation cache goes to a temporary directory, never the user's."""
    monkeypatch.setenv("UFM_CACHE_DIR", str(tmp_path / "jax-cache"))


@pytest.mark.usefixtures("cache_in_tmp")
def test_cli_sweep_runs_a_toml_file(base, tmp_path, capsys):
    """The same sweep as `base`, from a file: same numbers, saved next to the file."""
    from ufm.cli import main

    cfg = tmp_path / "ce.toml"
    cfg.write_text(CONFIG)
    assert main(["sweep", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "lam_W" in out and "objective" in out and "saved:" in out
    sw = ufm.load_sweep(tmp_path / "ce.npz")
    np.testing.assert_allclose(sw.objective, base.objective, rtol=SAME)


@pytest.mark.parametrize(
    "edit, match",
    [
        (("[sweep]", "[sweeep]"), "unknown table or key 'sweeep'; allowed: model, optimizer"),
        (('type = "UFM"', 'type = "UFMM"'), r"\[model\] type must be one of \['UFM'"),
        (("steps = 20", "stepz = 20"), r"unknown key \[sweep\] 'stepz'; allowed: seeds, steps"),
        (('name = "sgd"', 'name = "sgdd"'), r"\[optimizer\] name must be an optax optimizer"),
        (('name = "sgd"', 'name = "sgd"\nlr = 1'), r"unknown key \[optimizer\] 'lr'; optax.sgd"),
        (("K = 3", "K = 1"), r"\[model\] K must be an integer >= 2"),
        (("K = 3", "KK = 3"), r"unknown key \[model\] 'KK'; UFM takes K, d, n"),
        (("learning_rate = [0.1, 0.3]", "learning_rate = []"), "non-empty list"),
        (("seeds = 2", "seeds = 0"), "seeds must be an integer >= 1"),
        (("x64 = true", "x64 = 1"), "x64 must be true or false"),
        (("n = 2", "n = 2 ="), "invalid TOML"),
    ],
)
@pytest.mark.usefixtures("cache_in_tmp")
def test_cli_bad_config_names_file_table_and_key(tmp_path, capsys, edit, match):
    from ufm.cli import main

    cfg = tmp_path / "bad.toml"
    cfg.write_text(CONFIG.replace(*edit))
    assert main(["sweep", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ufm sweep: bad.toml: ")
    assert pytest.importorskip("re").search(match, err), err


def test_read_config_returns_sweep_arguments(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.replace('out = "ce.npz"', 'checkpoint = "ck"\nzip = [["a", "b"]]'))
    c = read_config(cfg)
    assert c["model_type"] == "UFM" and c["model_args"]["K"] == 3 and c["x64"] is True
    assert c["out"] == str(tmp_path / "c.npz") and c["sweep"]["checkpoint"] == str(tmp_path / "ck")
    assert c["sweep"]["zip_axes"] == [("a", "b")] and c["sweep"]["optimizer"] is optax.sgd
    with pytest.raises(ConfigError, match="no such file"):
        read_config(tmp_path / "missing.toml")


# --- the fused gradient the sweeps step with ------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(loss="ce"),
        dict(loss="ce", bias=False),
        dict(loss="ce", n=(2, 3, 1), lam_b=0.0),
        dict(loss="mse"),
        dict(loss="mse", bias=False),
        dict(loss="ls", alpha=0.2),
        dict(loss="focal", gamma=2.0),
    ],
)
def test_fused_value_and_grad_equals_autodiff(kwargs, key):
    model = ufm.UFM(K=3, d=4, **{"n": 2, "lam_W": 1e-2, "lam_H": 2e-2, "lam_b": 3e-2, **kwargs})
    params = model.init(key, scale=1.5)
    value, grad = model.value_and_grad(params)
    ref_value, ref_grad = jax.value_and_grad(model.objective)(params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-13)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15), grad,
                 ref_grad)  # fmt: skip
    bad = params._replace(H=params.H.at[1, 2].set(jnp.inf))
    assert not np.isfinite(model.value_and_grad(bad)[0])  # the contract the solver relies on
