"""The `ufm` command line: `ufm demo` (solve a UFM to its optimum and compare with theory),
`ufm sweep CONFIG.toml` (run a sweep described in a TOML file and save it)."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    import ufm

    try:
        model = ufm.UFM(
            K=args.K,
            d=args.d,
            n=args.n,
            loss=args.loss,
            lam_W=args.lam_W,
            lam_H=args.lam_H,
            lam_b=args.lam_b,
            bias=not args.no_bias,
        )
        opt = ufm.optimum(model)
    except ValueError as e:
        print(f"ufm demo: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = ufm.solve(model, jax.random.key(args.seed), steps=args.steps, record_every=1, tol=1e-12)
    jax.block_until_ready(res)
    seconds = time.perf_counter() - t0
    report = ufm.check(model, res.params, opt)
    print(f"ufm demo: {model}")
    print(
        f"solved in {seconds:.2f} s (compile included): {int(res.steps)} L-BFGS steps, "
        f"{res.status_name}\n"
    )
    print(report.table())
    hist = {k: np.asarray(v) for k, v in res.history.items()}
    keep = hist["step"] >= 0
    hist = {k: v[keep] for k, v in hist.items()}
    hist["gap"] = np.abs(hist["objective"] - opt.value) / abs(opt.value)
    keys = ("gap", "nc1", "nc2", "nc2_W", "nc3")
    if not report.zero_optimum:
        fig = ufm.plot.demo_figure(hist, res.params.W, np.asarray(opt.params.W) @ opt.params.W.T)
        fig.axes[0].clear()
        ufm.plot.metric_curves(hist, keys=keys, ax=fig.axes[0])
        fig.savefig(args.out, dpi=120, bbox_inches="tight")
        print(f"\nfigure: {args.out}")
    return 0 if report.max_gap() <= args.gap_tol else 1


def _sweep(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from ufm.sweep import ConfigError, read_config

    where = os.path.basename(args.config)
    try:
        cfg = read_config(args.config)
    except ConfigError as e:
        print(f"ufm sweep: {e}", file=sys.stderr)
        return 2
    import jax

    if cfg["x64"]:
        jax.config.update("jax_enable_x64", True)
    import ufm

    cls = getattr(ufm, cfg["model_type"])
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in cfg["model_args"] if k not in fields]
    if unknown:
        print(
            f"ufm sweep: {where}: unknown key [model] {unknown[0]!r}; {cls.__name__} takes "
            f"{', '.join(fields)}",
            file=sys.stderr,
        )
        return 2
    try:
        model = cls(**cfg["model_args"])
    except (TypeError, ValueError) as e:
        print(f"ufm sweep: {where}: [model] {e}", file=sys.stderr)
        return 2
    kwargs = dict(cfg["sweep"], progress=not args.quiet)
    try:
        sw = ufm.sweep(model, **kwargs)
    except ValueError as e:
        print(f"ufm sweep: {where}: {e}", file=sys.stderr)
        return 2
    path = sw.save(args.out or cfg["out"])
    print(f"ufm sweep: {sw!r} in {sw.meta['seconds']:.2f} s (compile included)\n")
    print(_summary_table(sw))
    print(f"\nsaved: {path}")
    return 0


def _config_schema() -> str:
    """The TOML schema, from the docstring of `ufm.sweep.read_config`."""
    from ufm.sweep import read_config

    block = read_config.__doc__.split("::")[1].split("\n\n    Relative")[0]
    return "\n".join(line[4:] for line in block.splitlines())


def _summary_table(sw, keys=("objective", "nc1", "nc2", "nc3")) -> str:
    """Median [95% interval] over seeds per grid point, one row each."""
    keys = [k for k in keys if k == "objective" or k in sw.metrics]
    names = [n for axis in sw.axes for n in axis]
    rows = sw.summary(keys=keys)
    head = [*names, "diverged", *keys]
    lines = []
    for r in rows:
        cells = [f"{r[n]:.4g}" if isinstance(r[n], float) else str(r[n]) for n in names]
        cells.append(f"{r['diverged']}/{r['runs']}")
        for k in keys:
            cells.append(f"{r[k + '_median']:.4g} [{r[k + '_lo']:.3g}, {r[k + '_hi']:.3g}]")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*c) for c in lines)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ufm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="solve a UFM to its global optimum and compare with the closed form",
        description="Solve a regularised UFM with L-BFGS in float64, print a theory-vs-simulation "
        "table (objective, NC1-NC4, Gram of W vs the predicted frame, norm ratio) and save a "
        "figure (metrics vs step, Gram of W next to the predicted Gram). Exit code 1 if a gap "
        "exceeds --gap-tol.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("--K", type=int, default=10, help="number of classes")
    d.add_argument("--d", type=int, default=64, help="feature dimension")
    d.add_argument("--n", type=int, default=50, help="samples per class")
    d.add_argument("--loss", choices=["ce", "mse"], default="ce", help="loss")
    d.add_argument("--lam-W", dest="lam_W", type=float, default=5e-4, help="weight decay on W")
    d.add_argument("--lam-H", dest="lam_H", type=float, default=5e-4, help="weight decay on H")
    d.add_argument("--lam-b", dest="lam_b", type=float, default=5e-4, help="weight decay on b")
    d.add_argument("--no-bias", action="store_true", help="model without bias")
    d.add_argument("--steps", type=int, default=500, help="maximum L-BFGS steps")
    d.add_argument("--seed", type=int, default=0, help="PRNG seed of the initialisation")
    d.add_argument("--gap-tol", type=float, default=1e-6, help="largest acceptable gap")
    d.add_argument("--out", default="ufm_demo.png", help="path of the PNG figure")
    d.set_defaults(func=_demo)
    w = sub.add_parser(
        "sweep",
        help="run a sweep (seeds x hyperparameter grid) described in a TOML file and save it",
        description="Run `ufm.sweep` as described in CONFIG.toml, print the median and 95% "
        "interval over seeds of the objective and NC metrics per grid point, and save the sweep "
        "(.npz with JSON metadata; read it back with ufm.load_sweep). Exit code 2 on a bad "
        "configuration, with the file, table and key named.\n\n" + _config_schema(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument("config", help="the TOML file describing the sweep")
    w.add_argument("--out", default=None, help="where to save (default: the file's [sweep] out)")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.set_defaults(func=_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
