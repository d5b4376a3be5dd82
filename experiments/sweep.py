"""`biaslab sweep FILE.toml`: a grid over config keys x seeds.

A sweep file is data::

    experiment = "mnar-ratings"
    seeds = 5

    [set]                      # fixed overrides, applied to every grid point
    "train.max_epochs" = 20

    [grid]                     # every combination of these values
    "selection.alpha" = [0.1, 0.25, 0.5]
    "world.n_users" = [500, 1000]

Each grid point x seed is a cell (see `experiments.runner`); cells are stored
the moment they finish and a rerun of the same command runs only the rest.
"""

from __future__ import annotations

import itertools
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from experiments import registry
from experiments.runner import (
    _check_study,
    _manifest,
    collect,
    make_cells,
    run_cells,
    write_atomic,
)
from sim.config import ConfigError, check, check_unique, dotted_leaves, override

__all__ = ["Sweep", "load_sweep", "run_sweep"]

TOP_KEYS = ("experiment", "seeds", "set", "grid")


@dataclass(frozen=True)
class Sweep:
    experiment: str
    seeds: int
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]

    def configs(self) -> list[Any]:
        """The resolved config of every grid point, in grid order."""
        base = override(registry.get(self.experiment).Config(), self.fixed,
                        parse=False)
        keys = list(self.grid)
        points = itertools.product(*(self.grid[k] for k in keys)) if keys else [()]
        return [override(base, dict(zip(keys, point)), parse=False).resolve()
                for point in points]

    def identity(self) -> dict:
        return {"experiment": self.experiment,
                "sweep": {"set": self.fixed, "grid": self.grid}}


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; refuses unknown sections and keys."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"sweep file must be a readable TOML file, got {str(path)!r} "
                          f"({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"sweep file must be valid TOML, got {str(path)!r} "
                          f"({err})") from None
    for key in data:
        check(key in TOP_KEYS, "sweep file key", "one of " + ", ".join(TOP_KEYS), key)
    check("experiment" in data, "sweep file", "an `experiment = NAME` line",
          sorted(data))
    registry.get(data["experiment"])
    seeds = data.get("seeds", 1)
    check(isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1,
          "seeds", "an integer >= 1", seeds)
    fixed = dotted_leaves(data.get("set", {}))
    grid = dotted_leaves(data.get("grid", {}))
    for key, values in grid.items():
        ok = isinstance(values, list) and len(values) >= 1
        check(ok, f"grid.{key}", "a non-empty list of values", values)
        check_unique(tuple(map(repr, values)), f"grid.{key}")
        check(key not in fixed, f"grid.{key}", "a key not also in [set]", key)
    sweep = Sweep(data["experiment"], seeds, fixed, grid)
    sweep.configs()  # refuse unknown keys and bad values before any work
    return sweep


def run_sweep(
    path: str | Path,
    out: str | Path | None = None,
    overwrite: bool = False,
    backend: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Run every cell of the sweep in ``path`` into ``out``; return all rows."""
    sweep = load_sweep(path)
    out = Path(out or f"runs/sweep-{Path(path).stem}")
    configs = sweep.configs()
    cells = make_cells(sweep.experiment, configs, sweep.seeds)
    _check_study(out, sweep.identity(), overwrite)
    started = time.time()
    resumed = run_cells(cells, out, backend, workers, scheduler, show_progress)
    results = collect(cells, out)
    from experiments import report

    report.write_sweep(registry.get(sweep.experiment), sweep.grid, results,
                       pd.read_csv(out / "summary.csv"), out)
    _manifest(out, sweep.identity(), cells, started, resumed, backend,
              {"grid_points": len(configs)})
    write_atomic(out / "sweep.toml", lambda p: p.write_text(Path(path).read_text()))
    return results
