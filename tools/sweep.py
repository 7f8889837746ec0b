r"""Scaling-law sweeps: generate run configs, run them, collect their metrics, fit, plot.

    python tools/sweep.py generate configs/sweeps/micro_cpu.yaml          # OUT/configs/*.yaml, OUT/manifest.json
    python tools/sweep.py run configs/sweeps/micro_cpu.yaml --jobs 2      # locally, skipping finished runs
    python tools/sweep.py run SWEEP --slurm --nodes 1 --gpus-per-node 8   # OUT/slurm/sweep.sbatch (job array)
    python tools/sweep.py collect SWEEP                                   # OUT/results.csv + OUT/results.json
    python tools/sweep.py fit SWEEP [--budgets 1e21] [--predict-runs configs/runs/*_300b.yaml]   # OUT/fit.json
    python tools/sweep.py plot SWEEP                                      # OUT/figures/*.png

SWEEP is the sweep YAML (its output_dir is used) or the output directory itself. The library is
xlstm_pretrain/sweeps/; tools/README_sweeps.md describes the YAML, the rules and the fits.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

from xlstm_pretrain.config_loader import ConfigError


def sweep_dir_of(arg: str) -> Path:
    """A sweep YAML -> its output_dir; anything else is taken as the output directory."""
    path = Path(arg)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from xlstm_pretrain.sweeps.spec import load_sweep

        return Path(load_sweep(path).output_dir)
    return path


def table_path_of(arg: str) -> Path:
    """A results .json/.csv, or a sweep (YAML or dir) -> its results.json."""
    path = Path(arg)
    if path.suffix in (".json", ".csv"):
        return path
    return sweep_dir_of(arg) / "results.json"


# ---- commands -----------------------------------------------------------------------------------


def cmd_generate(args) -> int:
    from xlstm_pretrain.sweeps.grid import expand, format_points, write
    from xlstm_pretrain.sweeps.spec import load_sweep

    spec = load_sweep(args.sweep, args.overrides)
    points, dropped = expand(spec)
    print(format_points(points, dropped))
    if not points:
        print("error: every point was dropped", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    manifest = write(spec, points, dropped)
    print(f"wrote {len(points)} run configs to {Path(spec.output_dir) / 'configs'} and {manifest}")
    return 0


def cmd_run(args) -> int:
    from xlstm_pretrain.sweeps.grid import read_manifest
    from xlstm_pretrain.sweeps.launch import SlurmOptions, run_local, write_slurm

    sweep_dir = sweep_dir_of(args.sweep)
    manifest, points = read_manifest(sweep_dir)
    if args.only:
        points = [p for p in points if p.name in set(args.only) or p.grid in set(args.only)]
        if not points:
            print(f"error: no point or grid named {args.only}", file=sys.stderr)
            return 2
    if args.slurm:
        from xlstm_pretrain.sweeps.launch import is_done

        pending = [p for p in points if args.force or not is_done(p)]
        if not pending:
            print("every run is done")
            return 0
        opts = SlurmOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                            time=args.time, partition=args.partition, account=args.account,
                            max_parallel=args.max_parallel, setup=args.setup, extra_sbatch=tuple(args.sbatch))
        script = write_slurm(pending, manifest["sweep"], sweep_dir, opts, args.config, args.overrides)
        print(f"{len(pending)} pending runs -> {script} (array 0-{len(pending) - 1}, configs in "
              f"{script.parent / 'configs.txt'})")
        if args.submit:
            return subprocess.run(["sbatch", str(script)]).returncode
        print(f"submit with: sbatch {script}")
        return 0
    results = run_local(points, sweep_dir / "logs", jobs=args.jobs, nproc=args.nproc, extra_configs=args.config,
                        overrides=args.overrides, force=args.force, dry_run=args.dry_run)
    failed = [r for r in results if r.returncode not in (None, 0)]
    for r in failed:
        print(f"failed: {r.name} (exit {r.returncode}), log {r.log}", file=sys.stderr)
    return 1 if failed else 0


def cmd_collect(args) -> int:
    from xlstm_pretrain.sweeps.collect import collect, write_table
    from xlstm_pretrain.sweeps.grid import read_manifest

    sweep_dir = sweep_dir_of(args.sweep)
    _, points = read_manifest(sweep_dir)
    table = collect(points)
    csv_path, json_path = write_table(table, args.out or sweep_dir / "results")
    runs = {r["run"] for r in table}
    finished = {r["run"] for r in table if r["final"]}
    print(f"{len(table)} evaluations of {len(runs)} runs ({len(finished)} of {len(points)} finished) -> "
          f"{csv_path}, {json_path}")
    return 0


def cmd_fit(args) -> int:
    from xlstm_pretrain.sweeps.collect import read_table
    from xlstm_pretrain.sweeps.fit import fit_table, format_fit, predict_budgets, predict_runs

    table_path = table_path_of(args.table)
    fit = fit_table(read_table(table_path), args.params_column, args.bootstrap, args.confidence, args.seed)
    print(format_fit(fit))
    if args.budgets:
        fit["predictions"] = predict_budgets(fit, args.budgets)
        print("compute-optimal allocation:")
        for p in fit["predictions"]:
            iso = p.get("isoflop", {})
            par = p.get("parametric", {})
            print(f"  C = {p['flops']:.3e}: IsoFLOP N {iso.get('n_opt', float('nan')):.4g} D "
                  f"{iso.get('d_opt', float('nan')):.4g} | parametric N {par.get('n_opt', float('nan')):.4g} "
                  f"D {par.get('d_opt', float('nan')):.4g} loss {par.get('loss', float('nan')):.4f}")
    if args.predict_runs:
        fit["run_predictions"] = predict_runs(fit, args.predict_runs)
        print("planned runs (parametric fit):")
        for r in fit["run_predictions"]:
            extra = (f", predicted loss {r['loss']:.4f} (ppl {r['ppl']:.2f}); compute-optimal at this C: "
                     f"N {r['n_opt']:.4g}, D {r['d_opt']:.4g}") if "loss" in r else ""
            print(f"  {r['config']}: N {r['params']:,}, D {r['tokens']:.4g}, C {r['flops']:.4e}{extra}")
    out = Path(args.out) if args.out else table_path.with_name("fit.json")
    out.write_text(json.dumps(fit, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def cmd_plot(args) -> int:
    from xlstm_pretrain.sweeps.collect import read_table
    from xlstm_pretrain.sweeps.fit import fit_table
    from xlstm_pretrain.sweeps.plot import plot_all

    table_path = table_path_of(args.table)
    table = read_table(table_path)
    fit_path = Path(args.fit) if args.fit else table_path.with_name("fit.json")
    if fit_path.is_file():
        fit = json.loads(fit_path.read_text())
    else:
        print(f"no {fit_path}: fitting without bootstrap intervals (run `fit` first to get them)")
        try:
            fit = fit_table(table, args.params_column, bootstrap=0)
        except ValueError as e:
            print(f"no fit: {e}")
            fit = None
    out_dir = Path(args.out_dir) if args.out_dir else table_path.parent / "figures"
    for path in plot_all(table, fit, out_dir, fit["params_column"] if fit else args.params_column):
        print(f"wrote {path}")
    return 0


# ---- command line -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/sweep.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="one run config per sweep point, and the manifest")
    g.add_argument("sweep", help="sweep YAML (e.g. configs/sweeps/micro_cpu.yaml)")
    g.add_argument("overrides", nargs="*", help="dotted overrides of the sweep YAML, e.g. output_dir=runs/x")
    g.add_argument("--dry-run", action="store_true", help="print the points, write nothing")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("run", help="run the generated configs locally, or write a SLURM job array")
    r.add_argument("sweep", help="sweep YAML or its output directory")
    r.add_argument("overrides", nargs="*", help="extra trainer overrides for every run, e.g. train.device=cuda")
    r.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="extra trainer config merged after each run's (e.g. configs/layout/tp2_zero1.yaml)")
    r.add_argument("--only", action="append", metavar="NAME", help="only this point or grid (repeatable)")
    r.add_argument("--force", action="store_true", help="also rerun finished runs (they resume from checkpoints)")
    r.add_argument("--jobs", type=int, default=1, help="local: runs side by side (default 1)")
    r.add_argument("--nproc", type=int, default=1, help="local: processes per run (torchrun --standalone if > 1)")
    r.add_argument("--dry-run", action="store_true", help="local: print the commands only")
    r.add_argument("--slurm", action="store_true", help="write OUT/slurm/sweep.sbatch instead of running")
    r.add_argument("--submit", action="store_true", help="with --slurm: also call sbatch")
    r.add_argument("--nodes", type=int, default=1, help="slurm: nodes per run")
    r.add_argument("--gpus-per-node", type=int, default=8, help="slurm: GPUs (= processes) per node")
    r.add_argument("--cpus-per-task", type=int, default=64, help="slurm: CPUs per node task")
    r.add_argument("--time", default="24:00:00", help="slurm: time limit per run")
    r.add_argument("--partition", help="slurm partition")
    r.add_argument("--account", help="slurm account")
    r.add_argument("--max-parallel", type=int, help="slurm: at most this many array tasks at once")
    r.add_argument("--setup", default="", help="slurm: shell line(s) before torchrun, e.g. 'source .venv/bin/activate'")
    r.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="slurm: extra #SBATCH option, e.g. --sbatch=--qos=high (repeatable)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("collect", help="every run's validation rows -> one table (CSV and JSON)")
    c.add_argument("sweep", help="sweep YAML or its output directory")
    c.add_argument("--out", help="output prefix (default OUT/results -> results.csv, results.json)")
    c.set_defaults(func=cmd_collect)

    f = sub.add_parser("fit", help="IsoFLOP and parametric fits with bootstrap intervals -> JSON")
    f.add_argument("table", help="results .json/.csv, or a sweep YAML / output directory")
    f.add_argument("--out", help="fit JSON (default: fit.json beside the table)")
    f.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200; 0: none)")
    f.add_argument("--confidence", type=float, default=0.95)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--params-column", default="params_non_embedding", choices=["params_non_embedding", "params"])
    f.add_argument("--budgets", type=float, nargs="+", help="also print the compute-optimal N, D at these FLOPs")
    f.add_argument("--predict-runs", nargs="+", metavar="YAML",
                   help="run configs (e.g. configs/runs/*_300b.yaml): predicted loss and optimal N at their C")
    f.set_defaults(func=cmd_fit)

    pl = sub.add_parser("plot", help="PNG figures: loss vs FLOPs, IsoFLOP curves, compute-optimal frontier")
    pl.add_argument("table", help="results .json/.csv, or a sweep YAML / output directory")
    pl.add_argument("--fit", help="fit JSON (default: fit.json beside the table; fitted on the fly if missing)")
    pl.add_argument("--out-dir", help="default: figures/ beside the table")
    pl.add_argument("--params-column", default="params_non_embedding", choices=["params_non_embedding", "params"])
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    # argparse stops collecting positional overrides at the first option; accept key=value anywhere
    strays = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if strays:
        p.error(f"unrecognized arguments: {' '.join(strays)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    # SIGTERM (e.g. a scheduler's kill) becomes SystemExit, so `run` can stop the trainers it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
