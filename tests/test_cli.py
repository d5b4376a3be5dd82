"""The `biaslab` front door: list, show, run, refusals, determinism, resuming."""

from __future__ import annotations

import json
import tomllib

import pandas as pd
import pytest

from experiments import mnar_ratings
from experiments.cli import build_config, main
from experiments.runner import run_experiment
from sim.config import ConfigError

# A tiny problem: every pair trains in well under a second.
TINY = [
    "world.n_users=60", "world.n_items=50", "world.dim=3",
    "selection.preset=value", "selection.density=0.12",
    "train.dim=4", "train.l2_grid=[0.001]", "train.max_epochs=3",
    "train.batch_size=128", "propensity.logistic_steps=20",
]


def tiny_config(*extra: str):
    return build_config("mnar-ratings", None, TINY + list(extra))


def test_list_names_every_experiment(capsys):
    from experiments import registry

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == registry.names()
    assert {"mnar-ratings", "position-bias", "implicit-objectives", "ope", "ope-slate",
            "mnar-evaluation"} <= set(registry.names())


def test_show_prints_the_resolved_default_config_as_toml(capsys):
    assert main(["show", "mnar-ratings"]) == 0
    text = capsys.readouterr().out
    data = tomllib.loads(text)
    assert data["selection"]["preset"] == "value"
    assert data["selection"]["density"] == 0.05
    assert data["world"]["marginal"] == [0.526, 0.242, 0.144, 0.062, 0.026]
    assert data["methods"] == ["mf-naive", "mf-ips", "mf-snips", "mf-dr"]


def test_show_output_reads_back_as_the_same_config(tmp_path, capsys):
    main(["show", "mnar-ratings"])
    path = tmp_path / "cfg.toml"
    path.write_text(capsys.readouterr().out)
    assert build_config("mnar-ratings", str(path), []) == mnar_ratings.default_config()


BAD_RUNS = [
    ("seeds-zero", ["--seeds", "0"], r"--seeds must be an integer >= 1, got 0"),
    ("unknown-key", ["--set", "selection.alhpa=0.5"],
     r"unknown config key 'selection.alhpa'; did you mean 'selection.alpha'\?"),
    ("unknown-method", ["--set", 'methods=["mf-naive","mf-xyz"]'],
     r"methods must be names from mf-naive, mf-ips, mf-snips, mf-dr, got 'mf-xyz'"),
    ("unknown-propensity", ["--set", 'propensities=["oracle"]'],
     r"propensities must be names from none, true, naive-bayes, logistic, "
     r"popularity, got 'oracle'"),
    ("invalid-pair", ["--set", 'propensities=["none"]'],
     r"method x propensity pair must weight mf-ips by one of true, naive-bayes, "
     r"logistic, popularity, got mf-ips x none"),
    ("alpha", ["--set", "selection.alpha=0"],
     r"selection.alpha must be a number > 0.0, got 0.0"),
    ("density-reach", ["--set", "selection.density=0.5"],
     r"selection.density must be in \(0, 0.147\d+\] for preset 'value'"),
    ("marginal", ["--set", "world.marginal=[0.5,0.5,0.5,0,0]"],
     r"world.marginal must be probabilities summing to 1 \(sum 1.5\)"),
    ("set-syntax", ["--set", "selection.alpha"],
     r"--set must be key=value, got 'selection.alpha'"),
    ("wrong-type", ["--set", "world.n_users=many"],
     r"world.n_users must be an integer, got 'many'"),
]


@pytest.mark.parametrize("args, message", [b[1:] for b in BAD_RUNS],
                         ids=[b[0] for b in BAD_RUNS])
def test_bad_run_is_refused_before_any_work(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "mnar-ratings", "--out", str(out), "--no-progress", *args])
    assert code == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not (out / "results.parquet").exists()


def test_unknown_experiment_is_refused(capsys):
    assert main(["run", "mnar-rating", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "experiment must be one of mnar-ratings, position-bias" in err
    assert "got 'mnar-rating'; did you mean 'mnar-ratings'?" in err


def test_unreadable_config_file_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[world\nn_users = 3")
    assert main(["show", "mnar-ratings", "--config", str(bad)]) == 2
    assert "--config must be valid TOML" in capsys.readouterr().err
    assert main(["show", "mnar-ratings", "--config", str(tmp_path / "no.toml")]) == 2
    assert "--config must be a readable TOML file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results = run_experiment("mnar-ratings", tiny_config(), 2, out,
                             show_progress=False)
    return out, results


def test_run_writes_every_output_with_config_columns(tiny_run):
    out, results = tiny_run
    for name in ("results.parquet", "summary.csv", "manifest.json", "report.md",
                 "figures/methods_mse.png", "figures/marginals.png"):
        assert (out / name).exists(), name
    table = pd.read_parquet(out / "results.parquet")
    for column in ("experiment", "seed", "method", "propensity", "metric", "value",
                   "selection.alpha", "world.n_users", "train.l2_grid"):
        assert column in table.columns
    assert not table["value"].isna().any()
    pairs = set(zip(table["method"], table["propensity"]))
    assert ("mf-naive", "none") in pairs and ("mf-dr", "popularity") in pairs
    assert len({p for p in pairs if p[0].startswith("mf-")}) == 13
    for metric in mnar_ratings.METRICS:
        assert (table["metric"] == metric).sum() == 2 * 13
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == [0, 1]
    assert manifest["environment"]["packages"]["jax"]
    summary = pd.read_csv(out / "summary.csv")
    row = summary[(summary.method == "mf-naive") & (summary.metric == "mse_truth")]
    values = table[(table.method == "mf-naive") & (table.metric == "mse_truth")]["value"]
    assert row["mean"].iloc[0] == pytest.approx(values.mean())
    assert row["ci_low"].iloc[0] < row["mean"].iloc[0] < row["ci_high"].iloc[0]


def test_seed_gives_same_rows_whatever_the_seed_count(tiny_run, tmp_path):
    _, results = tiny_run
    alone = run_experiment("mnar-ratings", tiny_config(), 1, tmp_path / "one",
                           show_progress=False)
    first = results[results.seed == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, alone)


def test_rerun_resumes_and_a_foreign_folder_is_refused(tiny_run, capsys):
    out, results = tiny_run
    manifest = json.loads((out / "manifest.json").read_text())
    second = [c["key"] for c in manifest["cells"] if c["seed"] == 1]
    (out / "cells" / f"{second[0]}.parquet").unlink()
    again = run_experiment("mnar-ratings", tiny_config(), 2, out, show_progress=False)
    assert "resuming: 1 of 2 cells already done" in capsys.readouterr().err
    pd.testing.assert_frame_equal(again, results)
    with pytest.raises(ConfigError, match="holds 'mnar-ratings' with another config"):
        run_experiment("mnar-ratings", tiny_config("selection.alpha=0.5"), 1, out,
                       show_progress=False)


MORE_BAD = [
    ("seeds-huge", ["--seeds", "100000000000"],
     r"--seeds must be an integer in \[1, 100000\], got 100000000000"),
    ("repeated-method", ["--set", 'methods=["mf-naive", "mf-naive"]'],
     r"methods must be a list without repeated entries, got \['mf-naive', 'mf-naive'\]"),
    ("workers-without-dask", ["--workers", "2"],
     r"--workers and --scheduler need --backend dask, got --backend local"),
    ("workers-negative", ["--backend", "dask", "--workers", "-2"],
     r"--workers must be an integer >= 1, got -2"),
    ("two-stars", ["--set", "world.marginal=[0.5, 0.5]"],
     r"world.marginal must be a list of 5 probabilities \(stars 1..5\)"),
]


@pytest.mark.parametrize("args, message", [b[1:] for b in MORE_BAD],
                         ids=[b[0] for b in MORE_BAD])
def test_more_bad_runs_are_refused_before_any_work(args, message, tmp_path, capsys):
    import re

    out = tmp_path / "out"
    assert main(["run", "mnar-ratings", "--out", str(out), "--no-progress",
                 *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "afile"
    path.write_text("x")
    for out in (path, path / "sub"):
        assert main(["run", "mnar-ratings", "--seeds", "1", "--out", str(out),
                     *sum((["--set", s] for s in TINY), [])]) == 2
        assert "--out must be a folder" in capsys.readouterr().err


def test_a_quoted_number_in_a_config_file_is_a_string(tmp_path, capsys):
    path = tmp_path / "cfg.toml"
    path.write_text('[world]\nn_users = "150"\n')
    assert main(["show", "mnar-ratings", "--config", str(path)]) == 2
    assert "world.n_users must be an integer, got '150'" in capsys.readouterr().err


def test_a_failed_first_cell_does_not_block_a_corrected_rerun(tmp_path):
    out = tmp_path / "out"
    bad = tiny_config("selection.alpha=0.5")
    good = tiny_config()
    import experiments.mnar_ratings as module

    original = module.run_seed

    def failing(cfg, seed, progress=None):
        raise RuntimeError("boom")

    module.run_seed = failing
    try:
        with pytest.raises(RuntimeError):
            run_experiment("mnar-ratings", bad, 1, out, show_progress=False)
    finally:
        module.run_seed = original
    assert (out / "study.json").exists() and not any((out / "cells").glob("*"))
    rows = run_experiment("mnar-ratings", good, 1, out, show_progress=False)
    assert len(rows) > 0
