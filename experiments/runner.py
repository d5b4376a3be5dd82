"""Run an experiment over seeds, store every finished seed at once, resume.

Layout of an output folder ``DIR``:

- ``DIR/study.json``: the experiment and its resolved config; a folder holding
  another study is refused unless ``overwrite`` is given.
- ``DIR/cells/seed-00003.parquet``: the rows of one finished seed, written
  atomically (a temporary file renamed into place), so an interrupted run
  leaves only whole seeds and a rerun computes only the missing ones.
- ``DIR/results.parquet``: all rows, one per seed x method x propensity x
  metric, with every config parameter as a column named by its dotted key.
- ``DIR/summary.csv``, ``DIR/manifest.json``, ``DIR/figures/*.png``,
  ``DIR/report.md``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from experiments import registry
from sim.config import ConfigError, check, flatten, to_toml

__all__ = ["run_experiment", "summarise", "write_atomic", "config_columns"]

PACKAGES = ("biaslab", "numpy", "jax", "jaxlib", "optax", "pandas", "pyarrow",
            "scipy", "matplotlib", "simpy")


def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
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
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != study:
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


def run_experiment(
    name: str,
    cfg: Any,
    seeds: int,
    out: str | Path,
    overwrite: bool = False,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Run seeds 0..seeds-1 of experiment ``name`` into ``out``; return the rows."""
    check(isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1,
          "--seeds", "an integer >= 1", seeds)
    experiment = registry.get(name)
    cfg = cfg.resolve()
    out = Path(out)
    study = {"experiment": name, "config": config_columns(cfg)}
    _check_study(out, study, overwrite)

    started = time.time()
    cells = out / "cells"
    todo = [s for s in range(seeds) if not (cells / f"seed-{s:05d}.parquet").exists()]
    if len(todo) < seeds:
        print(f"resuming: {seeds - len(todo)} of {seeds} seeds already done in {cells}",
              file=sys.stderr)
    columns = config_columns(cfg)
    from tqdm.auto import tqdm

    with tqdm(total=len(todo) * experiment.n_fits(cfg), desc=name, unit="fit",
              disable=not show_progress, file=sys.stderr) as bar:
        for seed in todo:
            rows = pd.DataFrame(experiment.run_seed(cfg, seed, progress=bar.update))
            rows.insert(0, "experiment", name)
            for key, value in columns.items():
                if key not in rows.columns:  # a swept key keeps its per-row value
                    rows[key] = value
            write_atomic(cells / f"seed-{seed:05d}.parquet",
                         lambda p, rows=rows: rows.to_parquet(p, index=False))

    frames = [pd.read_parquet(cells / f"seed-{s:05d}.parquet") for s in range(seeds)]
    results = pd.concat(frames, ignore_index=True)
    if results["value"].isna().any():
        raise FloatingPointError("results hold NaN values; refusing to write them")
    write_atomic(out / "results.parquet",
                 lambda p: results.to_parquet(p, index=False))
    summary = summarise(results)
    write_atomic(out / "summary.csv", lambda p: summary.to_csv(p, index=False))

    from experiments import report

    report.write(experiment, cfg, results, summary, out)
    manifest = {
        "experiment": name,
        "seeds": list(range(seeds)),
        "config": flatten_json(cfg),
        "config_toml": to_toml(cfg),
        "environment": environment(),
        "wall_time_s": round(time.time() - started, 3),
        "resumed_seeds": seeds - len(todo),
    }
    write_atomic(out / "manifest.json",
                 lambda p: p.write_text(json.dumps(manifest, indent=2)))
    return results


def flatten_json(cfg: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(cfg).items()}
