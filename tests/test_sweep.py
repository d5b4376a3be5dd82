"""Sweeps: cells, resuming after SIGKILL, the Dask backend, refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from experiments.runner import make_cells
from experiments.sweep import load_sweep, run_sweep
from sim.config import ConfigError

SWEEP = """
experiment = "mnar-ratings"
seeds = 5
methods = ["mf-naive"]

[set]
"world.n_users" = 40
"world.n_items" = 30
"world.dim" = 2
"selection.density" = 0.1
"train.dim" = 2
"train.l2_grid" = [0.001]
"train.max_epochs" = 2
"train.batch_size" = 64
"propensity.logistic_steps" = 5

[grid]
"selection.alpha" = [0.2, 0.5]
"world.noise" = [0.1, 0.3, 0.5]
"""


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "grid.toml"
    # `methods` belongs in [set]; keep the file as a user would write it.
    path.write_text(SWEEP.replace('methods = ["mf-naive"]\n', "").replace(
        "[set]\n", '[set]\nmethods = ["mf-naive"]\n'))
    return path


@pytest.fixture(scope="module")
def uninterrupted(sweep_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return run_sweep(sweep_file, out, show_progress=False)


def test_sweep_has_one_cell_per_grid_point_and_seed(uninterrupted, sweep_file):
    assert uninterrupted.groupby(["selection.alpha", "world.noise", "seed"]).ngroups == 30
    sweep = load_sweep(sweep_file)
    cells = make_cells(sweep.experiment, sweep.configs(), sweep.seeds)
    assert len({cell.key for cell in cells}) == 30  # config and seed both count


def test_a_cell_does_not_depend_on_its_place_in_the_grid(uninterrupted, tmp_path):
    # The same grid point alone gives the same rows as inside the grid.
    single = tmp_path / "one.toml"
    text = SWEEP.replace('"selection.alpha" = [0.2, 0.5]', '"selection.alpha" = [0.5]')
    text = text.replace('"world.noise" = [0.1, 0.3, 0.5]', '"world.noise" = [0.3]')
    text = text.replace('methods = ["mf-naive"]\n', "").replace(
        "[set]\n", '[set]\nmethods = ["mf-naive"]\n').replace("seeds = 5", "seeds = 2")
    single.write_text(text)
    alone = run_sweep(single, tmp_path / "out", show_progress=False)
    part = uninterrupted[(uninterrupted["selection.alpha"] == 0.5)
                         & (uninterrupted["world.noise"] == 0.3)
                         & (uninterrupted["seed"] < 2)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, alone)


def test_sigkill_then_rerun_completes_with_identical_values(
        uninterrupted, sweep_file, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli", "sweep", str(sweep_file), "--out",
         str(out), "--no-progress"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    cells = out / "cells"
    deadline = time.time() + 120
    while time.time() < deadline:
        if cells.exists() and len(list(cells.glob("*.parquet"))) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(cells.glob("*.parquet")))
    assert 4 <= done < 30, done
    assert not (out / "results.parquet").exists()
    again = run_sweep(sweep_file, out, show_progress=False)
    assert len(list(cells.glob("*.parquet"))) == 30
    assert not list(cells.glob(".*.tmp"))
    pd.testing.assert_frame_equal(again, uninterrupted)


def test_dask_backend_gives_identical_values(uninterrupted, sweep_file, tmp_path):
    pytest.importorskip("distributed")
    rows = run_sweep(sweep_file, tmp_path / "dask", backend="dask", workers=2,
                     show_progress=False)
    pd.testing.assert_frame_equal(rows, uninterrupted)


BAD = [
    ("unknown-experiment", 'experiment = "mnar-rating"\n',
     r"experiment must be one of .*got 'mnar-rating'; did you mean 'mnar-ratings'\?"),
    ("unknown-key", 'experiment = "mnar-ratings"\n[grid]\n"selection.alhpa" = [1.0]\n',
     r"unknown config key 'selection.alhpa'; did you mean 'selection.alpha'\?"),
    ("wrong-type", 'experiment = "mnar-ratings"\n[set]\n"world.n_users" = "many"\n',
     r"world.n_users must be an integer, got 'many'"),
    ("out-of-range", 'experiment = "mnar-ratings"\n[grid]\n"selection.alpha" = [0.5, -1]\n',
     r"selection.alpha must be a number > 0.0, got -1.0"),
    ("unreadable", 'experiment = "mnar-ratings"\n[grid\n',
     r"sweep file must be valid TOML"),
    ("top-key", 'experiment = "mnar-ratings"\nseed = 3\n',
     r"sweep file key must be one of experiment, seeds, set, grid, got 'seed'"),
    ("grid-not-list", 'experiment = "mnar-ratings"\n[grid]\n"selection.alpha" = 0.5\n',
     r"grid.selection.alpha must be a non-empty list of values, got 0.5"),
    ("seeds", 'experiment = "mnar-ratings"\nseeds = 0\n',
     r"seeds must be an integer >= 1, got 0"),
    ("repeated-grid-value",
     'experiment = "mnar-ratings"\n[grid]\n"selection.alpha" = [0.5, 0.5]\n',
     r"grid.selection.alpha must be a list without repeated entries"),
    ("grid-and-set",
     'experiment = "mnar-ratings"\n[set]\n"selection.alpha" = 0.5\n'
     '[grid]\n"selection.alpha" = [0.1, 0.2]\n',
     r"grid.selection.alpha must be a key not also in \[set\]"),
    ("swept-inside", 'experiment = "mnar-evaluation"\n[grid]\n"selection.alpha" = [0.1]\n',
     r"selection.alpha must be left at 0.25 \(each run sweeps `alphas`; set alphas "
     r"instead\), got 0.1"),
]


@pytest.mark.parametrize("text, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_sweep_file_is_refused(text, message, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        run_sweep(path, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_sweep_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="sweep file must be a readable TOML file"):
        load_sweep(tmp_path / "nope.toml")


def test_foreign_results_folder_is_refused(uninterrupted, sweep_file, tmp_path):
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="must be empty or hold a biaslab study"):
        run_sweep(sweep_file, out, show_progress=False)
    assert (out / "notes.txt").read_text() == "mine"
