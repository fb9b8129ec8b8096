"""The `ufm` command line: `demo`, `run`, `sweep`, `check` and `bench` (`ufm COMMAND --help`)."""

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
    report = ufm.check(model, res.params)  # names the closed form it compares with
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


def _configured(command: str, config: str):
    """(model, sweep kwargs, out path) from a TOML file, or an exit code 2 after a message that
    names the file, table and key."""
    import dataclasses
    import os

    from ufm.cli.config import ConfigError, read_config

    where = os.path.basename(config)
    try:
        cfg = read_config(config)
    except ConfigError as e:
        print(f"ufm {command}: {e}", file=sys.stderr)
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
            f"ufm {command}: {where}: unknown key [model] {unknown[0]!r}; {cls.__name__} takes "
            f"{', '.join(fields)}",
            file=sys.stderr,
        )
        return 2
    try:
        model = cls(**cfg["model_args"])
    except (TypeError, ValueError) as e:
        print(f"ufm {command}: {where}: [model] {e}", file=sys.stderr)
        return 2
    return model, cfg["sweep"], cfg["out"]


def _sweep(args: argparse.Namespace) -> int:
    import os

    configured = _configured("sweep", args.config)
    if isinstance(configured, int):
        return configured
    model, kwargs, out = configured
    import ufm

    try:
        sw = ufm.sweep(model, **kwargs, progress=not args.quiet)
    except ValueError as e:
        print(f"ufm sweep: {os.path.basename(args.config)}: {e}", file=sys.stderr)
        return 2
    path = sw.save(args.out or out)
    print(f"ufm sweep: {sw!r} in {sw.meta['seconds']:.2f} s (compile included)\n")
    print(_summary_table(sw))
    print(f"\nsaved: {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """One model (all [grid] values are numbers), one or more seeds, parameters kept."""
    import os

    configured = _configured("run", args.config)
    if isinstance(configured, int):
        return configured
    model, kwargs, out = configured
    where = os.path.basename(args.config)
    axes = [k for k, v in kwargs["grid"].items() if isinstance(v, list)]
    if axes:
        print(
            f"ufm run: {where}: [grid] {axes[0]!r} is a list; a run takes numbers only "
            "(use `ufm sweep` for grids)",
            file=sys.stderr,
        )
        return 2
    import ufm

    try:
        sw = ufm.sweep(model, **kwargs, keep_params=True, progress=False)
    except ValueError as e:
        print(f"ufm run: {where}: {e}", file=sys.stderr)
        return 2
    path = sw.save(args.out or out)
    print(f"ufm run: {sw!r} in {sw.meta['seconds']:.2f} s (compile included)")
    print(f"saved: {path}  (compare with theory: ufm check {path})")
    return 0


def _model_at(sw, index: tuple[int, ...]):
    """The sweep's model with the grid values of run `index` (grid axes..., seed)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(sw.model)}
    values = {k: v for k, v in sw._point_values(index).items() if k in fields}
    return dataclasses.replace(sw.model, **values)


def _check(args: argparse.Namespace) -> int:
    import os

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import ufm

    where = os.path.basename(args.result)
    try:
        sw = ufm.load_sweep(args.result)
    except (OSError, ValueError, KeyError) as e:
        print(f"ufm check: {where}: cannot read a saved run or sweep ({e})", file=sys.stderr)
        return 2
    if sw.params is None or sw.model is None:
        print(
            f"ufm check: {where}: no final parameters saved; save runs with `ufm run` "
            "(or `ufm.sweep(..., keep_params=True)`)",
            file=sys.stderr,
        )
        return 2
    worst = 0.0
    for index in np.ndindex(*sw.objective.shape):
        model = _model_at(sw, index)
        params = jax.tree.map(lambda x, i=index: jax.numpy.asarray(x[i]), sw.params)
        label = ", ".join(
            f"{n}={float(sw.grid[n][i]):.4g}"
            for axis, i in zip(sw.axes, index, strict=False)
            for n in axis
        )
        print(f"-- run {label or 'seed'} {index}: {model!r}")
        try:
            report = ufm.check(model, params)
        except ufm.NoClosedForm as e:
            print(f"no closed form or certificate to compare with: {e}")
            continue
        print(report.table())
        worst = max(worst, report.max_gap())
    return 0 if worst <= args.gap_tol else 1


def _bench(args: argparse.Namespace) -> int:
    import pathlib
    import runpy

    scripts = {
        "B1": "b1_sweep_throughput.py",
        "B2": "b2_certified.py",
        "B3": "b3_scaling.py",
        "B5": "b5_large_problem.py",
        "B4": "gpu_sweep.py",
        "phase": "phase_diagram.py",
    }
    root = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    path = root / scripts[args.which]
    if not path.exists():
        print(
            f"ufm bench: {path} not found: the benchmarks ship with the source checkout "
            "(pip install -e . from a clone)",
            file=sys.stderr,
        )
        return 2
    sys.argv = [str(path), *args.rest]
    runpy.run_path(str(path), run_name="__main__")
    return 0


def _config_schema() -> str:
    """The TOML schema, from the docstring of `ufm.cli.config.read_config`."""
    from ufm.cli.config import read_config

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


def _cache_options() -> argparse.ArgumentParser:
    """The options every command but ``bench`` takes: JAX's persistent compilation cache."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (on by default: a command run "
        "again skips compiling what it compiled before)",
    )
    c.add_argument(
        "--cache-dir",
        default=None,
        help="the compilation cache's directory (default: $UFM_CACHE_DIR, else "
        "$XDG_CACHE_HOME/ufm/jax, else ~/.cache/ufm/jax)",
    )
    return c


def _command(sub, name: str, func, help: str, description: str, parents=(), fmt=None):
    """A sub-command `name` that calls `func(args)`."""
    p = sub.add_parser(name, parents=list(parents), help=help, description=description,
                       formatter_class=fmt or argparse.HelpFormatter)  # fmt: skip
    p.set_defaults(func=func)
    return p


def _config_command(sub, cache, name: str, func, help: str, description: str, fmt=None):
    """A sub-command reading a TOML file and saving what it computes (`ufm sweep`, `ufm run`)."""
    p = _command(sub, name, func, help, description, [cache], fmt)
    p.add_argument("config", help=f"the TOML file describing the {name}")
    p.add_argument("--out", default=None, help="where to save (default: the file's [sweep] out)")
    return p


def _demo_command(sub, cache) -> None:
    d = _command(
        sub, "demo", _demo,
        "solve a UFM to its global optimum and compare with the closed form",
        "Solve a regularised UFM with L-BFGS in float64, print a theory-vs-simulation table "
        "(objective, NC1-NC4, Gram of W vs the predicted frame, norm ratio) and save a figure "
        "(metrics vs step, Gram of W next to the predicted Gram). Exit code 1 if a gap exceeds "
        "--gap-tol.",
        [cache], argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ufm", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    cache = _cache_options()
    _demo_command(sub, cache)
    w = _config_command(
        sub, cache, "sweep", _sweep,
        "run a sweep (seeds x hyperparameter grid) described in a TOML file and save it",
        "Run `ufm.sweep` as described in CONFIG.toml, print the median and 95% interval over "
        "seeds of the objective and NC metrics per grid point, and save the sweep (.npz with "
        "JSON metadata; read it back with ufm.load_sweep). Exit code 2 on a bad configuration, "
        "with the file, table and key named.\n\n" + _config_schema(),
        argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    _config_command(
        sub, cache, "run", _run,
        "solve one model described in a TOML file (all [grid] values numbers) and save it",
        "Solve the model of CONFIG.toml (the schema of `ufm sweep`, with numbers only in [grid]) "
        "for its seeds, keep the final parameters and save them; `ufm check` compares the saved "
        "file with theory.",
    )  # fmt: skip
    c = _command(
        sub, "check", _check,
        "compare a saved run (or sweep with parameters) with the global optimum",
        "Load a file written by `ufm run` (or `Sweep.save` with keep_params=True) and print, for "
        "every run, the theory-vs-simulation table of `ufm.check`: against the closed-form "
        "optimum where one is known, else a certified optimum (`ufm.certify`, whose duality gap "
        "the table's first line reports). Exit code 1 if a gap exceeds --gap-tol.",
        [cache], argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    c.add_argument("result", help="the .npz file")
    c.add_argument("--gap-tol", type=float, default=1e-6, help="largest acceptable gap")
    b = _command(
        sub, "bench", _bench,
        "run a benchmark script of the checkout (B1, B2, B3, B5, phase; B4 on a GPU)",
        "Run a benchmark script from the checkout's benchmarks/ folder; the remaining arguments "
        "go to the script (try: ufm bench B1 --help).",
    )  # fmt: skip
    b.add_argument("which", choices=["B1", "B2", "B3", "B4", "B5", "phase"],
                   help="which benchmark")  # fmt: skip
    b.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the script")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench" or args.no_compile_cache:  # benchmarks time cold starts
        return args.func(args)
    from ufm.runtime import compilation_cache

    with compilation_cache(args.cache_dir):
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
