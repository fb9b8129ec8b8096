"""The PyTorch peer of the benchmarks: how public Neural Collapse code runs UFM experiments.

Eager: one run at a time, ``torch.optim.SGD(weight_decay=...)`` on W, H, b and
``F.cross_entropy`` (the loop of the public NC code). At its best: the same objective for a batch
of runs with ``torch.func.vmap(torch.func.grad(...))`` and an SGD update of the stacked tensors.
Both minimise (1/N) sum_i CE(W h_i + b, y_i) + lam_W/2 ||W||^2 + lam_H/2 ||H||^2 + lam_b/2 ||b||^2,
the objective of `ufm.UFM(loss="ce")`, in float32 on the CPU threads torch is given.
"""

from __future__ import annotations

import time

try:
    import torch
    import torch.nn.functional as F  # noqa: N812

    AVAILABLE = True
except ImportError:  # the peer is optional: pip install -e '.[bench]'
    torch = F = None
    AVAILABLE = False


def describe() -> str:
    if not AVAILABLE:
        return "torch not installed (pip install -e '.[bench]'): peer skipped"
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def _labels(K: int, n: int):
    return torch.arange(K).repeat_interleave(n)


def _start(K, d, n, seed, dtype=None):
    """W, H (entries N(0, 1/d)) and b = 0 as leaf tensors that require gradients, and labels."""
    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(K, d, generator=g, dtype=dtype) / d**0.5).requires_grad_()
    H = (torch.randn(d, K * n, generator=g, dtype=dtype) / d**0.5).requires_grad_()
    b = torch.zeros(K, dtype=dtype, requires_grad=True)
    return W, H, b, _labels(K, n)


def _objective(W, H, b, y, lam_W, lam_H, lam_b):
    """The CE UFM objective: mean CE of the logits W h_i + b plus lam/2 squared norms."""
    pen = 0.5 * (lam_W * (W * W).sum() + lam_H * (H * H).sum() + lam_b * (b * b).sum())
    return F.cross_entropy(H.T @ W.T + b, y) + pen


def eager_run(K, d, n, lam_W, lam_H, lam_b, lr, steps, seed) -> float:
    """One run of full-batch GD, eager, as in the public NC code; returns the final objective."""
    W, H, b, y = _start(K, d, n, seed)
    opt = torch.optim.SGD(
        [
            {"params": [W], "weight_decay": lam_W},
            {"params": [H], "weight_decay": lam_H},
            {"params": [b], "weight_decay": lam_b},
        ],
        lr=lr,
    )
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(H.T @ W.T + b, y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(_objective(W, H, b, y, lam_W, lam_H, lam_b))


def gd_until(K, d, n, lams, lr, target, max_steps, check_every=100, seed=0, dtype=None):
    """Eager GD (as `eager_run`) until the objective is <= target, checked every `check_every`
    steps: (seconds, steps, final objective); steps is None when max_steps ran out first."""
    W, H, b, y = _start(K, d, n, seed, dtype)
    groups = [{"params": [p], "weight_decay": lam} for p, lam in zip((W, H, b), lams, strict=True)]
    opt = torch.optim.SGD(groups, lr=lr)
    t, taken, value = time.perf_counter(), None, float("inf")
    for k in range(1, max_steps + 1):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(H.T @ W.T + b, y).backward()
        opt.step()
        if k % check_every == 0:
            with torch.no_grad():
                value = float(_objective(W, H, b, y, *lams))
            if value <= target:
                taken = k
                break
    return time.perf_counter() - t, taken, value


def lbfgs_run(K, d, n, lams, iterations, seed=0, dtype=None, converge=False):
    """`torch.optim.LBFGS(line_search_fn="strong_wolfe")` (its defaults otherwise: history 100)
    for at most `iterations` iterations in one ``step``; with ``converge=False`` its stopping
    tolerances are 0 (it takes every iteration), else its defaults. Returns (seconds, final
    objective)."""
    W, H, b, y = _start(K, d, n, seed, dtype)
    tolerances = {} if converge else {"tolerance_grad": 0.0, "tolerance_change": 0.0}
    opt = torch.optim.LBFGS(
        [W, H, b], max_iter=iterations, line_search_fn="strong_wolfe", **tolerances
    )

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = _objective(W, H, b, y, *lams)
        loss.backward()
        return loss

    t = time.perf_counter()
    opt.step(closure)
    seconds = time.perf_counter() - t
    with torch.no_grad():
        return seconds, float(_objective(W, H, b, y, *lams))


def eager_sweep(K, d, n, lam_Ws, seeds, lam_H, lam_b, lr, steps) -> tuple[float, list[float]]:
    """Every (lam_W, seed) run one after the other: (seconds, final objectives)."""
    t = time.perf_counter()
    out = [eager_run(K, d, n, lw, lam_H, lam_b, lr, steps, s) for lw in lam_Ws for s in seeds]
    return time.perf_counter() - t, out


def vmap_sweep(K, d, n, lam_Ws, seeds, lam_H, lam_b, lr, steps) -> tuple[float, list[float]]:
    """All runs batched: torch.func.vmap(grad(objective)) and a hand-written SGD update."""
    from torch.func import grad, vmap

    N = K * n
    y = _labels(K, n)
    R = len(lam_Ws) * len(seeds)
    lw = torch.tensor([float(x) for x in lam_Ws for _ in seeds])
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(R, K, d, generator=gen) / d**0.5
    H = torch.randn(R, d, N, generator=gen) / d**0.5
    b = torch.zeros(R, K)

    def objective(W, H, b, lam_W):
        pen = 0.5 * (lam_W * (W * W).sum() + lam_H * (H * H).sum() + lam_b * (b * b).sum())
        return F.cross_entropy(H.T @ W.T + b, y) + pen

    g = vmap(grad(objective, argnums=(0, 1, 2)))
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            gW, gH, gb = g(W, H, b, lw)
            W -= lr * gW
            H -= lr * gH
            b -= lr * gb
    seconds = time.perf_counter() - t
    final = vmap(objective)(W, H, b, lw)
    return seconds, [float(x) for x in final]


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """float32 matmul throughput of torch on this machine (best of `repeats`)."""
    a = torch.ones(size, size)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def large_problem_step_seconds(K, d, n, lam, lr, steps) -> float:
    """Seconds per GD step of one large eager run (B5): the mean over `steps` after one warm-up."""
    W, H, b, y = _start(K, d, n, 0)
    opt = torch.optim.SGD([W, H, b], lr=lr, weight_decay=lam)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(H.T @ W.T + b, y)
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps
