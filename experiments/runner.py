"""Run cells (experiment x resolved config x seed), store each at once, resume.

A cell is the unit of work: one seed of one experiment at one resolved config.
Its identity is a hash of the canonical resolved config (every dotted key and
value, as JSON with sorted keys), the experiment, the seed and the biaslab
version. Its random stream depends on its seed alone, never on its place in a
grid, so adding grid points or seeds changes no other cell.

Layout of an output folder ``DIR``:

- ``DIR/study.json``: what the folder holds (an experiment and its config, or
  a sweep); a folder holding another study is refused unless ``overwrite``.
- ``DIR/cells/<hash>.parquet``: the rows of one finished cell, written
  atomically (a temporary file renamed into place), so an interrupted run
  leaves only whole cells and a rerun computes only the missing ones.
- ``DIR/results.parquet``: all rows, one per seed x method x propensity x
  metric, with every config parameter as a column named by its dotted key.
- ``DIR/summary.csv``, ``DIR/manifest.json``, ``DIR/figures/*.png``,
  ``DIR/report.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from experiments import registry
from sim.config import ConfigError, check, flatten, override, to_toml

__all__ = ["Cell", "make_cells", "run_cell", "run_cells", "collect", "run_experiment",
           "summarise", "write_atomic", "config_columns", "BACKENDS"]

BACKENDS = ("local", "dask")
MAX_SEEDS = 100_000  # cells are listed up front; a larger study is a typo

PACKAGES = ("biaslab", "numpy", "jax", "jaxlib", "optax", "pandas", "pyarrow",
            "scipy", "matplotlib", "simpy")


def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for sharing
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def config_columns(cfg: Any) -> dict[str, Any]:
    """Every config parameter by dotted key; lists become their JSON text."""
    out = {}
    for key, value in flatten(cfg).items():
        out[key] = json.dumps(list(value)) if isinstance(value, tuple) else value
    return out


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and Student-t 95% interval over seeds per method x propensity x metric
    (and per value of every config column, so a sweep keeps its grid points).

    With a single seed the interval is undefined and left empty.
    """
    keys = ["experiment", "method", "propensity", "metric"]
    extra = [c for c in results.columns if c not in keys + ["seed", "value"]]
    grouped = results.groupby(keys + extra, sort=False, observed=True,
                              dropna=False)["value"]
    summary = grouped.agg(n="count", mean="mean", sd="std").reset_index()
    se = summary["sd"] / np.sqrt(summary["n"])
    crit = stats.t.ppf(0.975, np.maximum(summary["n"] - 1, 1))
    valid = summary["n"] > 1
    summary["ci_low"] = np.where(valid, summary["mean"] - crit * se, np.nan)
    summary["ci_high"] = np.where(valid, summary["mean"] + crit * se, np.nan)
    return summary


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """Package versions, thread settings and machine, for the manifest."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    threads = {k: os.environ.get(k) for k in
               ("XLA_FLAGS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS")}
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "threads": threads,
        "commit": _git_commit(),
    }


def _check_study(out: Path, study: dict, overwrite: bool) -> None:
    path = out / "study.json"
    existing = next((p for p in [out, *out.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out must be a folder, got {str(out)!r} ({str(existing)!r} "
                          "is a file)")
    if path.exists():
        previous = json.loads(path.read_text())
        finished = any((out / "cells").glob("*.parquet"))
        if previous != study and finished:
            if not overwrite:
                raise ConfigError(
                    f"--out {str(out)!r} must be empty or hold the same study; it "
                    f"holds {previous.get('experiment')!r} with another config "
                    "(pass --overwrite to replace it)")
            shutil.rmtree(out / "cells", ignore_errors=True)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"--out {str(out)!r} must be empty or hold a biaslab study, got a folder "
            "with other files (pass --overwrite to use it anyway)")
    write_atomic(path, lambda p: p.write_text(json.dumps(study, indent=2)))


def flatten_json(cfg: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(cfg).items()}


@dataclass(frozen=True)
class Cell:
    """One seed of one experiment at one resolved config (plain data only, so
    it travels to a Dask worker as JSON-like values, never as pickled code)."""

    experiment: str
    config: dict[str, Any]  # dotted key -> value of the resolved config
    seed: int

    @property
    def key(self) -> str:
        from experiments import __version__

        canonical = json.dumps({"experiment": self.experiment, "config": self.config,
                                "seed": self.seed, "version": __version__},
                               sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def make_cells(name: str, configs: list[Any], seeds: int) -> list[Cell]:
    """Cells for every config x seed 0..seeds-1, configs resolved."""
    ok = isinstance(seeds, int) and not isinstance(seeds, bool)
    check(ok and 1 <= seeds <= MAX_SEEDS, "--seeds", f"an integer in [1, {MAX_SEEDS}]",
          seeds)
    return [Cell(name, flatten_json(cfg.resolve()), seed)
            for cfg in configs for seed in range(seeds)]


def run_cell(cell: Cell, progress=None) -> pd.DataFrame:
    """Compute one cell's rows (with the experiment and every config key as
    columns). Runs in this process or on a Dask worker."""
    experiment = registry.get(cell.experiment)
    cfg = override(experiment.Config(), cell.config, parse=False).resolve()
    rows = pd.DataFrame(experiment.run_seed(cfg, cell.seed, progress=progress))
    rows.insert(0, "experiment", cell.experiment)
    for key, value in config_columns(cfg).items():
        if key not in rows.columns:  # a swept-inside key keeps its per-row value
            rows[key] = value
    if rows["value"].isna().any():
        bad = rows[rows["value"].isna()].iloc[0]
        raise FloatingPointError(
            f"cell {cell.key} (seed {cell.seed}) produced NaN for {bad['method']} "
            f"{bad['metric']}; refusing to store it")
    return rows


def _cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / f"{cell.key}.parquet"


def _store(out: Path, cell: Cell, rows: pd.DataFrame) -> None:
    write_atomic(_cell_path(out, cell), lambda p: rows.to_parquet(p, index=False))


def run_cells(
    cells: list[Cell],
    out: Path,
    backend: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    show_progress: bool = True,
) -> int:
    """Run the cells not yet stored in ``out``; store each the moment it
    finishes. Returns how many were already done (resumed)."""
    check(backend in BACKENDS, "--backend", "one of " + ", ".join(BACKENDS), backend)
    # A run killed mid-write leaves a temporary file, never a cell: clear them.
    for stale in (out / "cells").glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    todo = [c for c in cells if not _cell_path(out, c).exists()]
    done = len(cells) - len(todo)
    if done:
        print(f"resuming: {done} of {len(cells)} cells already done in {out / 'cells'}",
              file=sys.stderr)
    from tqdm.auto import tqdm

    if backend == "local":
        fits = sum(registry.get(c.experiment).n_fits(
            override(registry.get(c.experiment).Config(), c.config,
                     parse=False).resolve())
            for c in todo)
        with tqdm(total=fits, desc=cells[0].experiment if cells else "", unit="fit",
                  disable=not show_progress, file=sys.stderr) as bar:
            for cell in todo:
                _store(out, cell, run_cell(cell, progress=bar.update))
        return done

    from experiments import scale

    with scale.dask_client(workers, scheduler) as client:
        futures = {client.submit(run_cell, cell, key=f"cell-{cell.key}", pure=False): cell
                   for cell in todo}
        with tqdm(total=len(todo), desc="cells", unit="cell",
                  disable=not show_progress, file=sys.stderr) as bar:
            for future in scale.as_completed(futures):
                _store(out, futures[future], future.result())
                bar.update()
    return done


def collect(cells: list[Cell], out: Path) -> pd.DataFrame:
    """All stored rows of ``cells``, in cell order, written to results.parquet
    and summary.csv."""
    frames = [pd.read_parquet(_cell_path(out, c)) for c in cells]
    results = pd.concat(frames, ignore_index=True)
    if results["value"].isna().any():
        raise FloatingPointError("results hold NaN values; refusing to write them")
    write_atomic(out / "results.parquet", lambda p: results.to_parquet(p, index=False))
    summary = summarise(results)
    write_atomic(out / "summary.csv", lambda p: summary.to_csv(p, index=False))
    return results


def _manifest(out: Path, study: dict, cells: list[Cell], started: float,
              resumed: int, backend: str, extra: dict) -> None:
    manifest = {
        **study,
        "seeds": sorted({c.seed for c in cells}),
        "cells": [{"key": c.key, "seed": c.seed} for c in cells],
        "environment": environment(),
        "backend": backend,
        "wall_time_s": round(time.time() - started, 3),
        "resumed_cells": resumed,
        **extra,
    }
    write_atomic(out / "manifest.json",
                 lambda p: p.write_text(json.dumps(manifest, indent=2)))


def run_experiment(
    name: str,
    cfg: Any,
    seeds: int,
    out: str | Path,
    overwrite: bool = False,
    show_progress: bool = True,
    backend: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
) -> pd.DataFrame:
    """Run seeds 0..seeds-1 of experiment ``name`` into ``out``; return the rows."""
    experiment = registry.get(name)
    cfg = cfg.resolve()
    cells = make_cells(name, [cfg], seeds)
    out = Path(out)
    study = {"experiment": name, "config": config_columns(cfg)}
    _check_study(out, study, overwrite)
    started = time.time()
    resumed = run_cells(cells, out, backend, workers, scheduler, show_progress)
    results = collect(cells, out)
    summary = pd.read_csv(out / "summary.csv")
    from experiments import report

    report.write(experiment, cfg, results, summary, out)
    _manifest(out, study, cells, started, resumed, backend,
              {"config_toml": to_toml(cfg)})
    return results
