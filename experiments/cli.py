"""The `biaslab` command: list, show, run, sweep, bench."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from sim.config import ConfigError, from_dict, override, to_toml

__all__ = ["main", "build_config"]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("biaslab")
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["a.b=1", ...]`` -> ``{"a.b": "1"}``; refuses an item without '='."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set must be key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def build_config(name: str, config_file: str | None, sets: list[str]):
    """The default config of ``name``, then the TOML file, then ``--set`` items."""
    from experiments import registry

    experiment = registry.get(name)
    cfg = experiment.Config()
    if config_file is not None:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as err:
            raise ConfigError(f"--config must be a readable TOML file, got "
                              f"{config_file!r} ({err.strerror})") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"--config must be valid TOML, got {config_file!r} "
                              f"({err})") from None
        cfg = from_dict(cfg, data)
    if sets:
        cfg = override(cfg, parse_sets(sets))
    return cfg.resolve()


def _cmd_list(args) -> int:
    from experiments import registry

    width = max(len(n) for n in registry.names())
    for name in registry.names():
        print(f"{name:<{width}}  {registry.SUMMARIES[name]}")
    return 0


def _cmd_show(args) -> int:
    cfg = build_config(args.experiment, args.config, args.set or [])
    print(f"# default config of {args.experiment}; pass a copy with --config FILE")
    print(to_toml(cfg), end="")
    return 0


def _cmd_run(args) -> int:
    from experiments import registry
    from experiments.runner import run_experiment

    experiment = registry.get(args.experiment)
    seeds = experiment.DEFAULT_SEEDS if args.seeds is None else args.seeds
    if seeds < 1:
        raise ConfigError(f"--seeds must be an integer >= 1, got {seeds}")
    _check_backend(args)
    cfg = build_config(args.experiment, args.config, args.set or [])
    out = Path(args.out or f"runs/{args.experiment}")
    run_experiment(args.experiment, cfg, seeds, out, overwrite=args.overwrite,
                   show_progress=not args.no_progress, backend=args.backend,
                   workers=args.workers, scheduler=args.scheduler)
    print(f"wrote {out}/results.parquet, summary.csv, manifest.json, figures/, "
          "report.md")
    return 0


def _check_backend(args) -> None:
    """Refuse backend options that would be ignored, before any work."""
    if args.backend != "dask" and (args.workers is not None or args.scheduler):
        raise ConfigError("--workers and --scheduler need --backend dask, got "
                          f"--backend {args.backend}")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1, got {args.workers}")


def _cmd_sweep(args) -> int:
    from experiments.sweep import run_sweep

    _check_backend(args)
    out = Path(args.out or f"runs/sweep-{Path(args.file).stem}")
    run_sweep(args.file, out, overwrite=args.overwrite, backend=args.backend,
              workers=args.workers, scheduler=args.scheduler,
              show_progress=not args.no_progress)
    print(f"wrote {out}/results.parquet, summary.csv, manifest.json, figures/, "
          "report.md")
    return 0


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="local", choices=["local", "dask"],
                        help="run cells in this process (default) or on Dask")
    parser.add_argument("--workers", type=int,
                        help="local Dask cluster size (default 2)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace another study's results in --out")
    parser.add_argument("--no-progress", action="store_true")


def _cmd_tour(args) -> int:
    from experiments import registry, report
    from experiments.runner import run_experiment

    _check_backend(args)
    out = Path(args.out or "runs/tour")
    for name in registry.names():
        experiment = registry.get(name)
        cfg = build_config(name, None, [f"{k}={v}" for k, v in
                                        experiment.TEACHING.items()])
        print(f"tour: {name} at teaching size ({experiment.TEACHING_SEEDS} seeds)",
              file=sys.stderr)
        run_experiment(name, cfg, experiment.TEACHING_SEEDS, out / name,
                       overwrite=args.overwrite, show_progress=not args.no_progress,
                       backend=args.backend, workers=args.workers,
                       scheduler=args.scheduler)
    path = report.build(out)
    print(f"wrote {path} (open it in a browser) and {out}/report.md")
    return 0


def _cmd_report(args) -> int:
    from experiments import report

    path = report.build(args.folder)
    print(f"wrote {path} and report.md")
    return 0


def _cmd_bench(args) -> int:
    from experiments import bench

    return bench.main(args.quick) or 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biaslab",
        description="An offline lab for the biases of recommender feedback.")
    parser.add_argument("--version", action="version", version=f"biaslab {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="name the experiments, one line each")

    show = sub.add_parser("show", help="print an experiment's default config (TOML)")
    show.add_argument("experiment")
    show.add_argument("--config", help="a TOML file applied on top of the defaults")
    show.add_argument("--set", action="append", metavar="KEY=VALUE")

    run = sub.add_parser("run", help="run an experiment over seeds")
    run.add_argument("experiment")
    run.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    run.add_argument("--out", help="output folder (default runs/EXPERIMENT)")
    run.add_argument("--config", help="a TOML file applied on top of the defaults")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override one config key (repeatable)")
    _add_backend(run)

    sweep = sub.add_parser("sweep", help="run a grid of configs x seeds from a TOML file")
    sweep.add_argument("file")
    sweep.add_argument("--out", help="output folder (default runs/sweep-FILESTEM)")
    _add_backend(sweep)

    tour = sub.add_parser("tour", help="run every experiment at its teaching size "
                          "and write one report (the main job)")
    tour.add_argument("--out", help="output folder (default runs/tour)")
    _add_backend(tour)

    report = sub.add_parser("report", help="rebuild a study's (or a tour's) report "
                            "as Markdown and self-contained HTML")
    report.add_argument("folder")

    bench = sub.add_parser("bench", help="print speed figures with their references")
    bench.add_argument("--quick", action="store_true",
                       help="smaller sizes, for a smoke check")
    return parser


# Pinned before JAX is imported (the experiment modules import it lazily), so
# that a seed gives the same bytes on the same install whatever the machine's
# core count; recorded in every manifest. A value already in the environment
# is kept (and recorded).
PINNED_THREADS = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def pin_threads() -> None:
    import os

    if "jax" in sys.modules:
        return  # too late to change XLA's settings; the manifest records them
    for key, value in PINNED_THREADS.items():
        os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command != "bench":  # bench sets its own threads per reference
        pin_threads()
    handler = {"list": _cmd_list, "show": _cmd_show, "run": _cmd_run,
               "sweep": _cmd_sweep, "tour": _cmd_tour, "report": _cmd_report,
               "bench": _cmd_bench}[args.command]
    import warnings

    warnings.formatwarning = _one_line_warning
    try:
        return handler(args)
    except ConfigError as err:
        print(f"biaslab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbiaslab: interrupted; finished cells are kept, rerun the same "
              "command to resume", file=sys.stderr)
        return 130


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"biaslab: {category.__name__}: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
